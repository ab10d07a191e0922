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
	dto "github.com/prometheus/client_model/go"

	"github.com/statexec/statexec/internal/store"
)

// TestExactMsSurvivesSecondsRoundTrip checks ExactMs against the readers'
// model (parse the plain decimal seconds, times 1000, truncate), which
// store's TestEveryReaderReadsTimestampsExactly checks against the real
// VictoriaMetrics and promtool: in 2024 nothing moves; in 1972 and in
// the first seconds after 1970 (SE_TIME_RELATIVE=0) some values move, by
// a few milliseconds at most, and all read back exactly.
func TestExactMsSurvivesSecondsRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name       string
		from       int64
		wantBumped bool
	}{
		{"2024", 1704067200000, false},
		{"1972", 68177924000, true},
		{"1970", 0, true},
		{"before 1970", -20000, true},
	} {
		bumped, maxShift := 0, int64(0)
		for ms := c.from; ms < c.from+20000; ms++ {
			m := ExactMs(ms)
			if m < ms {
				t.Fatalf("%s: ExactMs(%d) = %d went back", c.name, ms, m)
			}
			maxShift = max(maxShift, m-ms)
			if m != ms {
				bumped++
			}
			s := string(store.AppendTimestamp(nil, m))
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || int64(f*1000) != m {
				t.Fatalf("%s: %d -> %s -> %d", c.name, m, s, int64(f*1000))
			}
		}
		if maxShift > 10 || (bumped > 0) != c.wantBumped {
			t.Errorf("%s: max shift %d ms, %d of 20000 bumped", c.name, maxShift, bumped)
		}
		t.Logf("%s: %d of 20000 ms values moved, by at most %d ms", c.name, bumped, maxShift)
	}
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

// TestRejectedMetricWarnsTruly: when the store leaves a metric out (its
// type changed), the tick is still stored and the warning says what was
// left out, not that later samples are lost; a failing spool says that.
func TestRejectedMetricWarnsTruly(t *testing.T) {
	st, err := store.Create(filepath.Join(t.TempDir(), "m.spool"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	gathers := 0
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		gathers++
		typ := dto.MetricType_GAUGE
		if gathers > 1 {
			typ = dto.MetricType_COUNTER
		}
		one := 1.0
		m := &dto.Metric{Gauge: &dto.Gauge{Value: &one}}
		if typ == dto.MetricType_COUNTER {
			m = &dto.Metric{Counter: &dto.Counter{Value: &one}}
		}
		name, other := "g", "a_total"
		return []*dto.MetricFamily{
			{Name: &other, Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{{Counter: &dto.Counter{Value: &one}}}},
			{Name: &name, Type: typ.Enum(), Metric: []*dto.Metric{m}},
		}, nil
	})
	var warn strings.Builder
	s := New(g, st, NewClock(1704067200000), prometheus.NewGauge(prometheus.GaugeOpts{Name: "d"}), &warn)
	s.Sample()
	s.Sample()
	if st.Ticks() != 2 || st.Points() != 3 {
		t.Errorf("%d ticks, %d points; want the second tick stored without g: 2 ticks, 3 points", st.Ticks(), st.Points())
	}
	if w := warn.String(); !strings.Contains(w, "metric g changed type") || strings.Contains(w, "lost") {
		t.Errorf("warning %q: want what was left out, not that samples are lost", w)
	}
	s.Sample() // the same warning is not repeated
	if n := strings.Count(warn.String(), "\n"); n != 1 {
		t.Errorf("%d warning lines, want 1: %q", n, warn.String())
	}

	st.Close() // writes to the spool now fail
	s.Sample()
	if !strings.Contains(warn.String(), "later samples are lost") {
		t.Errorf("spool failure: warning %q", warn.String())
	}
}
