package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/statexec/statexec/internal/constmetric"
)

type memoryCollector struct {
	ctx                                           context.Context
	virtualMemory                                 func(context.Context) (*mem.VirtualMemoryStat, error) // the source; tests replace it
	success                                       success
	total, available, used, free, buffers, cached *constmetric.Metric
	usedRatio                                     *constmetric.Metric
}

func newMemoryCollector(ctx context.Context, l prometheus.Labels) *memoryCollector {
	d := descs(l)
	g := func(name, help string) *constmetric.Metric {
		return constmetric.New(d.desc(name, help), prometheus.GaugeValue)
	}
	return &memoryCollector{
		ctx:           ctx,
		virtualMemory: newMeminfoSource(procRoot()).virtualMemory,
		success:       newSuccess(d.successDesc("memory")),
		total:         g("statexec_memory_total_bytes", "Total physical memory in bytes."),
		available:     g("statexec_memory_available_bytes", "Memory available for new work without swapping, in bytes."),
		used:          g("statexec_memory_used_bytes", "Memory in use (total - available), in bytes."),
		free:          g("statexec_memory_free_bytes", "Unused memory in bytes."),
		buffers:       g("statexec_memory_buffers_bytes", "Memory in kernel buffers, in bytes."),
		cached:        g("statexec_memory_cached_bytes", "Memory in the page cache, in bytes."),
		usedRatio:     g("statexec_memory_used_ratio", "Memory in use as a ratio of total memory (0-1)."),
	}
}

func (c *memoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range []*constmetric.Metric{c.total, c.available, c.used, c.free, c.buffers, c.cached, c.usedRatio, c.success.m} {
		ch <- m.Desc()
	}
}

// Collect implements prometheus.Collector.
func (c *memoryCollector) Collect(ch chan<- prometheus.Metric) {
	c.Emit(func(m prometheus.Metric) { ch <- m })
}

// Emit is Collect without a channel (sampler.Emitter).
func (c *memoryCollector) Emit(emit func(prometheus.Metric)) {
	v, err := c.virtualMemory(c.ctx)
	c.success.report(emit, c.total.Desc(), err)
	if err != nil {
		return
	}
	emit(c.total.Set(float64(v.Total)))
	emit(c.available.Set(float64(v.Available)))
	emit(c.used.Set(float64(v.Used)))
	emit(c.free.Set(float64(v.Free)))
	emit(c.buffers.Set(float64(v.Buffers)))
	emit(c.cached.Set(float64(v.Cached)))
	if v.Total > 0 {
		emit(c.usedRatio.Set(float64(v.Used) / float64(v.Total)))
	}
}
