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

// NewVec makes the family's cache; desc has one or two variable labels.
func NewVec(desc *prometheus.Desc, typ prometheus.ValueType) *Vec {
	return &Vec{desc: desc, typ: typ, series: map[[2]string]*Metric{}}
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
