//go:build linux

package probe

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/constmetric"
)

// The BPF histograms are arrays of log2 slots of nanoseconds: slot k
// counts values in [2^k, 2^(k+1)). These turn them into what the
// metrics and the summary lines show.

// log2Buckets turns log2 ns slots ([2^k, 2^(k+1))) into cumulative
// Prometheus buckets with "le" from 2^minLe to 2^maxLe ns: slots below
// fold into the first bucket, slots from 2^maxLe on into +Inf.
func log2Buckets(h []uint64, minLe, maxLe int) (uint64, map[float64]uint64) {
	buckets := make(map[float64]uint64, maxLe-minLe+1)
	var cum uint64
	for k, n := range h {
		cum += n
		if e := k + 1; e >= minLe && e <= maxLe {
			buckets[math.Ldexp(1, e)/1e9] = cum
		}
	}
	return cum, buckets
}

// log2Quantile estimates a quantile of log2 ns slots, linear inside a
// slot like histogram_quantile.
func log2Quantile(h []uint64, q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for k, n := range h {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			lo := math.Ldexp(1, k)
			return time.Duration(lo + lo*(rank-cum)/float64(n))
		}
		cum += float64(n)
	}
	return time.Duration(math.Ldexp(1, len(h)))
}

// log2Hist is a histogram series over log2 ns slots with log2Buckets'
// buckets, made once (internal/constmetric): MustNewConstHistogram built
// a map, a sorted bucket list and label pairs at every sample.
type log2Hist struct {
	h            *constmetric.Histogram
	minLe, maxLe int
}

// newLog2Hist makes the series of desc for slots log2 slots.
func newLog2Hist(desc *prometheus.Desc, slots, minLe, maxLe int, labelValues ...string) *log2Hist {
	var bounds []float64
	for k := range slots {
		if e := k + 1; e >= minLe && e <= maxLe {
			bounds = append(bounds, math.Ldexp(1, e)/1e9)
		}
	}
	return &log2Hist{constmetric.NewHistogram(desc, bounds, labelValues...), minLe, maxLe}
}

// set sets the series from the slots h (as log2Buckets turns them into
// buckets) and the sum in seconds.
func (l *log2Hist) set(h []uint64, sumSec float64) *constmetric.Histogram {
	b := l.h.Buckets()
	var cum uint64
	j := 0
	for k, n := range h {
		cum += n
		if e := k + 1; e >= l.minLe && e <= l.maxLe && j < len(b) {
			b[j] = cum
			j++
		}
	}
	return l.h.Set(cum, sumSec)
}
