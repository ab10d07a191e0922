package store

import (
	"fmt"
	"io"
	"os"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// BenchmarkExport stores runs of 1x and 10x the length (60 series, as a
// 2-core host) and exports them: ns/point staying flat means linear time;
// spool-B/point is the disk cost of a sample.
func BenchmarkExport(b *testing.B) {
	for _, ticks := range []int{3600, 36000} {
		b.Run(fmt.Sprintf("ticks=%d", ticks), func(b *testing.B) {
			s := newTestStore(b)
			mfs := make([]*dto.MetricFamily, 0, 20)
			for f := range 20 {
				mfs = append(mfs, gaugeFam("g"+string(rune('a'+f)), map[string]float64{"a": 1, "b": 2, "c": 3}))
			}
			for i := range ticks {
				mfs[0].Metric[0].Gauge.Value = ptr(float64(i) * 1.5)
				s.Append(1704067200000+int64(i*10), mfs)
			}
			s.flush()
			fi, _ := os.Stat(s.Path())
			b.ResetTimer()
			for range b.N {
				if err := s.Export(io.Discard, OpenMetrics); err != nil {
					b.Fatal(err)
				}
			}
			points := float64(s.Points())
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/points, "ns/point")
			b.ReportMetric(float64(fi.Size())/points, "spool-B/point")
		})
	}
}

// BenchmarkAppend is the cost of storing one tick of 60 series.
func BenchmarkAppend(b *testing.B) {
	s := newTestStore(b)
	mfs := make([]*dto.MetricFamily, 0, 20)
	for f := range 20 {
		mfs = append(mfs, gaugeFam("g"+string(rune('a'+f)), map[string]float64{"a": 1, "b": 2, "c": 3}))
	}
	b.ResetTimer()
	for i := range b.N {
		s.Append(int64(i+1), mfs)
	}
}
