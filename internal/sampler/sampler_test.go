package sampler

import (
	"strconv"
	"testing"
	"time"

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
