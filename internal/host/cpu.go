package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/cpu"

	"github.com/statexec/statexec/internal/constmetric"
)

type cpuCollector struct {
	ctx     context.Context
	times   func(ctx context.Context, perCPU bool) ([]cpu.TimesStat, error) // the source; tests replace it
	seconds *prometheus.Desc
	success success
	series  *constmetric.Vec
}

// cpuModes are the modes of statexec_cpu_seconds_total, in export order.
var cpuModes = [...]string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}

func newCPUCollector(ctx context.Context, l prometheus.Labels) *cpuCollector {
	d := descs(l)
	c := &cpuCollector{
		ctx:     ctx,
		times:   newStatSource(procRoot()).times,
		success: newSuccess(d.successDesc("cpu")),
		seconds: d.desc("statexec_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "cpu", "mode"),
	}
	c.series = constmetric.NewVec(c.seconds, prometheus.CounterValue)
	return c
}

func (c *cpuCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.seconds
	ch <- c.success.m.Desc()
}

// Collect implements prometheus.Collector.
func (c *cpuCollector) Collect(ch chan<- prometheus.Metric) {
	c.Emit(func(m prometheus.Metric) { ch <- m })
}

// Emit is Collect without a channel (sampler.Emitter).
func (c *cpuCollector) Emit(emit func(prometheus.Metric)) {
	times, err := c.times(c.ctx, true)
	c.success.report(emit, c.seconds, err)
	if err != nil {
		return
	}
	for _, t := range times {
		// gopsutil names the cores "cpu0"...; node_exporter uses "0".
		core := t.CPU
		if len(core) > 3 && core[:3] == "cpu" {
			core = core[3:]
		}
		vals := [len(cpuModes)]float64{t.User, t.Nice, t.System, t.Idle, t.Iowait, t.Irq, t.Softirq, t.Steal}
		for i, mode := range cpuModes {
			emit(c.series.With2(core, mode).Set(vals[i]))
		}
	}
}
