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
