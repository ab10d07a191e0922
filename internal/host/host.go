// Package host collects host-wide metrics (CPU, memory, network, disk)
// from gopsutil, one collector per source as node_exporter does.
package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/constmetric"
)

// Collectors returns the host collectors. Each one also reports, at every
// sample, statexec_collector_success{collector="cpu|memory|network|disk"}:
// 1, or 0 when its source failed. The metrics of a failing source are then
// left out of that sample (a gap that success=0 explains in the file), and
// the error goes to Gather as an invalid metric, which the sampler reports
// on stderr once.
//
// constLabels (instance, job, role, SE_LABEL_*) are on every metric. They
// are put in the descriptors rather than added by a wrapping registerer,
// which would build a new descriptor for every metric at every gather.
func Collectors(ctx context.Context, constLabels prometheus.Labels) []prometheus.Collector {
	return []prometheus.Collector{
		newCPUCollector(ctx, constLabels),
		newMemoryCollector(ctx, constLabels),
		newNetworkCollector(ctx, constLabels),
		newDiskCollector(ctx, constLabels),
	}
}

// descs makes descriptors carrying the run's const labels.
type descs prometheus.Labels

func (l descs) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, prometheus.Labels(l))
}

// successHelp is shared with the probe collector's
// statexec_collector_success{collector="probe"}: one family, one help.
const successHelp = "Whether the collector's last collection succeeded (1) or failed (0)."

// successDesc describes one collector's success gauge. The collector label
// is a constant label, so that each collector (the probe's included)
// registers a distinct descriptor of the same family.
func (l descs) successDesc(collector string) *prometheus.Desc {
	cl := prometheus.Labels{"collector": collector}
	for k, v := range l {
		cl[k] = v
	}
	return prometheus.NewDesc("statexec_collector_success", successHelp, nil, cl)
}

// success is a collector's success gauge.
type success struct {
	m *constmetric.Metric
}

func newSuccess(d *prometheus.Desc) success {
	return success{constmetric.New(d, prometheus.GaugeValue)}
}

// report sends the gauge: 1 if err is nil, else 0 and err as an invalid
// metric of failed (so that Gather returns it).
func (s success) report(emit func(prometheus.Metric), failed *prometheus.Desc, err error) {
	if err != nil {
		emit(prometheus.NewInvalidMetric(failed, err))
		emit(s.m.Set(0))
		return
	}
	emit(s.m.Set(1))
}
