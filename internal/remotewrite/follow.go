package remotewrite

import (
	"context"
	"math"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/statexec/statexec/internal/store"
)

// minSendEvery spaces the reads and requests of a run sampled faster
// than this: a request per 10 ms tick would cost more than the samples.
const minSendEvery = time.Second

// Follower sends a run's samples while it runs. It reads the spool the
// store has written (never the sampler's data) each Interval, but at
// most once a second, and sends what it read in requests of at most
// maxBatch values, so that neither sampling nor the command waits on the
// network: a slow or absent server only makes the backlog in the spool
// grow.
type Follower struct {
	o      Options
	tail   *store.Tail
	snd    *sender
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
	// released is closed by Release (Options.Hold).
	released    chan struct{}
	releaseOnce sync.Once
	err         error // from reading the spool

	// parts[si] are the remote series of spool series si: one, or for a
	// histogram count, sum and the buckets; ids[si] is the id of the
	// first in a batch.
	parts [][][]label
	ids   []int
	next  int
}

// Follow starts sending the samples of the spool at path.
func Follow(path string, o Options) (*Follower, error) {
	snd, err := newSender(o)
	if err != nil {
		return nil, err
	}
	tail, err := store.OpenTail(path)
	if err != nil {
		return nil, err
	}
	f := &Follower{o: o, tail: tail, snd: snd, stop: make(chan struct{}), done: make(chan struct{}),
		released: make(chan struct{})}
	if !o.Hold {
		close(f.released)
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	go f.loop()
	return f, nil
}

// Release ends the hold of Options.Hold: the time axis is final (the
// shift of the sync instant is in the spool). Safe from any goroutine,
// and more than once.
func (f *Follower) Release() {
	f.releaseOnce.Do(func() { close(f.released) })
}

func (f *Follower) loop() {
	defer close(f.done)
	b := newBatch()
	if f.o.Hold {
		select {
		case <-f.released:
		case <-f.stop: // no sync instant: the run ended before it
		}
		if _, err := f.tail.FindShift(); err != nil {
			f.err = err
			f.failRest(b)
			return
		}
	}
	tick := time.NewTicker(max(f.o.Interval, minSendEvery))
	defer tick.Stop()
	for {
		stopping := false
		select {
		case <-f.stop:
			stopping = true
		case <-tick.C:
		}
		for {
			n, err := f.read(b)
			if err != nil {
				f.err = err
				f.failRest(b)
				return
			}
			if b.samples >= maxBatch || n == 0 && b.samples > 0 {
				if f.snd.send(f.ctx, b) != nil {
					// The final flush's time is up: the rest fails.
					f.failRest(b)
					return
				}
				continue
			}
			if n == 0 {
				break
			}
		}
		if stopping {
			return
		}
	}
}

// read adds what the spool holds (up to a batch) to b.
func (f *Follower) read(b *batch) (int, error) {
	return f.tail.Next(maxBatch-b.samples, func(si int, tsMs int64, vals []float64) {
		for si >= len(f.parts) {
			f.parts = append(f.parts, nil)
			f.ids = append(f.ids, -1)
		}
		if f.ids[si] < 0 {
			f.parts[si] = expand(f.tail.Series(si), f.o.OpenMetrics)
			f.ids[si] = f.next
			f.next += len(f.parts[si])
		}
		parts := f.parts[si]
		for i, v := range vals {
			if i >= len(parts) {
				break
			}
			b.add(f.ids[si]+i, parts[i], tsMs, v)
		}
		// The +Inf bucket the file adds when the histogram has none.
		if len(parts) == len(vals)+1 {
			b.add(f.ids[si]+len(vals), parts[len(vals)], tsMs, vals[0])
		}
	})
}

// failRest counts the batch and what is left in the spool as failed.
func (f *Follower) failRest(b *batch) {
	f.snd.failed += b.samples
	b.reset()
	for f.err == nil {
		n, err := f.read(b)
		f.snd.failed += b.samples
		b.reset()
		if err != nil {
			f.err = err
		}
		if n == 0 {
			return
		}
	}
}

// Finish sends what is left, waiting at most Options.Timeout, prints the
// final line (samples sent / failed) and returns an error when samples
// were not sent. Call it after the run's last sample was stored.
func (f *Follower) Finish() error {
	f.once.Do(func() {
		timer := time.AfterFunc(f.o.Timeout, f.cancel)
		close(f.stop)
		<-f.done
		timer.Stop()
		f.cancel()
		f.tail.Close()
	})
	if f.err != nil {
		f.snd.warnf("stopped following the spool: %v", f.err)
	}
	err := f.snd.summary()
	if err == nil && f.err != nil {
		err = f.err
	}
	return err
}

// expand names the remote series of one spool series, as the metrics
// file writes them.
func expand(si store.SeriesInfo, openMetrics bool) [][]label {
	base := make([]label, 0, len(si.Labels)+2)
	for _, l := range si.Labels {
		base = append(base, label{l.GetName(), l.GetValue()})
	}
	with := func(name string, extra ...label) []label {
		l := append(append(append([]label(nil), base...), extra...), label{"__name__", name})
		sortLabels(l)
		return l
	}
	switch si.Type {
	case dto.MetricType_HISTOGRAM:
		out := [][]label{with(si.Family + "_count"), with(si.Family + "_sum")}
		for _, ub := range si.Bounds {
			out = append(out, with(si.Family+"_bucket", label{"le", formatLe(ub, openMetrics)}))
		}
		if len(si.Bounds) == 0 || !math.IsInf(si.Bounds[len(si.Bounds)-1], +1) {
			out = append(out, with(si.Family+"_bucket", label{"le", "+Inf"}))
		}
		return out
	case dto.MetricType_COUNTER:
		if openMetrics && !strings.HasSuffix(si.Family, "_total") {
			return [][]label{with(si.Family + "_total")}
		}
	}
	return [][]label{with(si.Family)}
}
