package sampler

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/statexec/statexec/internal/constmetric"
)

// fakeSource is a collector whose series and values a test sets before
// each tick: names are the label values of its series, fail an error it
// reports as an invalid metric.
type fakeSource struct {
	desc  *prometheus.Desc
	vec   *constmetric.Vec
	names []string
	value float64
	fail  error
}

func newFakeSource(name string) *fakeSource {
	d := prometheus.NewDesc(name, "A test family.", []string{"name"}, prometheus.Labels{"job": "t"})
	return &fakeSource{desc: d, vec: constmetric.NewVec(d, prometheus.GaugeValue)}
}

func (f *fakeSource) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

func (f *fakeSource) Collect(ch chan<- prometheus.Metric) {
	f.Emit(func(m prometheus.Metric) { ch <- m })
}

func (f *fakeSource) Emit(emit func(prometheus.Metric)) {
	if f.fail != nil {
		emit(prometheus.NewInvalidMetric(f.desc, f.fail))
		return
	}
	for i, n := range f.names {
		emit(f.vec.With1(n).Set(f.value + float64(i)))
	}
}

// plainCollector is a collector that is not an Emitter: the Registry
// collects it in a goroutine, as prometheus does.
type plainCollector struct{ c prometheus.Counter }

func (p plainCollector) Describe(ch chan<- *prometheus.Desc) { p.c.Describe(ch) }
func (p plainCollector) Collect(ch chan<- prometheus.Metric) { p.c.Collect(ch) }

// freshCollector makes a new metric at every Collect, as
// prometheus.MustNewConstMetric's users do.
type freshCollector struct {
	desc *prometheus.Desc
	v    *float64
}

func (f freshCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f freshCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, *f.v)
}

func familiesText(t *testing.T, mfs []*dto.MetricFamily) string {
	t.Helper()
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestRegistryGathersAsPrometheus: at every tick the Registry returns what
// a prometheus.Registry holding the same collectors returns (values,
// series, errors), and it goes through the registry's Gather only when
// the tick's series differ from the previous tick's: a series added, one
// gone, an invalid metric and the tick after it.
func TestRegistryGathersAsPrometheus(t *testing.T) {
	a, b := newFakeSource("a_value"), newFakeSource("b_value")
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "A counter."})
	status := constmetric.NewGauge(prometheus.NewDesc("status", "A gauge.", nil, nil))

	ours := NewRegistry()
	ours.MustRegister(a, plainCollector{counter}, status, b) // b last: its series gone end the tick early
	ref := prometheus.NewRegistry()
	ref.MustRegister(a, plainCollector{counter}, status, b)

	ticks := []struct {
		name    string
		set     func()
		gathers int // ticks through the registry's Gather so far
	}{
		{"first", func() { a.names = []string{"x", "y"}; b.names = []string{"z"} }, 1},
		{"values only", func() { a.value, b.value = 10, 20; counter.Add(3); status.Set(1) }, 1},
		{"values again", func() { a.value = 11 }, 1},
		{"series added", func() { a.names = []string{"x", "y", "w"} }, 2},
		{"steady", func() { b.value = 5 }, 2},
		{"order changed", func() { a.names = []string{"y", "x", "w"} }, 3},
		{"invalid metric", func() { b.fail = errors.New("source down") }, 4},
		{"back", func() { b.fail = nil }, 5},
		{"steady after", func() { counter.Inc() }, 5},
		{"series gone", func() { a.names = []string{"x"} }, 6},
		{"empty family", func() { b.names = nil }, 7},
		{"steady empty", func() { a.value = -1; status.Set(2) }, 7},
	}
	for _, tk := range ticks {
		tk.set()
		got, gotErr := ours.Gather()
		gotText := familiesText(t, got)
		// Collecting the fakes again gives the same metrics.
		want, wantErr := ref.Gather()
		if wantText := familiesText(t, want); gotText != wantText {
			t.Errorf("%s: gathered\n%s\nwant\n%s", tk.name, gotText, wantText)
		}
		if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
			t.Errorf("%s: error %v, want %v", tk.name, gotErr, wantErr)
		}
		if ours.gathers != tk.gathers {
			t.Errorf("%s: %d ticks through the registry's Gather, want %d", tk.name, ours.gathers, tk.gathers)
		}
	}
}

// TestRegistryFreshMetricsGatherEveryTick: a collector that makes new
// metrics at each Collect cannot be reused; every tick is gathered, with
// its new values.
func TestRegistryFreshMetricsGatherEveryTick(t *testing.T) {
	v := 1.0
	r := NewRegistry()
	r.MustRegister(freshCollector{prometheus.NewDesc("fresh_total", "Fresh.", nil, nil), &v})
	for i := 1; i <= 3; i++ {
		v = float64(i * 7)
		mfs, err := r.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if text, want := familiesText(t, mfs), fmt.Sprintf("fresh_total %d\n", i*7); !strings.Contains(text, want) {
			t.Errorf("tick %d: %q, want %q in it", i, text, want)
		}
		if r.gathers != i {
			t.Errorf("tick %d: %d gathers", i, r.gathers)
		}
	}
}

// TestRegistryRejectsWhatPrometheusRejects: registration goes through a
// prometheus.Registry, so a duplicate descriptor fails as it does there.
func TestRegistryRejectsWhatPrometheusRejects(t *testing.T) {
	r := NewRegistry()
	if err := r.Register(newFakeSource("dup")); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(newFakeSource("dup")); err == nil {
		t.Error("a second collector of the same descriptor was registered")
	}
}
