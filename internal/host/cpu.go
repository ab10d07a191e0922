package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/cpu"
)

type cpuCollector struct {
	ctx     context.Context
	times   func(ctx context.Context, perCPU bool) ([]cpu.TimesStat, error) // the source; tests replace it
	seconds *prometheus.Desc
	success *prometheus.Desc
}

func newCPUCollector(ctx context.Context) *cpuCollector {
	return &cpuCollector{
		ctx:     ctx,
		times:   cpu.TimesWithContext,
		success: successDesc("cpu"),
		seconds: desc("statexec_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "cpu", "mode"),
	}
}

func (c *cpuCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.seconds; ch <- c.success }

func (c *cpuCollector) Collect(ch chan<- prometheus.Metric) {
	times, err := c.times(c.ctx, true)
	reportSuccess(ch, c.success, c.seconds, err)
	if err != nil {
		return
	}
	for _, t := range times {
		// gopsutil names the cores "cpu0"...; node_exporter uses "0".
		core := t.CPU
		if len(core) > 3 && core[:3] == "cpu" {
			core = core[3:]
		}
		for _, m := range []struct {
			mode string
			v    float64
		}{
			{"user", t.User}, {"nice", t.Nice}, {"system", t.System}, {"idle", t.Idle},
			{"iowait", t.Iowait}, {"irq", t.Irq}, {"softirq", t.Softirq}, {"steal", t.Steal},
		} {
			ch <- prometheus.MustNewConstMetric(c.seconds, prometheus.CounterValue, m.v, core, m.mode)
		}
	}
}
