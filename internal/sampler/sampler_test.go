package sampler

import (
	"strconv"
	"testing"
	"time"
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
