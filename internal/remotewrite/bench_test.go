package remotewrite

import (
	"fmt"
	"path/filepath"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/statexec/statexec/internal/store"
)

// BenchmarkReadEncode is the client-side CPU of pushing one sample: read
// from the spool, batch, encode and compress (no network). The ticks are
// 150 series with statexec-like labels.
func BenchmarkReadEncode(b *testing.B) {
	st, err := store.Create(filepath.Join(b.TempDir(), "m.txt.spool"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Remove()
	lp := func(k, v string) *dto.LabelPair { return &dto.LabelPair{Name: ptr(k), Value: ptr(v)} }
	mfs := make([]*dto.MetricFamily, 0, 30)
	for f := range 30 {
		mf := &dto.MetricFamily{Name: ptr(fmt.Sprintf("statexec_metric_%d_seconds", f)), Help: ptr("h"), Type: dto.MetricType_GAUGE.Enum()}
		for m := range 5 {
			mf.Metric = append(mf.Metric, &dto.Metric{Label: []*dto.LabelPair{lp("instance", "bench-host-01"), lp("job", "statexec"),
				lp("role", "standalone"), lp("cpu", fmt.Sprint(m))}, Gauge: &dto.Gauge{Value: ptr(float64(m))}})
		}
		mfs = append(mfs, mf)
	}
	const ticks = 2000
	for i := range ticks {
		mfs[0].Metric[0].Gauge.Value = ptr(float64(i))
		st.Append(1795628928000+int64(i)*10, mfs)
	}
	b.ResetTimer()
	samples := 0
	for range b.N {
		tail, err := store.OpenTail(st.Path())
		if err != nil {
			b.Fatal(err)
		}
		f := &Follower{tail: tail, o: Options{OpenMetrics: true}}
		bt := newBatch()
		var buf, body []byte
		for {
			n, err := f.read(bt)
			if err != nil {
				b.Fatal(err)
			}
			if bt.samples >= maxBatch || n == 0 && bt.samples > 0 {
				samples += bt.samples
				body, buf = encode(bt.series, buf, body)
				bt.reset()
				continue
			}
			if n == 0 {
				break
			}
		}
		tail.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(samples), "ns/sample")
}
