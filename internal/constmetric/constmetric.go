// Package constmetric holds metrics whose descriptor and label pairs are
// built once and whose value is set at each sample. prometheus's
// MustNewConstMetric builds the label pairs anew at every call, and the
// registry's label wrapping builds a descriptor per metric per gather:
// together most of a sample's allocations. A collector keeps its Metrics
// and sends them again at every Collect.
package constmetric

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric is one series of a counter, gauge or untyped family. Set its
// value and send it; the registry calls Write while Gather runs. A Metric
// must not be sent twice in one Collect, nor by two collectors.
type Metric struct {
	desc   *prometheus.Desc
	typ    prometheus.ValueType
	labels []*dto.LabelPair
	value  float64
	// The messages Write points the gathered metric at: no allocation
	// per sample.
	counter dto.Counter
	gauge   dto.Gauge
	untyped dto.Untyped
}

// New makes the series of desc with these label values. It panics, as
// prometheus.MustNewConstMetric does, when they do not fit desc.
func New(desc *prometheus.Desc, typ prometheus.ValueType, labelValues ...string) *Metric {
	// Validates the label values (count, UTF-8) once.
	prometheus.MustNewConstMetric(desc, typ, 0, labelValues...)
	m := &Metric{desc: desc, typ: typ, labels: prometheus.MakeLabelPairs(desc, labelValues)}
	m.counter.Value = &m.value
	m.gauge.Value = &m.value
	m.untyped.Value = &m.value
	return m
}

// Set sets the value and returns m, to be sent: ch <- m.Set(v).
func (m *Metric) Set(v float64) *Metric {
	m.value = v
	return m
}

// Desc implements prometheus.Metric.
func (m *Metric) Desc() *prometheus.Desc { return m.desc }

// Write implements prometheus.Metric. The gathered metric shares the
// series' label pairs and value: it is valid until the series is Set
// again (the next gather), and its readers must not modify it. statexec
// stores every gather before the next one starts.
func (m *Metric) Write(out *dto.Metric) error {
	out.Label = m.labels
	switch m.typ {
	case prometheus.CounterValue:
		out.Counter = &m.counter
	case prometheus.GaugeValue:
		out.Gauge = &m.gauge
	default:
		out.Untyped = &m.untyped
	}
	return nil
}

// Vec keeps the series of one family by their (at most two) label values.
// A series, once made, is kept: families whose label values come and go
// (network interfaces) grow by each one ever seen, as the run's file does.
type Vec struct {
	desc   *prometheus.Desc
	typ    prometheus.ValueType
	series map[[2]string]*Metric
}

// NewVec makes the family's cache; desc has at most two variable labels.
func NewVec(desc *prometheus.Desc, typ prometheus.ValueType) *Vec {
	return &Vec{desc: desc, typ: typ, series: map[[2]string]*Metric{}}
}

// With0 is the series of a family without variable labels.
func (v *Vec) With0() *Metric {
	k := [2]string{}
	if m, ok := v.series[k]; ok {
		return m
	}
	m := New(v.desc, v.typ)
	v.series[k] = m
	return m
}

// With1 is the series of a family with one variable label.
func (v *Vec) With1(a string) *Metric {
	k := [2]string{a}
	if m, ok := v.series[k]; ok {
		return m
	}
	m := New(v.desc, v.typ, a)
	v.series[k] = m
	return m
}

// With2 is the series of a family with two variable labels.
func (v *Vec) With2(a, b string) *Metric {
	k := [2]string{a, b}
	if m, ok := v.series[k]; ok {
		return m
	}
	m := New(v.desc, v.typ, a, b)
	v.series[k] = m
	return m
}

// Desc is the family's descriptor.
func (v *Vec) Desc() *prometheus.Desc { return v.desc }

// Histogram is one series of a histogram family whose bucket bounds are
// fixed when it is made (the probes' log2 buckets). Like Metric, its
// descriptor, label pairs and protobuf messages are made once;
// prometheus.MustNewConstHistogram builds and sorts them at every call.
type Histogram struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	count  uint64
	sum    float64
	bounds []float64
	cum    []uint64
	h      dto.Histogram
}

// NewHistogram makes the series of desc with these bucket upper bounds
// (increasing, without +Inf, which is the count) and label values. It
// panics, as prometheus.MustNewConstHistogram does, when they do not fit
// desc.
func NewHistogram(desc *prometheus.Desc, bounds []float64, labelValues ...string) *Histogram {
	prometheus.MustNewConstHistogram(desc, 0, 0, nil, labelValues...)
	for i := 1; i < len(bounds); i++ {
		// MustNewConstHistogram sorts its buckets; these are written
		// in the order given.
		if !(bounds[i] > bounds[i-1]) {
			panic("constmetric: histogram bounds not increasing")
		}
	}
	h := &Histogram{
		desc:   desc,
		labels: prometheus.MakeLabelPairs(desc, labelValues),
		bounds: append([]float64(nil), bounds...),
		cum:    make([]uint64, len(bounds)),
	}
	h.h.SampleCount = &h.count
	h.h.SampleSum = &h.sum
	h.h.Bucket = make([]*dto.Bucket, len(bounds))
	for i := range bounds {
		h.h.Bucket[i] = &dto.Bucket{CumulativeCount: &h.cum[i], UpperBound: &h.bounds[i]}
	}
	return h
}

// Buckets is where Set's caller puts the cumulative count of each bound,
// in the order of the bounds: the series' own storage.
func (h *Histogram) Buckets() []uint64 { return h.cum }

// Set sets the count and sum (the buckets are set through Buckets) and
// returns h, to be sent.
func (h *Histogram) Set(count uint64, sum float64) *Histogram {
	h.count, h.sum = count, sum
	return h
}

// Desc implements prometheus.Metric.
func (h *Histogram) Desc() *prometheus.Desc { return h.desc }

// Write implements prometheus.Metric, with Metric.Write's sharing.
func (h *Histogram) Write(out *dto.Metric) error {
	out.Label = h.labels
	out.Histogram = &h.h
	return nil
}

// Gauge is a collector of one gauge series without variable labels whose
// value its owner sets (statexec_command_status). Unlike a
// prometheus.Gauge its Set is not atomic: set it where no collection runs
// at the same time (sampler.Sampler.Between).
type Gauge struct{ m *Metric }

// NewGauge makes the gauge of desc.
func NewGauge(desc *prometheus.Desc) *Gauge { return &Gauge{New(desc, prometheus.GaugeValue)} }

// Set sets the value.
func (g *Gauge) Set(v float64) { g.m.Set(v) }

// Describe implements prometheus.Collector.
func (g *Gauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.m.desc }

// Collect implements prometheus.Collector.
func (g *Gauge) Collect(ch chan<- prometheus.Metric) { ch <- g.m }

// Emit is Collect without a channel (sampler.Emitter).
func (g *Gauge) Emit(emit func(prometheus.Metric)) { emit(g.m) }
