//go:build linux

package modes

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/syncctl"
)

// listen binds the sync server of the wait* modes before anything runs,
// so that a port in use is an error up front.
func (r *run) listen() error {
	if r.inv.Mode != config.ModeWaitStart && r.inv.Mode != config.ModeWaitStartAndStop {
		return nil
	}
	r.srv = syncctl.NewServer(syncctl.ServerOptions{
		Listen:    r.cfg.Listen,
		Token:     r.cfg.SyncToken,
		AllowStop: r.inv.Mode == config.ModeWaitStartAndStop,
		Command:   strings.Join(r.inv.Command, " "),
		Start:     r.startCommand,
		Stop:      func() {}, // the run loop watches StopRequested
	})
	return r.srv.Listen()
}

// serveUntilStarted serves /start and waits for the command to start or
// for a signal.
func (r *run) serveUntilStarted() (int, bool) {
	go func() {
		if err := r.srv.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.errorf("sync server: %v", err)
		}
	}()
	r.errorf("waiting for POST /start on %s", r.srv.Addr())
	for {
		select {
		case <-r.srv.Started():
			return 0, true
		case sig := <-r.signals:
			return r.interrupt(sig), false
		case <-r.startFailedC:
			return r.startFailed(r.childErr)
		}
	}
}

// send posts /start or /stop to the server of a sync* mode. A signal
// cancels the retries; if the request got through anyway, the signal is
// put back for the next phase to see.
func (r *run) send(action string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	caught := make(chan os.Signal, 1)
	go func() {
		defer close(caught)
		select {
		case sig := <-r.signals:
			caught <- sig
			cancel()
		case <-done:
		}
	}()
	err := syncctl.Send(ctx, r.inv.URL, action, syncctl.ClientOptions{Token: r.cfg.SyncToken, Timeout: r.cfg.SyncTimeout})
	close(done)
	if sig, ok := <-caught; ok {
		if err == nil {
			select {
			case r.signals <- sig: // for the next phase
			default: // full: other signals are waiting anyway
			}
		} else {
			r.interrupted = sig
		}
	}
	return err
}

// afterCommand sends /stop in syncStartAndStop; a failure to do so makes
// the run fail.
func (r *run) afterCommand(code int) int {
	if r.inv.Mode != config.ModeSyncStartAndStop {
		return code
	}
	if err := r.send("stop"); err != nil {
		r.errorf("%v", err)
		return failed(code)
	}
	return code
}
