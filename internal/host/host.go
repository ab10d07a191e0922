// Package host collects host-wide metrics (CPU, memory, network, disk)
// from gopsutil, one collector per source as node_exporter does.
package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors returns the host collectors. Each one also reports, at every
// sample, statexec_collector_success{collector="cpu|memory|network|disk"}:
// 1, or 0 when its source failed. The metrics of a failing source are then
// left out of that sample (a gap that success=0 explains in the file), and
// the error goes to Gather as an invalid metric, which the sampler reports
// on stderr once.
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

// successHelp is shared with the probe collector's
// statexec_collector_success{collector="probe"}: one family, one help.
const successHelp = "Whether the collector's last collection succeeded (1) or failed (0)."

// successDesc describes one collector's success gauge. The collector label
// is a constant label, so that each collector (the probe's included)
// registers a distinct descriptor of the same family.
func successDesc(collector string) *prometheus.Desc {
	return prometheus.NewDesc("statexec_collector_success", successHelp, nil, prometheus.Labels{"collector": collector})
}

// reportSuccess sends d's gauge: 1 if err is nil, else 0 and err as an
// invalid metric of failed (so that Gather returns it).
func reportSuccess(ch chan<- prometheus.Metric, d, failed *prometheus.Desc, err error) {
	if err != nil {
		ch <- prometheus.NewInvalidMetric(failed, err)
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 1)
}
