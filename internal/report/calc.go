package report

import (
	"math"
	"sort"
)

// rate returns the per-second increase of a counter between consecutive
// points, at the later point's time. A decrease is a counter reset: the
// increase is then the new value, as Prometheus' rate() counts it.
func rate(ts []int64, v []float64) ([]int64, []float64) {
	if len(ts) < 2 {
		return nil, nil
	}
	outT := make([]int64, 0, len(ts)-1)
	outV := make([]float64, 0, len(ts)-1)
	for i := 1; i < len(ts); i++ {
		inc := v[i] - v[i-1]
		if inc < 0 {
			inc = v[i]
		}
		outT = append(outT, ts[i])
		outV = append(outV, inc/(float64(ts[i]-ts[i-1])/1000))
	}
	return outT, outV
}

// bucket is one cumulative histogram bucket: observations <= upper.
type bucket struct {
	upper float64
	count float64
}

// quantile computes the q-quantile of cumulative buckets exactly as
// Prometheus' histogram_quantile does: linear interpolation inside the
// bucket that holds the rank, the lowest bucket starting at 0 (if its bound
// is positive), the +Inf bucket answered by the next highest bound. NaN
// when there is no observation or no +Inf bucket.
func quantile(q float64, buckets []bucket) float64 {
	if math.IsNaN(q) {
		return math.NaN()
	}
	if q < 0 {
		return math.Inf(-1)
	}
	if q > 1 {
		return math.Inf(1)
	}
	b := append([]bucket(nil), buckets...)
	sort.Slice(b, func(i, j int) bool { return b[i].upper < b[j].upper })
	if len(b) < 2 || !math.IsInf(b[len(b)-1].upper, 1) {
		return math.NaN()
	}
	// Cumulative counts can decrease through float error or a scrape
	// between bucket reads; Prometheus makes them monotonic first.
	for i := 1; i < len(b); i++ {
		if b[i].count < b[i-1].count {
			b[i].count = b[i-1].count
		}
	}
	total := b[len(b)-1].count
	if total == 0 || math.IsNaN(total) {
		return math.NaN()
	}
	rank := q * total
	i := sort.Search(len(b)-1, func(i int) bool { return b[i].count >= rank })
	if i == len(b)-1 {
		return b[len(b)-2].upper
	}
	if i == 0 && b[0].upper <= 0 {
		return b[0].upper
	}
	start, end, count := 0.0, b[i].upper, b[i].count
	if i > 0 {
		start = b[i-1].upper
		count -= b[i-1].count
		rank -= b[i-1].count
	}
	return start + (end-start)*(rank/count)
}

// column is one series of a chart: values at the chart's shared x
// positions, NaN where the series has no point.
type column struct {
	values    []float64
	decimated bool // some pixel column held more than its min and max
	points    int  // points before decimation
}

// line is a series to chart: times in ms on the chart's axis, values.
type line struct {
	ts []int64
	v  []float64
}

// align puts lines on one shared x axis (uPlot wants one x array per
// chart). With at most maxPoints distinct times it keeps every point;
// otherwise it cuts the time range into maxPoints/2 buckets (about one per
// pixel column) and keeps, per series and bucket, the minimum and the
// maximum in their order of occurrence, so spikes survive. All series share
// the bucket's first and last time as x positions.
func align(lines []line, maxPoints int) ([]int64, []column) {
	xs := distinctTimes(lines)
	cols := make([]column, len(lines))
	if len(xs) <= maxPoints {
		index := make(map[int64]int, len(xs))
		for i, x := range xs {
			index[x] = i
		}
		for c, l := range lines {
			vals := nanSlice(len(xs))
			for i, t := range l.ts {
				vals[index[t]] = l.v[i]
			}
			cols[c] = column{values: vals, points: len(l.ts)}
		}
		return xs, cols
	}
	return decimate(lines, xs[0], xs[len(xs)-1], maxPoints/2)
}

func distinctTimes(lines []line) []int64 {
	n := 0
	for _, l := range lines {
		n += len(l.ts)
	}
	all := make([]int64, 0, n)
	for _, l := range lines {
		all = append(all, l.ts...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out := all[:0]
	for i, x := range all {
		if i == 0 || x != all[i-1] {
			out = append(out, x)
		}
	}
	return out
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

// extremes is what one series keeps of one bucket.
type extremes struct {
	n                int
	min, max         float64
	minIndex, maxIdx int
}

func decimate(lines []line, first, last int64, buckets int) ([]int64, []column) {
	span := last - first + 1
	bucketOf := func(t int64) int { return int((t - first) * int64(buckets) / span) }
	lo := make([]int64, buckets) // first and last time seen in each bucket
	hi := make([]int64, buckets)
	seen := make([]bool, buckets)
	per := make([][]extremes, len(lines))
	for c, l := range lines {
		per[c] = make([]extremes, buckets)
		for i, t := range l.ts {
			b := bucketOf(t)
			if !seen[b] || t < lo[b] {
				lo[b] = t
			}
			if !seen[b] || t > hi[b] {
				hi[b] = t
			}
			seen[b] = true
			e := &per[c][b]
			v := l.v[i]
			if math.IsNaN(v) {
				continue
			}
			if e.n == 0 || v < e.min {
				e.min, e.minIndex = v, i
			}
			if e.n == 0 || v > e.max {
				e.max, e.maxIdx = v, i
			}
			e.n++
		}
	}
	// Two x positions per bucket that has points: its first and last time.
	var xs []int64
	pos := make([]int, buckets) // index of the bucket's first x
	for b := 0; b < buckets; b++ {
		if !seen[b] {
			continue
		}
		pos[b] = len(xs)
		xs = append(xs, lo[b])
		if hi[b] != lo[b] {
			xs = append(xs, hi[b])
		}
	}
	cols := make([]column, len(lines))
	for c := range lines {
		vals := nanSlice(len(xs))
		col := column{points: len(lines[c].ts)}
		for b := 0; b < buckets; b++ {
			e := per[c][b]
			if e.n == 0 {
				continue
			}
			if e.n > 2 {
				col.decimated = true
			}
			p := pos[b]
			two := hi[b] != lo[b]
			switch {
			case e.n == 1 || !two:
				vals[p] = e.max
			case e.minIndex <= e.maxIdx:
				vals[p], vals[p+1] = e.min, e.max
			default:
				vals[p], vals[p+1] = e.max, e.min
			}
		}
		col.values = vals
		cols[c] = col
	}
	return xs, cols
}
