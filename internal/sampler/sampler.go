// Package sampler takes the run's samples: it gathers the registry at
// every tick (and on demand, when the command starts and ends) and appends
// the result to the store with a timestamp on the run's time axis.
package sampler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/store"
)

// Clock maps the monotonic time since its start instant onto the time
// axis of the file: timestamp = origin + (now - start). Using the
// monotonic clock keeps timestamps increasing when the wall clock jumps.
type Clock struct {
	start    time.Time
	originMs int64
	wall     bool // the origin is the wall-clock time of start
}

// NewClock starts a clock now. originMs < 0 means the wall-clock time now.
func NewClock(originMs int64) Clock {
	return newClockAt(time.Now(), originMs)
}

func newClockAt(start time.Time, originMs int64) Clock {
	wall := originMs < 0
	if wall {
		originMs = start.UnixMilli()
	}
	return Clock{start: start, originMs: originMs, wall: wall}
}

// Rebased is the clock whose origin is at instant at (the sync instant),
// and how many ms it moves a timestamp of c: the new origin is the same
// number (or the wall-clock time of at, when the origin is "now").
func (c Clock) Rebased(at time.Time) (Clock, int64) {
	origin := c.originMs
	if c.wall {
		origin = -1
	}
	n := newClockAt(at, origin)
	return n, n.originMs - (c.originMs + at.Sub(c.start).Milliseconds())
}

// OriginMs is the timestamp of the clock's start instant.
func (c Clock) OriginMs() int64 { return c.originMs }

// NowMs is the current timestamp in milliseconds, as ExactMs makes it.
func (c Clock) NowMs() int64 { return c.MsAt(time.Now()) }

// MsAt is the timestamp of instant t in milliseconds, as ExactMs makes it.
func (c Clock) MsAt(t time.Time) int64 {
	return ExactMs(c.originMs + t.Sub(c.start).Milliseconds())
}

// ExactMs returns the first millisecond at or after ms that survives the
// trip through a file in seconds. OpenMetrics files carry ms/1000 as a
// plain decimal (store.AppendTimestamp: 1704067200.607), and
// VictoriaMetrics and promtool turn it back into milliseconds by parsing
// it as a float64 and truncating seconds*1000 (measured with both:
// store's TestEveryReaderReadsTimestampsExactly). From late 2004 to 2039
// (2^40 to 2^41 ms) that is exact for every millisecond and ExactMs
// changes nothing; with an older origin (SE_TIME_RELATIVE=0, say) some
// values read back as ms-1, and moving such a sample by a millisecond or
// two keeps every timestamp exact in every reader.
func ExactMs(ms int64) int64 {
	for m := ms; m < ms+64; m++ {
		if readsBack(m) {
			return m
		}
	}
	return ms
}

func readsBack(m int64) bool {
	var buf [24]byte
	f, err := strconv.ParseFloat(string(store.AppendTimestamp(buf[:0], m)), 64)
	return err == nil && int64(f*1000) == m
}

// Start is the instant the clock maps to its origin.
func (c Clock) Start() time.Time { return c.start }

// Sampler gathers and stores samples. Safe for concurrent use.
type Sampler struct {
	mu       sync.Mutex
	gatherer prometheus.Gatherer
	store    *store.Store
	clock    Clock
	duration Setter
	warn     io.Writer
	lastTs   int64
	warned   map[string]bool
}

// Setter is a gauge's setter: a prometheus.Gauge, a constmetric.Gauge.
type Setter interface{ Set(float64) }

// New returns a sampler; duration receives how long each gather took and
// must be registered in the gathered registry (a Registry: see there why
// the sampler gathers through one).
func New(g prometheus.Gatherer, st *store.Store, clock Clock, duration Setter, warn io.Writer) *Sampler {
	return &Sampler{gatherer: g, store: st, clock: clock, duration: duration, warn: warn, lastTs: -1 << 62, warned: map[string]bool{}}
}

// Sample takes one sample now. Its timestamp is after the previous one's
// (a sample within 1 ms of the previous one is stamped a millisecond
// after it), so each series' timestamps strictly increase.
func (s *Sampler) Sample() { s.SampleAt(time.Time{}) }

// SampleAt is Sample with the timestamp of instant at (zero: now), for an
// event that happened a moment ago (the command's start): waiting for a
// gather in progress must not move it. The values are gathered now; a
// timestamp not after the previous sample's becomes the next millisecond.
func (s *Sampler) SampleAt(at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sampleAt(at, s.gatherer, true)
}

// PartAt is SampleAt for the metrics of g only (a registry of some of the
// sampler's collectors), which it stores at instant at: an event whose
// other values the previous sample holds (the command's release at an
// N-party start instant, when a full sample would take the CPU that every
// party's command then needs).
func (s *Sampler) PartAt(at time.Time, g prometheus.Gatherer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sampleAt(at, g, false)
}

// sampleAt gathers g and stores the result; timed tells whether the
// gather's duration is recorded (only the full gathers' are).
func (s *Sampler) sampleAt(at time.Time, g prometheus.Gatherer, timed bool) {
	began := time.Now()
	ts := s.clock.MsAt(began)
	if !at.IsZero() {
		ts = s.clock.MsAt(at)
	}
	// Two samples in one millisecond (the command's start right after
	// the first sample, an end right after a tick): the later one takes
	// the next millisecond rather than waiting for it, so that each
	// series' timestamps strictly increase and the run is not delayed.
	if ts <= s.lastTs {
		ts = ExactMs(s.lastTs + 1)
	}
	mfs, err := g.Gather()
	if err != nil {
		// Gather returns what it could; say once what it could not.
		s.warnOnce("gather", fmt.Sprintf("statexec: some metrics could not be collected: %v", err))
	}
	if timed {
		s.duration.Set(time.Since(began).Seconds())
	}
	err = s.store.Append(ts, mfs)
	if err != nil && !errors.Is(err, store.ErrRejected) {
		s.warnOnce("store", fmt.Sprintf("statexec: metrics spool: %v; later samples are lost", err))
		return
	}
	if err != nil {
		// Some metrics were left out, the rest of the tick is stored.
		s.warnOnce(err.Error(), fmt.Sprintf("statexec: %v", err))
	}
	s.lastTs = ts
}

// Between runs f with no sample in progress: a change f makes (the
// command's status, say) is then seen by no sample whose timestamp was
// taken before it.
func (s *Sampler) Between(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// Sync moves the time origin to the instant at (the sync instant of the
// wait* and sync* modes): later samples are timed from at, and those
// already stored move by the same amount, so that they keep their true
// place before the origin. It returns the clock now in use.
func (s *Sampler) Sync(at time.Time) (Clock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clock, delta := s.clock.Rebased(at)
	err := s.store.Shift(delta)
	if errors.Is(err, store.ErrShifted) {
		return s.clock, err
	}
	// Applied, even if the spool could not record it (err): the store
	// reports that write error at the end anyway.
	s.clock = clock
	s.lastTs += delta
	return clock, err
}

func (s *Sampler) warnOnce(key, msg string) {
	if s.warned[key] {
		return
	}
	s.warned[key] = true
	fmt.Fprintln(s.warn, msg)
}

// Run samples every interval until ctx is done.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sample()
		}
	}
}
