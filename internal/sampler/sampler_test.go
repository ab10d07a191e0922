package sampler

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/store"
)

func TestExactMsSurvivesSecondsRoundTrip(t *testing.T) {
	bumped, maxShift := 0, int64(0)
	for ms := int64(1704067200000); ms < 1704067200000+20000; ms++ {
		m := ExactMs(ms)
		if m < ms {
			t.Fatalf("ExactMs(%d) = %d went back", ms, m)
		}
		maxShift = max(maxShift, m-ms)
		if m != ms {
			bumped++
		}
		// What expfmt writes, read back as the consumers do.
		s := strconv.FormatFloat(float64(m)/1000, 'g', -1, 64)
		f, _ := strconv.ParseFloat(s, 64)
		if int64(f*1000) != m {
			t.Fatalf("%d -> %s -> %d", m, s, int64(f*1000))
		}
		if int64(fastParse(s)*1000) != m {
			t.Fatalf("%d -> %s -> %d in VictoriaMetrics", m, s, int64(fastParse(s)*1000))
		}
	}
	if maxShift > 10 || bumped == 0 {
		t.Fatalf("max shift %d ms, %d bumped", maxShift, bumped)
	}
	t.Logf("%d of 20000 ms values moved, by at most %d ms", bumped, maxShift)
}

func TestClockOrigin(t *testing.T) {
	c := NewClock(1704067200000)
	if ts := c.NowMs(); ts < 1704067200000 || ts > 1704067200000+50 {
		t.Fatalf("first timestamp %d", ts)
	}
	time.Sleep(30 * time.Millisecond)
	if ts := c.NowMs(); ts < 1704067200030 {
		t.Fatalf("after 30 ms: %d", ts)
	}
	now := NewClock(-1)
	if d := now.NowMs() - time.Now().UnixMilli(); d < -5 || d > 10 {
		t.Fatalf("origin -1 is %d ms from now", d)
	}
}

// TestRebasedMovesTheOriginToTheSyncInstant: after the sync instant the
// origin is at that instant; the delta moves an earlier timestamp of the
// old clock to its true place before the origin.
func TestRebasedMovesTheOriginToTheSyncInstant(t *testing.T) {
	start := time.Now()
	c := newClockAt(start, 1704067200000)
	at := start.Add(3*time.Second + 250*time.Millisecond)
	n, delta := c.Rebased(at)
	if n.OriginMs() != 1704067200000 || !n.Start().Equal(at) {
		t.Fatalf("rebased origin %d at %v", n.OriginMs(), n.Start())
	}
	// A sample 1 s after the old start lies 2.25 s before the new origin.
	before := c.originMs + time.Second.Milliseconds()
	if got := before + delta; got != 1704067200000-2250 {
		t.Fatalf("sample 1 s after start moved to %d, want origin - 2250", got)
	}
	// With the origin "now", the axis is the wall clock before and after.
	w := newClockAt(start, -1)
	nw, delta := w.Rebased(at)
	if nw.OriginMs() != at.UnixMilli() || delta < -1 || delta > 1 {
		t.Fatalf("wall origin rebased to %d (want %d), delta %d", nw.OriginMs(), at.UnixMilli(), delta)
	}
}

// TestSyncShiftsEarlierSamples: a sample taken before Sync lies before the
// origin by the time between it and the sync instant, later samples after
// it, in the exported file.
func TestSyncShiftsEarlierSamples(t *testing.T) {
	st, err := store.Create(filepath.Join(t.TempDir(), "m.txt.spool"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Remove()
	reg := prometheus.NewRegistry()
	dur := prometheus.NewGauge(prometheus.GaugeOpts{Name: "d", Help: "d"})
	reg.MustRegister(dur)
	const origin = 1704067200000
	s := New(reg, st, NewClock(origin), dur, io.Discard)
	s.Sample()
	before := time.Now()
	time.Sleep(300 * time.Millisecond)
	at := time.Now()
	if _, err := s.Sync(at); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sync(at); !errors.Is(err, store.ErrShifted) {
		t.Fatalf("second Sync: %v", err)
	}
	s.Sample()
	var buf bytes.Buffer
	if err := st.Export(&buf, store.Prometheus); err != nil {
		t.Fatal(err)
	}
	var ts []int64
	for _, l := range strings.Split(buf.String(), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "d" {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			ts = append(ts, n)
		}
	}
	gap := at.Sub(before).Milliseconds()
	if len(ts) != 2 || ts[0] > origin-gap || ts[0] < origin-gap-50 || ts[1] < origin || ts[1] > origin+50 {
		t.Fatalf("timestamps %v, want one about %d ms before %d and one just after", ts, gap, origin)
	}
}
