package sampler

import (
	"reflect"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Registry holds the run's collectors. Each one is registered in a
// prometheus.Registry, which checks its descriptors as usual, and that
// registry's Gather makes the families of a tick whenever the tick's
// metrics differ from the previous tick's. In steady state they do not,
// and the previous result is reused with the new values: a Gather costs,
// per tick, a goroutine and a channel per collector (a thread woken up on
// an idle machine), then hashing, checking and sorting every metric and
// building its protobuf structs, about two thirds of a tick's CPU when
// the process sleeps between ticks (BenchmarkTickIdle).
//
// The reuse is exact: Gather's result depends only on which metrics are
// collected (their descriptors and labels, which are fixed for a metric:
// labels are immutable by prometheus' contract) and on their values. So
// when every collector sent the very same metrics (the same pointers, in
// the same order) as at the previous tick, whose Gather succeeded, each
// one is written again into its place in that tick's families; a metric
// that writes other labels, another value type or an error sends the tick
// to the registry's Gather after all. A new series (a new peer, drop
// reason or network interface), a series gone, a failing source (an
// invalid metric) or a collector's panic therefore take one real Gather.
//
// A Registry is used by one Sampler, which serialises Gather calls.
type Registry struct {
	reg     *prometheus.Registry
	sources []*source
	// metrics are the previous tick's metrics in collection order, each
	// with where the registry put it; valid tells whether they and
	// families may be reused.
	metrics  []gathered
	families []*dto.MetricFamily
	valid    bool
	// gathers counts the ticks that went through the registry's Gather
	// (tests check that steady ticks do not).
	gathers int
}

// gathered is one metric of a gathered tick.
type gathered struct {
	m     prometheus.Metric
	out   *dto.Metric // its place in the families
	label []*dto.LabelPair
	kind  valueKind
}

// Emitter is a collector that can hand its metrics to a function instead
// of a channel: the sampler then collects it in its own goroutine. A
// collector that is not one is collected by Collect in a goroutine of its
// own, as a prometheus.Registry does.
type Emitter interface {
	prometheus.Collector
	Emit(emit func(prometheus.Metric))
}

// source is one registered collector. It is what the prometheus.Registry
// holds: Describe is the collector's, Collect sends the metrics collected
// for the current tick (the registry's Gather replays them; collecting
// again would take another sample).
type source struct {
	c    prometheus.Collector
	emit func(prometheus.Metric) // appends to got; made once
	got  []prometheus.Metric
	taps []tap
	// panicked is what the collector panicked with this tick, raised
	// again in Collect so that the registry reports it as its own.
	panicked any
	hasPanic bool
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{reg: prometheus.NewRegistry()}
}

// Register registers c, as prometheus.Registry.Register does.
func (r *Registry) Register(c prometheus.Collector) error {
	s := &source{c: c}
	s.emit = func(m prometheus.Metric) { s.got = append(s.got, m) }
	if err := r.reg.Register(s); err != nil {
		return err
	}
	r.sources = append(r.sources, s)
	r.valid = false
	return nil
}

// MustRegister registers the collectors and panics on the first error.
func (r *Registry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Gather collects every collector once and returns the families as a
// prometheus.Registry's Gather does. The families and their metrics are
// valid until the next Gather, which may write into them.
func (r *Registry) Gather() ([]*dto.MetricFamily, error) {
	for _, s := range r.sources {
		s.collect()
	}
	if r.reuse() {
		return r.families, nil
	}
	return r.gather()
}

// Describe implements prometheus.Collector.
func (s *source) Describe(ch chan<- *prometheus.Desc) { s.c.Describe(ch) }

// Collect implements prometheus.Collector: it sends this tick's metrics,
// each in a tap that records where the registry writes it.
func (s *source) Collect(ch chan<- prometheus.Metric) {
	for i := range s.taps {
		ch <- &s.taps[i]
	}
	if s.hasPanic {
		panic(s.panicked)
	}
}

// collect takes the collector's metrics of this tick into got.
func (s *source) collect() {
	s.got = s.got[:0]
	s.panicked, s.hasPanic = nil, false
	if e, ok := s.c.(Emitter); ok {
		defer func() {
			if p := recover(); p != nil {
				s.panicked, s.hasPanic = p, true
			}
		}()
		e.Emit(s.emit)
		return
	}
	ch := make(chan prometheus.Metric, 16)
	go func() {
		defer close(ch)
		defer func() {
			if p := recover(); p != nil {
				s.panicked, s.hasPanic = p, true
			}
		}()
		s.c.Collect(ch)
	}()
	for m := range ch {
		s.got = append(s.got, m)
	}
}

// reuse writes this tick's metrics into the previous tick's families if
// they are the same metrics, and tells whether it did.
func (r *Registry) reuse() bool {
	if !r.valid {
		return false
	}
	i := 0
	for _, s := range r.sources {
		if s.hasPanic {
			return false
		}
		for _, m := range s.got {
			// Every cached metric's dynamic type is a pointer (see
			// gather): the comparison cannot panic.
			if i >= len(r.metrics) || m != r.metrics[i].m {
				return false
			}
			i++
		}
	}
	if i != len(r.metrics) {
		return false
	}
	for i := range r.metrics {
		g := &r.metrics[i]
		g.out.Reset()
		if g.m.Write(g.out) != nil || !sameSlice(g.out.Label, g.label) || kindOf(g.out) != g.kind || g.out.TimestampMs != nil {
			// The families are half rewritten: never reuse them.
			r.valid = false
			return false
		}
	}
	return true
}

// gather runs the registry's Gather on this tick's metrics and keeps what
// the next tick needs to reuse its result.
func (r *Registry) gather() ([]*dto.MetricFamily, error) {
	r.gathers++
	r.valid = false
	for _, s := range r.sources {
		s.taps = s.taps[:0]
		for _, m := range s.got {
			s.taps = append(s.taps, tap{Metric: m})
		}
	}
	mfs, err := r.reg.Gather()
	r.families = mfs
	r.metrics = r.metrics[:0]
	ok := err == nil
	for _, s := range r.sources {
		ok = ok && !s.hasPanic
		for i := range s.taps {
			t := &s.taps[i]
			g := gathered{m: t.Metric, out: t.out, label: t.label}
			if t.out == nil || t.err != nil || t.out.TimestampMs != nil ||
				!sameSlice(t.out.Label, t.label) || reflect.TypeOf(t.Metric).Kind() != reflect.Pointer {
				// Written nowhere, or its labels were sorted into a
				// copy, or not comparable by identity.
				ok = false
			} else {
				g.kind = kindOf(t.out)
				ok = ok && g.kind != kindNone
			}
			r.metrics = append(r.metrics, g)
		}
		// The taps point at this tick's metrics: let them go.
		clear(s.taps)
	}
	r.valid = ok
	return mfs, err
}

// tap is a metric that records the dto.Metric the registry writes it into.
type tap struct {
	prometheus.Metric
	out   *dto.Metric
	label []*dto.LabelPair
	err   error
}

func (t *tap) Write(out *dto.Metric) error {
	t.err = t.Metric.Write(out)
	t.out, t.label = out, out.Label
	return t.err
}

// valueKind is which value a written metric holds.
type valueKind uint8

const (
	kindNone valueKind = iota
	kindCounter
	kindGauge
	kindUntyped
	kindHistogram
	kindSummary
)

// kindOf is the one value m holds, kindNone if none or several.
func kindOf(m *dto.Metric) valueKind {
	k, n := kindNone, 0
	if m.Counter != nil {
		k, n = kindCounter, n+1
	}
	if m.Gauge != nil {
		k, n = kindGauge, n+1
	}
	if m.Untyped != nil {
		k, n = kindUntyped, n+1
	}
	if m.Histogram != nil {
		k, n = kindHistogram, n+1
	}
	if m.Summary != nil {
		k, n = kindSummary, n+1
	}
	if n != 1 {
		return kindNone
	}
	return k
}

// sameSlice tells whether a and b are the same slice (same array, same
// length), not merely equal: the labels of a metric are immutable.
func sameSlice(a, b []*dto.LabelPair) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}
