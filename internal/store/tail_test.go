package store

import (
	"os"
	"path/filepath"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestTailReadsOnlyCompleteRecords feeds a spool to a Tail a few bytes at
// a time, as a writer killed or caught mid-record would leave it: every
// point comes out once, with its exact timestamp and values, and nothing
// of a record comes out before the record is complete.
func TestTailReadsOnlyCompleteRecords(t *testing.T) {
	src := newTestStore(t)
	type pt struct {
		si   int
		ts   int64
		vals []float64
	}
	var want []pt
	for i := range 40 {
		ts := int64(1704067200000 + 10*i)
		mfs := []*dto.MetricFamily{
			gaugeFam("g", map[string]float64{"a": float64(i), "b": -float64(i) / 3}),
			counterFam("c_total", float64(i*i)),
			histFam(uint64(i), float64(i)/2, 0, uint64(i/2), uint64(i)),
		}
		if err := src.Append(ts, mfs); err != nil {
			t.Fatal(err)
		}
		want = append(want,
			pt{0, ts, []float64{float64(i)}}, pt{1, ts, []float64{-float64(i) / 3}},
			pt{2, ts, []float64{float64(i * i)}},
			pt{3, ts, []float64{float64(i), float64(i) / 2, 0, float64(i / 2), float64(i)}})
	}
	src.flush()
	data, err := os.ReadFile(src.Path())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "growing.spool")
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	tail, err := OpenTail(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()
	var got []pt
	for off := 0; off < len(data); {
		step := min(7+off%13, len(data)-off) // uneven steps cut records everywhere
		if _, err := w.Write(data[off : off+step]); err != nil {
			t.Fatal(err)
		}
		off += step
		// A small max returns a tick at a time: batches stay bounded.
		for {
			n, err := tail.Next(3, func(si int, ts int64, vals []float64) {
				got = append(got, pt{si, ts, append([]float64(nil), vals...)})
			})
			if err != nil {
				t.Fatalf("after %d of %d bytes: %v", off, len(data), err)
			}
			if n == 0 {
				break
			}
		}
		if len(got) > len(want) {
			t.Fatalf("after %d bytes: %d points, more than the %d written", off, len(got), len(want))
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d points, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.si != w.si || g.ts != w.ts || len(g.vals) != len(w.vals) {
			t.Fatalf("point %d: got %+v, want %+v", i, g, w)
		}
		for j := range w.vals {
			if g.vals[j] != w.vals[j] {
				t.Fatalf("point %d: got %+v, want %+v", i, g, w)
			}
		}
	}
	if info := tail.Series(3); info.Family != "lat_seconds" || info.Type != dto.MetricType_HISTOGRAM || len(info.Bounds) != 3 {
		t.Fatalf("series 3: %+v", info)
	}
	if info := tail.Series(0); info.Family != "g" || len(info.Labels) != 1 || info.Labels[0].GetValue() != "a" {
		t.Fatalf("series 0: %+v", info)
	}
}

// TestTailFindShift: the sync modes shift the ticks taken before the
// sync instant after they were spooled; a Tail that looks ahead for the
// shift hands them out with their final timestamps, as the file has them.
func TestTailFindShift(t *testing.T) {
	s := newTestStore(t)
	for i := range 8 {
		if i == 5 {
			if err := s.Shift(-70000); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Append(1704067200000+int64(i)*10, []*dto.MetricFamily{gaugeFam("g", map[string]float64{"a": float64(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	tail, err := OpenTail(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()
	if found, err := tail.FindShift(); err != nil || !found {
		t.Fatalf("FindShift: %v %v", found, err)
	}
	var got []int64
	for {
		n, err := tail.Next(1000, func(_ int, ts int64, _ []float64) { got = append(got, ts) })
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	want := []int64{1704067130000, 1704067130010, 1704067130020, 1704067130030, 1704067130040,
		1704067200050, 1704067200060, 1704067200070}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	// Without looking ahead, a shift after handed-out ticks is an error,
	// not wrong timestamps.
	t2, err := OpenTail(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Close()
	if _, err := t2.Next(1000, func(int, int64, []float64) {}); err == nil {
		t.Fatal("no error for a shift after ticks were read")
	}
}
