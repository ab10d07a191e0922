package constmetric

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// TestWriteMatchesConstMetric: a cached series writes exactly what
// prometheus.MustNewConstMetric writes for the same descriptor, labels
// and value, for every value type, and again after its value changed.
func TestWriteMatchesConstMetric(t *testing.T) {
	d := prometheus.NewDesc("x_total", "help", []string{"cpu", "mode"}, prometheus.Labels{"job": "j", "a": "1", "z": "2"})
	for _, typ := range []prometheus.ValueType{prometheus.CounterValue, prometheus.GaugeValue, prometheus.UntypedValue} {
		v := NewVec(d, typ)
		for _, val := range []float64{0, 1.5, 1e18, -3} {
			var got, want dto.Metric
			if err := v.With2("0", "idle").Set(val).Write(&got); err != nil {
				t.Fatal(err)
			}
			if err := prometheus.MustNewConstMetric(d, typ, val, "0", "idle").Write(&want); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, &want) {
				t.Errorf("type %v value %v: wrote %v, want %v", typ, val, &got, &want)
			}
		}
	}
	v := NewVec(d, prometheus.GaugeValue)
	first := v.With2("1", "user")
	if first == nil || v.With2("1", "user") != first || v.With2("1", "idle") == first {
		t.Error("a series is not kept, or two label sets share one")
	}
}

func TestNewRejectsWrongLabels(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a missing label value")
		}
	}()
	New(prometheus.NewDesc("x", "h", []string{"a"}, nil), prometheus.GaugeValue)
}

// TestHistogramMatchesConstHistogram: a cached histogram writes what
// prometheus.MustNewConstHistogram writes for the same buckets, also
// after its values changed, and with no bucket at all.
func TestHistogramMatchesConstHistogram(t *testing.T) {
	d := prometheus.NewDesc("x_seconds", "help", []string{"op"}, prometheus.Labels{"job": "j"})
	bounds := []float64{0.001, 0.01, 0.1, 1}
	h := NewHistogram(d, bounds, "read")
	for _, c := range []struct {
		count uint64
		sum   float64
		cum   []uint64
	}{{0, 0, []uint64{0, 0, 0, 0}}, {7, 2.5, []uint64{1, 3, 3, 6}}, {9, 3.25, []uint64{2, 3, 8, 8}}} {
		copy(h.Buckets(), c.cum)
		var got, want dto.Metric
		if err := h.Set(c.count, c.sum).Write(&got); err != nil {
			t.Fatal(err)
		}
		buckets := map[float64]uint64{}
		for i, b := range bounds {
			buckets[b] = c.cum[i]
		}
		if err := prometheus.MustNewConstHistogram(d, c.count, c.sum, buckets, "read").Write(&want); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got, &want) {
			t.Errorf("wrote %v, want %v", &got, &want)
		}
	}
	var got, want dto.Metric
	NewHistogram(d, nil, "write").Set(3, 1).Write(&got)
	prometheus.MustNewConstHistogram(d, 3, 1, nil, "write").Write(&want)
	if !proto.Equal(&got, &want) {
		t.Errorf("no buckets: wrote %v, want %v", &got, &want)
	}
	defer func() {
		if recover() == nil {
			t.Error("no panic for bounds out of order")
		}
	}()
	NewHistogram(d, []float64{1, 0.5}, "read")
}

// TestGaugeMatchesPrometheusGauge: the Gauge collector describes and
// writes what a prometheus.Gauge with the same options does.
func TestGaugeMatchesPrometheusGauge(t *testing.T) {
	labels := prometheus.Labels{"job": "j", "instance": "i"}
	pg := prometheus.NewGauge(prometheus.GaugeOpts{Name: "status", Help: "h", ConstLabels: labels})
	g := NewGauge(prometheus.NewDesc("status", "h", nil, labels))
	for _, v := range []float64{0, 1, 2} {
		pg.Set(v)
		g.Set(v)
		var got, want dto.Metric
		var emitted prometheus.Metric
		g.Emit(func(m prometheus.Metric) { emitted = m })
		if err := emitted.Write(&got); err != nil {
			t.Fatal(err)
		}
		if err := pg.Write(&want); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got, &want) || emitted.Desc().String() != pg.Desc().String() {
			t.Errorf("wrote %v (%v), want %v (%v)", &got, emitted.Desc(), &want, pg.Desc())
		}
	}
}
