package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/mem"
)

type memoryCollector struct {
	ctx                                           context.Context
	virtualMemory                                 func(context.Context) (*mem.VirtualMemoryStat, error) // the source; tests replace it
	success                                       *prometheus.Desc
	total, available, used, free, buffers, cached *prometheus.Desc
	usedRatio                                     *prometheus.Desc
}

func newMemoryCollector(ctx context.Context) *memoryCollector {
	return &memoryCollector{
		ctx:           ctx,
		virtualMemory: mem.VirtualMemoryWithContext,
		success:       successDesc("memory"),
		total:         desc("statexec_memory_total_bytes", "Total physical memory in bytes."),
		available:     desc("statexec_memory_available_bytes", "Memory available for new work without swapping, in bytes."),
		used:          desc("statexec_memory_used_bytes", "Memory in use (total - available), in bytes."),
		free:          desc("statexec_memory_free_bytes", "Unused memory in bytes."),
		buffers:       desc("statexec_memory_buffers_bytes", "Memory in kernel buffers, in bytes."),
		cached:        desc("statexec_memory_cached_bytes", "Memory in the page cache, in bytes."),
		usedRatio:     desc("statexec_memory_used_ratio", "Memory in use as a ratio of total memory (0-1)."),
	}
}

func (c *memoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.available, c.used, c.free, c.buffers, c.cached, c.usedRatio, c.success} {
		ch <- d
	}
}

func (c *memoryCollector) Collect(ch chan<- prometheus.Metric) {
	v, err := c.virtualMemory(c.ctx)
	reportSuccess(ch, c.success, c.total, err)
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, x float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x)
	}
	gauge(c.total, float64(v.Total))
	gauge(c.available, float64(v.Available))
	gauge(c.used, float64(v.Used))
	gauge(c.free, float64(v.Free))
	gauge(c.buffers, float64(v.Buffers))
	gauge(c.cached, float64(v.Cached))
	if v.Total > 0 {
		gauge(c.usedRatio, float64(v.Used)/float64(v.Total))
	}
}
