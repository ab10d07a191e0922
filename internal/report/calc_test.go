package report

import (
	"math"
	"testing"

	"github.com/statexec/statexec/internal/metricsfile"
)

func TestRate(t *testing.T) {
	// 0 -> 10 in 1 s, -> 30 in 2 s, then a reset to 5 in 0.5 s (Prometheus
	// counts the new value as the increase).
	ts, v := rate([]int64{0, 1000, 3000, 3500}, []float64{0, 10, 30, 5})
	want := []float64{10, 10, 10}
	wantT := []int64{1000, 3000, 3500}
	if len(v) != len(want) {
		t.Fatalf("rate: %v at %v", v, ts)
	}
	for i := range want {
		if v[i] != want[i] || ts[i] != wantT[i] {
			t.Fatalf("rate[%d] = %v at %d, want %v at %d", i, v[i], ts[i], want[i], wantT[i])
		}
	}
	if ts, v := rate([]int64{5}, []float64{1}); ts != nil || v != nil {
		t.Fatalf("one point has no rate: %v %v", ts, v)
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	// 2 observations <= 1, 4 in (1,2], 2 in (2,4], 2 above 4.
	b := []bucket{{2, 6}, {inf, 10}, {1, 2}, {4, 8}} // any order
	for _, c := range []struct{ q, want float64 }{
		{0.1, 0.5},  // rank 1 in [0,1] holding 2: 0 + 1*(1/2)
		{0.5, 1.75}, // rank 5: 3rd of 4 in (1,2]: 1 + 1*(3/4)
		{0.75, 3.5}, // rank 7.5: 1.5th of 2 in (2,4]: 2 + 2*(1.5/2)
		{0.99, 4},   // rank 9.9 in +Inf: the highest finite bound
		{0.2, 1},    // rank 2: the end of the first bucket
		{0, 0},      // rank 0 in the first bucket: its start
		{1, 4},      // rank 10 in +Inf
		{-1, math.Inf(-1)},
		{2, inf},
	} {
		if got := quantile(c.q, b); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(0.5, []bucket{{1, 0}, {inf, 0}}); !math.IsNaN(got) {
		t.Errorf("no observations: %v, want NaN", got)
	}
	if got := quantile(0.5, []bucket{{1, 3}, {2, 5}}); !math.IsNaN(got) {
		t.Errorf("no +Inf bucket: %v, want NaN", got)
	}
	// A first bucket with a negative bound answers that bound.
	if got := quantile(0.1, []bucket{{-1, 5}, {inf, 10}}); got != -1 {
		t.Errorf("negative first bound: %v, want -1", got)
	}
	// Non-monotonic counts are made monotonic first: (1:4, 2:3, +Inf:8)
	// reads as (1:4, 2:4, +Inf:8); rank 4 ends in the first bucket.
	if got := quantile(0.5, []bucket{{1, 4}, {2, 3}, {inf, 8}}); got != 1 {
		t.Errorf("non-monotonic: %v, want 1", got)
	}
}

func TestHistogramQuantilesPerInterval(t *testing.T) {
	bucketSeries := func(le string, counts ...float64) *metricsfile.Series {
		s := &metricsfile.Series{Name: "h_bucket", Labels: map[string]string{"le": le}}
		for i, c := range counts {
			s.Points = append(s.Points, metricsfile.Point{TimestampMs: int64(i) * 1000, Value: c})
		}
		return s
	}
	// Interval 1 adds 4 observations <= 1 and none above; interval 2 adds
	// 4 in (1,2]; interval 3 none.
	series := []*metricsfile.Series{
		bucketSeries("1", 0, 4, 4, 4),
		bucketSeries("2", 0, 4, 8, 8),
		bucketSeries("+Inf", 0, 4, 8, 8),
	}
	ts, per, whole := histogramQuantiles(series, []float64{0.5})
	if len(ts) != 3 || ts[0] != 1000 || ts[2] != 3000 {
		t.Fatalf("times %v", ts)
	}
	if per[0][0] != 0.5 || per[0][1] != 1.5 || !math.IsNaN(per[0][2]) {
		t.Fatalf("p50 per interval %v, want [0.5 1.5 NaN]", per[0])
	}
	// Over the whole file: 4 <= 1, 4 in (1,2]: rank 4 ends the first bucket.
	if whole[0] != 1 {
		t.Fatalf("p50 over the file %v, want 1", whole[0])
	}
}

func TestAlignKeepsEveryPointBelowTheLimit(t *testing.T) {
	a := line{ts: []int64{0, 1000, 2000}, v: []float64{1, 2, 3}}
	b := line{ts: []int64{500, 2000}, v: []float64{7, 8}}
	xs, cols := align([]line{a, b}, 100)
	wantX := []int64{0, 500, 1000, 2000}
	if len(xs) != len(wantX) {
		t.Fatalf("xs %v", xs)
	}
	for i := range wantX {
		if xs[i] != wantX[i] {
			t.Fatalf("xs %v, want %v", xs, wantX)
		}
	}
	wantA := []float64{1, nan, 2, 3}
	wantB := []float64{nan, 7, nan, 8}
	for i := range xs {
		if !same(cols[0].values[i], wantA[i]) || !same(cols[1].values[i], wantB[i]) {
			t.Fatalf("columns %v %v, want %v %v", cols[0].values, cols[1].values, wantA, wantB)
		}
	}
	if cols[0].decimated || cols[1].decimated || cols[0].points != 3 {
		t.Fatalf("not decimated: %+v", cols)
	}
}

func same(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }

func TestDecimationKeepsSpikes(t *testing.T) {
	// 10,000 points at 100 ms, a slow wave, one spike up and one down.
	const n = 10000
	l := line{ts: make([]int64, n), v: make([]float64, n)}
	for i := range n {
		l.ts[i] = int64(i) * 100
		l.v[i] = math.Sin(float64(i) / 500)
	}
	l.v[5123] = 100
	l.v[7777] = -50
	// A second series with a quarter of the points at other instants.
	m := line{}
	for i := 0; i < n; i += 4 {
		m.ts = append(m.ts, int64(i)*100+50)
		m.v = append(m.v, float64(i))
	}
	const maxPoints = 200
	xs, cols := align([]line{l, m}, maxPoints)
	if len(xs) > maxPoints {
		t.Fatalf("%d x positions, want <= %d", len(xs), maxPoints)
	}
	if !cols[0].decimated || !cols[1].decimated || cols[0].points != n {
		t.Fatalf("decimated flags/points: %v %v %d", cols[0].decimated, cols[1].decimated, cols[0].points)
	}
	hasValue := func(vals []float64, want float64) bool {
		for _, v := range vals {
			if v == want {
				return true
			}
		}
		return false
	}
	if !hasValue(cols[0].values, 100) || !hasValue(cols[0].values, -50) {
		t.Fatal("a spike was lost")
	}
	// Every bucket keeps exactly the min and max of the points between its
	// two x positions, in their order of occurrence.
	for c, src := range []line{l, m} {
		for i := 0; i+1 < len(xs); i += 2 {
			lo, hi := xs[i], xs[i+1]
			mn, mx := math.Inf(1), math.Inf(-1)
			iMin, iMax := -1, -1
			for k, ts := range src.ts {
				if ts < lo || ts > hi {
					continue
				}
				if src.v[k] < mn {
					mn, iMin = src.v[k], k
				}
				if src.v[k] > mx {
					mx, iMax = src.v[k], k
				}
			}
			first, second := mn, mx
			if iMax < iMin {
				first, second = mx, mn
			}
			if cols[c].values[i] != first || cols[c].values[i+1] != second {
				t.Fatalf("series %d bucket [%d, %d]: kept %v, %v; want %v, %v", c, lo, hi, cols[c].values[i], cols[c].values[i+1], first, second)
			}
		}
	}
}
