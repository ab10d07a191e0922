// Package host collects host-wide metrics (CPU, memory, network, disk)
// from gopsutil, one collector per source as node_exporter does.
package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors returns the host collectors. Metrics of a source that fails
// are left out of that sample; the error is reported once through
// prometheus.NewInvalidMetric only when nothing at all can be read.
func Collectors(ctx context.Context) []prometheus.Collector {
	return []prometheus.Collector{
		newCPUCollector(ctx),
		newMemoryCollector(ctx),
		newNetworkCollector(ctx),
		newDiskCollector(ctx),
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}
