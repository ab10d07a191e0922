//go:build linux

package modes

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/syncctl"
)

// minSyncOrigin is the smallest time origin (SE_TIME_RELATIVE) of the
// wait* and sync* modes. Their origin is the sync instant, and the samples
// taken while waiting for it lie before it: an origin of at least a day
// leaves a day of waiting before a timestamp would fall below 0. A server
// waits for /start at most as long as its origin allows (see
// serveUntilStarted); a client waits at most SE_SYNC_TIMEOUT.
const minSyncOrigin = 24 * time.Hour

// synced reports whether mode shares a time origin with another statexec.
func synced(mode string) bool {
	switch mode {
	case config.ModeWaitStart, config.ModeWaitStartAndStop, config.ModeSyncStart, config.ModeSyncStartAndStop:
		return true
	}
	return false
}

// checkOrigin refuses, before anything runs, an origin so small that the
// samples taken before the sync instant could get timestamps below 0.
func (r *run) checkOrigin() error {
	if !synced(r.inv.Mode) || r.cfg.TimeRelativeMs < 0 {
		return nil
	}
	least := minSyncOrigin
	if r.inv.Mode == config.ModeSyncStart || r.inv.Mode == config.ModeSyncStartAndStop {
		// The client gives up after SE_SYNC_TIMEOUT and one last attempt.
		least = max(least, r.cfg.SyncTimeout+syncctl.DefaultAttemptTimeout+time.Minute)
	}
	if r.cfg.TimeRelativeMs < least.Milliseconds() {
		return fmt.Errorf("SE_TIME_RELATIVE=%d is too small for %s: its time origin is the sync instant, and the samples taken while waiting for it lie before it, so the origin must be at least %d (%s after the epoch), e.g. 1704067200000",
			r.cfg.TimeRelativeMs, r.inv.Mode, least.Milliseconds(), least)
	}
	return nil
}

// syncAt makes at, the sync instant, the origin of the time axis.
func (r *run) syncAt(at time.Time) {
	r.syncedAt = at
	if _, err := r.smp.Sync(at); err != nil {
		r.errorf("time origin: %v", err)
	}
	r.releaseRemoteWrite()
}

// syncPhase waits for the sync instant: /start received (wait* modes) or
// answered (sync* modes). ok is false when the run ends there, with the
// exit code to use.
func (r *run) syncPhase() (int, bool) {
	if r.srv != nil {
		return r.serveUntilStarted()
	}
	at, err := r.send("start")
	if err != nil {
		r.errorf("%v; the command is not run", err)
		if r.interrupted != nil {
			return signalCode(r.interrupted), false
		}
		return 1, false
	}
	r.syncAt(at)
	return 0, true
}

// listen binds the sync server of the wait* modes before anything runs,
// so that a port in use is an error up front.
func (r *run) listen() error {
	if r.inv.Mode != config.ModeWaitStart && r.inv.Mode != config.ModeWaitStartAndStop {
		return nil
	}
	r.stopWatch = r.watchSignals()
	r.partyStart = r.cfg.SyncParties > 1
	r.srv = syncctl.NewServer(syncctl.ServerOptions{
		Listen:    r.cfg.Listen,
		Token:     r.cfg.SyncToken,
		AllowStop: r.inv.Mode == config.ModeWaitStartAndStop,
		Command:   strings.Join(r.inv.Command, " "),
		StartAt:   r.onStart,
		Stop:      func() {}, // the run loop watches StopRequested
		// N-party sync: the barrier waits SE_SYNC_TIMEOUT from the
		// first client on.
		Parties:      r.cfg.SyncParties,
		StopLast:     r.cfg.SyncStopLast,
		PartyTimeout: r.cfg.SyncTimeout,
	})
	return r.srv.Listen()
}

// settleSignal is a real-time signal statexec sends its own thread to
// learn whether a signal arrived before a /start (see signalArrived).
const settleSignal = syscall.Signal(40)

// watchSignals makes signalArrived work; stop releases it.
func (r *run) watchSignals() (stop func()) {
	r.arrived = make(chan os.Signal, 1)
	r.settled = make(chan os.Signal, 1)
	signal.Notify(r.arrived, forwarded...)
	signal.Notify(r.settled, settleSignal)
	return func() { signal.Stop(r.arrived); signal.Stop(r.settled) }
}

// signalArrived reports whether one of the forwarded signals reached
// statexec before now. The Go runtime takes a signal at once but hands
// it to the channels a little later, from another goroutine, so a
// /start right after a signal could otherwise beat it. settleSignal is
// sent to the whole process, not to this thread: the kernel dequeues a
// thread's own signals before the process's, so a thread-directed one
// could overtake a SIGINT still pending for the process, whereas among
// the process's pending signals the lowest number goes first, and the
// runtime hands out the signals it took lowest number first too. Once
// settleSignal (above every forwarded one) is out, every earlier signal
// is in r.arrived. Two rounds leave a thread that took a SIGINT at the
// same moment as the first settleSignal the time to hand it over.
func (r *run) signalArrived() bool {
	for range 2 {
		if len(r.arrived) > 0 {
			return true
		}
		r.settle()
	}
	return len(r.arrived) > 0
}

// settle sends settleSignal to statexec and waits (at most 1 s) until the
// runtime has handed it over.
func (r *run) settle() {
	select {
	case <-r.settled:
	default:
	}
	if err := unix.Kill(unix.Getpid(), settleSignal); err != nil {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-r.settled:
	case <-t.C:
	}
}

