package metricsfile

import (
	"os"
	"testing"
)

// FuzzParse: any input either parses into series with strictly increasing
// timestamps and an Order that covers every point once, or is an error;
// never a panic (statexec report reads whatever file it is given).
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../../example/statexec_metrics.txt"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data[:min(len(data), 4000)])
		}
	}
	f.Add([]byte("# HELP a A.\n# TYPE a counter\na_total{x=\"1\\n\"} 1 1.7e9\na_total{x=\"1\\n\"} 2 1700000000.001\n# EOF\n"))
	f.Add([]byte("# TYPE h histogram\n# HELP h H.\nh_bucket{le=\"+Inf\"} 1 1704067200000\nh_count 1 1704067200000\n"))
	f.Add([]byte("# EOF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			return
		}
		total := 0
		for _, s := range file.Series {
			for i := 1; i < len(s.Points); i++ {
				if s.Points[i].TimestampMs <= s.Points[i-1].TimestampMs {
					t.Fatalf("series %s: timestamps not increasing", s.Name)
				}
			}
			total += len(s.Points)
		}
		if len(file.Order) != total {
			t.Fatalf("order lists %d samples, series hold %d", len(file.Order), total)
		}
	})
}
