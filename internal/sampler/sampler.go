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

// Clock maps the monotonic time since the start of the run onto the
// time axis of the file: timestamp = origin + (now - start). Using the
// monotonic clock keeps timestamps increasing when the wall clock jumps.
type Clock struct {
	start    time.Time
	originMs int64
}

// NewClock starts a clock now. originMs < 0 means the wall-clock time now.
func NewClock(originMs int64) Clock {
	start := time.Now()
	if originMs < 0 {
		originMs = start.UnixMilli()
	}
	return Clock{start: start, originMs: originMs}
}

// NowMs is the current timestamp in milliseconds, as ExactMs makes it.
func (c Clock) NowMs() int64 { return ExactMs(c.originMs + time.Since(c.start).Milliseconds()) }

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

// Start is the monotonic start of the run.
func (c Clock) Start() time.Time { return c.start }

// Sampler gathers and stores samples. Safe for concurrent use.
type Sampler struct {
	mu       sync.Mutex
	gatherer prometheus.Gatherer
	store    *store.Store
	clock    Clock
	duration prometheus.Gauge
	warn     io.Writer
	lastTs   int64
	warned   map[string]bool
}

// New returns a sampler; duration receives how long each gather took and
// must be registered in the gathered registry.
func New(g prometheus.Gatherer, st *store.Store, clock Clock, duration prometheus.Gauge, warn io.Writer) *Sampler {
	return &Sampler{gatherer: g, store: st, clock: clock, duration: duration, warn: warn, lastTs: -1 << 62, warned: map[string]bool{}}
}

// Sample takes one sample now. Its timestamp is after the previous one's
// (samples closer than 1 ms wait for the next millisecond), so each
// series' timestamps strictly increase.
func (s *Sampler) Sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.clock.NowMs()
	for i := 0; ts <= s.lastTs && i < 5; i++ {
		time.Sleep(time.Millisecond)
		ts = s.clock.NowMs()
	}
	if ts <= s.lastTs {
		return
	}
	began := time.Now()
	mfs, err := s.gatherer.Gather()
	if err != nil {
		// Gather returns what it could; say once what it could not.
		s.warnOnce("gather", fmt.Sprintf("statexec: some metrics could not be collected: %v", err))
	}
	s.duration.Set(time.Since(began).Seconds())
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