// onStart is the sync server's Start callback: /start came, at is the
// sync instant; without a wait before the command, the command starts
// now (so that a failure to start answers 500). With N parties, at is
// the common start instant, a few milliseconds ahead: phases sleeps until
// then (as the clients do) and starts the command.
func (r *run) onStart(at time.Time) error {
	// A signal that came first ends the run: refuse rather than start.
	if r.signalArrived() {
		return syncctl.ErrEnding
	}
	r.syncAt(at)
	if r.cfg.WaitBefore > 0 || r.cfg.SyncParties > 1 {
		return nil
	}
	return r.startCommand()
}

// serveUntilStarted serves /start and waits for it, for a signal, or for
// the longest wait the time origin allows.
func (r *run) serveUntilStarted() (int, bool) {
	go func() {
		if err := r.srv.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.errorf("sync server: %v", err)
		}
	}()
	if r.cfg.SyncParties > 1 {
		r.errorf("waiting for POST /start from %d parties on %s", r.cfg.SyncParties, r.srv.Addr())
	} else {
		r.errorf("waiting for POST /start on %s", r.srv.Addr())
	}
	var tooLate <-chan time.Time
	// Waiting longer than the origin would put the first samples below 0
	// (origins past 2262 overflow a Duration: no limit then).
	if r.cfg.TimeRelativeMs >= 0 && r.cfg.TimeRelativeMs < math.MaxInt64/int64(time.Millisecond) {
		limit := time.Until(r.clockStart.Add(time.Duration(r.cfg.TimeRelativeMs)*time.Millisecond - time.Second))
		t := time.NewTimer(max(limit, 0))
		defer t.Stop()
		tooLate = t.C
	}
	for {
		select {
		case <-r.srv.Started():
			return 0, true
		case sig := <-r.signals:
			if r.srv.Refuse() {
				// /start came first: the command's phase sees the signal.
				select {
				case r.signals <- sig:
				default: // full: other signals are waiting anyway
				}
				return 0, true
			}
			return r.interrupt(sig), false
		case <-tooLate:
			if r.srv.Refuse() {
				return 0, true
			}
			r.errorf("no POST /start after %s: earlier samples would get timestamps below 0 with SE_TIME_RELATIVE=%d; the command is not run",
				time.Since(r.clockStart).Round(time.Second), r.cfg.TimeRelativeMs)
			return ExitUsage, false
		case <-r.startFailedC:
			return r.startFailed(r.childErr)
		case <-r.srv.Abandoned():
			r.errorf("%s; the command is not run", r.srv.Status().Error)
			return 1, false
		}
	}
}

// send posts /start or /stop to the server of a sync* mode and returns
// the sync instant of a /start. A signal cancels the retries; if the
// request got through anyway, the signal is put back for the next phase
// to see.
func (r *run) send(action string) (time.Time, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	caught := make(chan os.Signal, 1)
	go func() {
		defer close(caught)
		select {
		case sig := <-r.signals:
			caught <- sig
			if action == "stop" {
				// The command has run: a /stop in flight (it takes
				// milliseconds) is let finish, so that the server is
				// stopped and the signal then ends the wait after the
				// command; a server that does not answer is given up.
				select {
				case <-done:
				case <-time.After(stopGraceOnSignal):
				}
			}
			cancel()
		case <-done:
		}
	}()
	opts := syncctl.ClientOptions{Token: r.cfg.SyncToken, Timeout: r.cfg.SyncTimeout}
	var at time.Time
	var err error
	if action == "start" {
		var info syncctl.StartInfo
		info, err = syncctl.SendStartInfo(ctx, r.inv.URL, opts)
		at, r.partyStart, r.partyStopFirst = info.At, info.Party, info.StopFirst
	} else {
		if r.partyStopFirst {
			// The first party's /stop ends the server: it may be gone.
			opts.Timeout = partyStopTimeout
		}
		err = syncctl.Send(ctx, r.inv.URL, action, opts)
	}
	close(done)
	if sig, ok := <-caught; ok {
		if err == nil || action == "stop" {
			// The signal is for the next phase (after /stop: the wait
			// after the command, which it ends).
			select {
			case r.signals <- sig: // for the next phase
			default: // full: other signals are waiting anyway
			}
		} else {
			r.interrupted = sig
		}
	}
	return at, err
}

// afterCommand sends /stop in syncStartAndStop; a failure to do so makes
// the run fail.
func (r *run) afterCommand(code int) int {
	if r.inv.Mode != config.ModeSyncStartAndStop {
		return code
	}
	if _, err := r.send("stop"); err != nil {
		var se *syncctl.StatusError
		if r.partyStopFirst && r.interrupted == nil && !errors.As(err, &se) {
			// Not an answer but no server: with policy first another
			// party's /stop ended it, as it should.
			r.errorf("POST /stop: the server has ended already (SE_SYNC_STOP=first: another party stopped it)")
			return code
		}
		r.errorf("%v", err)
		return failed(code)
	}
	return code
}

// stopGraceOnSignal is how long a /stop in flight may finish after a
// signal came.
const stopGraceOnSignal = time.Second

// partyStopTimeout bounds a /stop to an N-party server whose policy is
// first: it is gone if another party stopped it before.
const partyStopTimeout = 2 * time.Second
