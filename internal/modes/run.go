//go:build linux

// Package modes runs statexec's modes: the life cycle of one run (metrics
// before, during and after the command), the command itself, and the HTTP
// synchronisation of the wait* and sync* modes.
package modes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/constmetric"
	"github.com/statexec/statexec/internal/host"
	"github.com/statexec/statexec/internal/probe"
	"github.com/statexec/statexec/internal/remotewrite"
	"github.com/statexec/statexec/internal/report"
	"github.com/statexec/statexec/internal/sampler"
	"github.com/statexec/statexec/internal/store"
	"github.com/statexec/statexec/internal/syncctl"
)

// Options are what Run needs from the process.
type Options struct {
	Stdin          *os.File
	Stdout, Stderr *os.File
}

// Command status values of statexec_command_status.
const (
	statusPending = 0
	statusRunning = 1
	statusDone    = 2
)

// forwarded are the signals statexec passes on to the command.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// run is one invocation's state.
type run struct {
	inv     *config.Invocation
	cfg     config.Config
	o       Options
	stderr  io.Writer
	path    string
	signals chan os.Signal

	st     *store.Store
	probe  *probe.Session
	smp    *sampler.Sampler
	status *constmetric.Gauge // set in r.smp.Between only
	// statusOnly gathers the status alone (commandReleased).
	statusOnly *sampler.Registry
	stopLoop   context.CancelFunc
	loopDone   chan struct{}
	srv        *syncctl.Server
	rw         *remotewrite.Follower // remote write, when configured

	child    *child
	childErr error // the command could not start
	// startFailedC is closed when the command could not start (sync server).
	startFailedC    chan struct{}
	startFailedOnce sync.Once
	interrupted     os.Signal // a signal ended the run before the command
	points          int       // samples written
	// syncedAt is the sync instant of the wait* and sync* modes (zero
	// before it and in exec mode): the origin of the time axis.
	syncedAt   time.Time
	clockStart time.Time // when the sampler's clock started
	// arrived and settled tell the sync server whether a signal came
	// before /start (see signalArrived); stopWatch releases them.
	arrived, settled chan os.Signal
	stopWatch        func()
	// partyStart: the start instant is an N-party one (a server with
	// SE_SYNC_PARTIES > 1, or a client of one).
	partyStart bool
	// partyLate is how long after the planned instant the command ran;
	// partyHow says whether it had been held there (hooks.runAt).
	partyLate time.Duration
	partyHow  string
	// partyStopFirst: this sync* client started with an N-party server
	// whose stop policy is first (see afterCommand).
	partyStopFirst bool
	// probeC delivers the probe session, which starts (cgroup, BPF
	// load) while setup runs; nil once received.
	probeC chan probeStart
}

type probeStart struct {
	s      *probe.Session
	err    error
	notice []byte // the session's notice lines, printed once setup got there
}

// startProbe starts the probe session in the background: loading BPF is
// most of statexec's start-up, and needs nothing from setup.
func (r *run) startProbe() {
	r.probeC = make(chan probeStart, 1)
	mode, labels, runq := probe.Mode(r.cfg.Probes), r.constLabels(), r.cfg.RunqueueHistogram
	go func() {
		var notice bytes.Buffer
		s, err := probe.Start(probe.Options{Mode: mode, Notice: &notice, ConstLabels: labels, RunqueueHistogram: runq})
		r.probeC <- probeStart{s, err, notice.Bytes()}
	}()
}

// waitProbe returns the session started by startProbe.
func (r *run) waitProbe() probeStart {
	p := <-r.probeC
	r.probeC = nil
	return p
}

// Run runs the invocation and returns statexec's exit code.
func Run(inv *config.Invocation, o Options) int {
	r := &run{inv: inv, cfg: inv.Config, o: o, stderr: o.Stderr, startFailedC: make(chan struct{})}
	r.startProbe()
	// Orphaned descendants of the command are reparented to statexec,
	// which reaps them (PID 1 may not). Without it the run still works,
	// but orphans go to PID 1 and may stay zombies: say so.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		r.errorf("become child subreaper: %v; orphaned descendants of the command are not reaped by statexec", err)
	}
	// Catch the signals first, so that none ends statexec before the
	// file is written.
	r.signals = make(chan os.Signal, 8)
	signal.Notify(r.signals, forwarded...)
	defer signal.Stop(r.signals)

	code, err := r.setup()
	if r.stopWatch != nil {
		defer r.stopWatch()
	}
	if err != nil {
		r.errorf("%v", err)
		r.cleanup()
		return code
	}
	return r.execute()
}

func (r *run) errorf(format string, a ...any) {
	fmt.Fprintf(r.stderr, "statexec: "+format+"\n", a...)
}

// setup validates everything that can fail before the command runs; on
// error, nothing was run and no metrics file was touched.
func (r *run) setup() (int, error) {
	var err error
	if r.path, err = resolve(r.inv.Command[0]); err != nil {
		var ce *CommandError
		errors.As(err, &ce)
		return ce.Code, err
	}
	if err := config.CheckMetricsFile(r.cfg.MetricsFile); err != nil {
		return ExitUsage, err
	}
	if r.cfg.Report != "" {
		if err := report.CheckOutput(r.cfg.Report); err != nil {
			return ExitUsage, err
		}
	}
	if err := r.checkOrigin(); err != nil {
		return ExitUsage, err
	}
	spool := r.cfg.MetricsFile + ".spool"
	if err := r.recoverStale(spool); err != nil {
		return ExitUsage, err
	}
	if r.st, err = store.Create(spool); err != nil {
		return ExitUsage, err
	}
	// The const labels are in every descriptor, not added by a wrapping
	// registerer: that builds a descriptor per metric at every gather.
	// Every collector is a sampler.Emitter: the sampler collects it in
	// its own goroutine.
	reg := sampler.NewRegistry()
	labels := r.constLabels()
	r.status = constmetric.NewGauge(prometheus.NewDesc("statexec_command_status",
		"State of the command: 0 pending, 1 running, 2 done.", nil, labels))
	duration := constmetric.NewGauge(prometheus.NewDesc("statexec_collection_duration_seconds",
		"Time the collection of this sample's other metrics took, in seconds.", nil, labels))
	reg.MustRegister(r.status, duration)
	r.statusOnly = sampler.NewRegistry()
	r.statusOnly.MustRegister(r.status)
	for _, c := range host.Collectors(context.Background(), labels) {
		reg.MustRegister(c)
	}
	ps := r.waitProbe()
	r.stderr.Write(ps.notice)
	if ps.err != nil {
		return ExitUsage, fmt.Errorf("probes: %w", ps.err)
	}
	r.probe = ps.s
	reg.MustRegister(r.probe.Collector())
	if err := r.listen(); err != nil {
		return ExitUsage, err
	}
	clock := sampler.NewClock(r.cfg.TimeRelativeMs)
	r.clockStart = clock.Start()
	r.hintRetention()
	r.smp = sampler.New(reg, r.st, clock, duration, r.stderr)
	if err := r.startRemoteWrite(); err != nil {
		return ExitUsage, err
	}
	return 0, nil
}

func (r *run) constLabels() prometheus.Labels {
	l := prometheus.Labels{"instance": r.cfg.Instance, "job": "statexec", "role": role(r.inv.Mode)}
	for _, x := range r.cfg.Labels {
		l[x.Key] = x.Value
	}
	return l
}

func role(mode string) string {
	switch mode {
	case config.ModeWaitStart, config.ModeWaitStartAndStop:
		return "server"
	case config.ModeSyncStart, config.ModeSyncStartAndStop:
		return "client"
	}
	return "standalone"
}

// recoverStale turns the spool of an interrupted run into a metrics file
// next to ours before the spool is reused.
func (r *run) recoverStale(spool string) error {
	stale, err := store.Stale(spool)
	if err != nil || !stale {
		return err
	}
	out := RecoveredName(r.cfg.MetricsFile, spool)
	n, err := Recover(spool, out, formatOf(r.cfg.Format))
	if err != nil {
		r.errorf("could not recover the spool of an interrupted run (%v); it is overwritten", err)
		return nil
	}
	r.errorf("recovered %d samples of an interrupted run into %s", n, out)
	return nil
}

// hintRetention warns when the time origin is so old that a default
// VictoriaMetrics would drop the samples without saying so.
func (r *run) hintRetention() {
	if r.cfg.TimeRelativeMs < 0 {
		return
	}
	age := time.Since(time.UnixMilli(r.cfg.TimeRelativeMs))
	if age > 30*24*time.Hour {
		r.errorf("hint: SE_TIME_RELATIVE is %d days in the past; VictoriaMetrics silently drops samples older than its -retentionPeriod (default 1 month), so import into one started with a longer -retentionPeriod", int(age.Hours()/24))
	}
}

func formatOf(f string) store.Format {
	if f == config.FormatPrometheus {
		return store.Prometheus
	}
	return store.OpenMetrics
}

// execute goes through the phases: before, start, running, after, write.
func (r *run) execute() int {
	r.smp.Sample()
	ctx, cancel := context.WithCancel(context.Background())
	r.stopLoop = cancel
	r.loopDone = make(chan struct{})
	go func() {
		defer close(r.loopDone)
		r.smp.Run(ctx, r.cfg.Interval)
	}()
	code := r.phases()
	return r.finish(code)
}

// partyHoldLead is how long before an N-party start instant the command is
// forked and held: more than a fork and exec take on a loaded machine
// (up to 20 ms measured), little time for the held process to sit in the
// command's cgroup.
const partyHoldLead = 100 * time.Millisecond

// partySampleLead is how long before an N-party start instant the start
// sample is taken: more than five parties' samples take on 2 vCPUs.
const partySampleLead = 60 * time.Millisecond

// phases runs the command and returns the exit code so far.
func (r *run) phases() int {
	if synced(r.inv.Mode) {
		if code, ok := r.syncPhase(); !ok {
			return code
		}
	}
	// In the wait* and sync* modes the wait before the command follows
	// the sync, on both sides. A server with no wait has started the
	// command already, when /start came.
	if r.child == nil {
		at := time.Now().Add(r.cfg.WaitBefore)
		if !r.syncedAt.IsZero() {
			// Timed from the sync instant, as on the other side: the
			// time spent answering or reading /start is part of it.
			at = r.syncedAt.Add(r.cfg.WaitBefore)
		}
		wait := time.Until(at)
		var held *child
		if r.partyStart && wait > 0 {
			// N-party: the start instant is shared by every party: fork
			// and exec shortly before it, and at the instant only let
			// the command run. (Not earlier: the held process is in the
			// command's cgroup already.)
			if sig := r.sleep(wait - partyHoldLead); sig != nil {
				return r.interrupt(sig)
			}
			c, err := r.forkCommand(at)
			if err != nil {
				code, _ := r.startFailed(err)
				if r.srv != nil {
					r.srv.Finished(code)
				}
				return code
			}
			held = c
			// The start sample, taken now (the held command has not
			// run: its counters are those of the instant): taken at
			// the instant, every party's would compete with the
			// commands for the CPU (2-3 ms each, cold).
			if sig := r.sleep(time.Until(at.Add(-partySampleLead))); sig != nil {
				return r.interruptHeld(held, sig)
			}
			r.smp.Sample()
		}
		if held != nil && held.gated {
			// Woken by the release, not by a timer of its own at the
			// instant: one thread fewer then wants a CPU.
			select {
			case <-held.released:
			case sig := <-r.signals:
				return r.interruptHeld(held, sig)
			}
		} else if sig := r.sleep(time.Until(at)); sig != nil {
			if held != nil {
				return r.interruptHeld(held, sig)
			}
			return r.interrupt(sig)
		}
		if held != nil {
			held.waitRelease()
			r.partyLate = held.started.Sub(at)
			r.partyHow = "held after exec until then"
			if !held.gated {
				r.partyHow = "not held: ptrace not allowed; forked then"
			}
			r.commandReleased(held)
		} else if err := r.startCommand(); err != nil {
			code, _ := r.startFailed(err)
			if r.srv != nil {
				r.srv.Finished(code)
			}
			return code
		} else {
			r.partyLate, r.partyHow = r.child.started.Sub(at), "the instant had passed when the answer came; forked then"
		}
	}
	code := r.wait()
	// Under the sampler's lock: a tick whose timestamp was taken before
	// the command ended must not read "done".
	r.smp.Between(func() { r.status.Set(statusDone) })
	r.smp.Sample()
	r.probe.CommandEnded()
	if r.srv != nil {
		r.srv.Finished(code)
	}
	code = r.afterCommand(code)
	// A signal in the wait after the command only cuts the wait short.
	r.sleep(r.cfg.WaitAfter)
	return code
}

// interruptHeld kills the held command, which never ran, for sig.
func (r *run) interruptHeld(held *child, sig os.Signal) int {
	held.cancelGate()
	<-held.done
	return r.interrupt(sig)
}

func (r *run) interrupt(sig os.Signal) int {
	r.interrupted = sig
	r.errorf("%v received before the command started; it is not run", sig)
	return signalCode(sig)
}

// signalCode is the shell's exit code for death by sig.
func signalCode(sig os.Signal) int { return 128 + int(sig.(syscall.Signal)) }

// sleep waits d, unless a signal comes first, which it returns.
func (r *run) sleep(d time.Duration) os.Signal {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case sig := <-r.signals:
		return sig
	}
}

// startCommand starts the command once. It is the Start callback of the
// sync server, too.
func (r *run) startCommand() error {
	c, err := r.forkCommand(time.Time{})
	if err != nil {
		return err
	}
	r.commandStarted(c)
	return nil
}

// forkCommand starts the command's process; with a runAt, it is held
// before its first instruction until then (see hooks.runAt).
func (r *run) forkCommand(runAt time.Time) (*child, error) {
	c, err := startChild(r.path, r.inv.Command, [3]*os.File{r.o.Stdin, r.o.Stdout, r.o.Stderr},
		hooks{prepare: r.probe.PrepareCommand, exiting: r.probe.ProcessExiting, runAt: runAt})
	if err != nil {
		r.childErr = err
		r.startFailedOnce.Do(func() { close(r.startFailedC) })
		return nil, err
	}
	return c, nil
}

// commandStarted records that the command runs.
func (r *run) commandStarted(c *child) {
	r.child = c
	// A tick that took its timestamp before the release must not read
	// "running" (it would put the start before the origin).
	r.smp.Between(func() { r.status.Set(statusRunning) })
	r.probe.CommandStarted(c.pid)
	r.smp.SampleAt(c.started)
}

// commandReleased records that the command held for an N-party start
// instant runs: the sample just before the instant holds every other
// value, this one only the status, so that the commands do not wait for
// a CPU behind their statexecs' samples.
func (r *run) commandReleased(c *child) {
	r.child = c
	r.smp.Between(func() { r.status.Set(statusRunning) })
	r.probe.CommandStarted(c.pid)
	r.smp.PartAt(c.started, r.statusOnly)
}

func (r *run) startFailed(err error) (int, bool) {
	r.errorf("%v", err)
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.Code, false
	}
	return ExitNotExecutable, false
}

// wait waits for the command, forwarding signals and honouring /stop,
// and returns its exit code.
func (r *run) wait() int {
	c := r.child
	var stopped <-chan struct{}
	if r.srv != nil {
		stopped = r.srv.StopRequested()
	}
	stopping := false
	for {
		select {
		case <-c.done:
			if c.foreground {
				if err := takeTerminalBack(r.o.Stdin); err != nil {
					r.errorf("%v", err)
				}
			}
			code := c.exitCode()
			if stopping {
				// Stopped on request: a success, whatever the signal did.
				return 0
			}
			return code
		case sig := <-r.signals:
			c.signal(sig.(syscall.Signal))
		case <-stopped:
			stopped = nil
			stopping = true
			go r.escalate(c)
		}
	}
}

// escalate stops the command: SIGINT, then SIGTERM and SIGKILL after the
// grace period each.
func (r *run) escalate(c *child) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
		c.signal(sig)
		select {
		case <-c.done:
			return
		case <-time.After(r.cfg.StopGrace):
		}
	}
}

// finish stops sampling, takes the last sample, writes the file and
// cleans up. code is the exit code so far.
func (r *run) finish(code int) int {
	r.stopLoop()
	<-r.loopDone
	r.smp.Sample()
	sampleErr := r.st.Err()
	if r.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r.srv.Shutdown(ctx)
		cancel()
	}
	// The probes are done (the last sample is taken): detach BPF and
	// remove the cgroup before the file is written, so that programs on
	// host-wide hooks do not run during the export. It also kills what
	// is left of the command's tree.
	summary := r.probe.Summary()
	if err := r.probe.Close(); err != nil {
		r.errorf("%v", err)
	}
	r.probe = nil
	if r.child != nil {
		reapRemaining(200 * time.Millisecond)
	}
	// Ignore further signals while the file is written: it must be
	// complete. (SIGKILL still ends statexec; the spool then remains.)
	r.points = r.st.Points()
	writeErr := r.st.WriteFile(r.cfg.MetricsFile, formatOf(r.cfg.Format))
	// After the file is written and the command's leftovers are gone:
	// the flush may wait.
	pushErr := r.finishRemoteWrite()
	if writeErr != nil {
		r.st.Close()
		r.errorf("write metrics file %s: %v; the samples are kept in %s (turn it into a file with: statexec recover %s)",
			r.cfg.MetricsFile, writeErr, r.st.Path(), r.st.Path())
		return failed(code)
	}
	r.st.Remove()
	r.st = nil
	if r.cfg.Summary {
		r.printSummary(code, summary)
	}
	if r.cfg.Report != "" {
		if err := writeReport(r.cfg, r.inv.Command, r.child != nil, code); err != nil {
			r.errorf("report: %v", err)
			code = failed(code)
		}
	}
	if pushErr != nil {
		code = failed(code)
	}
	if sampleErr != nil {
		r.errorf("some samples were lost: %v", sampleErr)
		return failed(code)
	}
	return code
}

// failed turns a success into a failure, keeping a failure's own code.
func failed(code int) int {
	if code == 0 {
		return 1
	}
	return code
}

// cleanup releases what setup acquired when setup failed.
func (r *run) cleanup() {
	if r.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r.srv.Shutdown(ctx)
		cancel()
	}
	if r.probeC != nil {
		// Setup failed before it needed the probes: nothing of them
		// is shown, and what they made is undone.
		if ps := r.waitProbe(); ps.s != nil {
			r.probe = ps.s
		}
	}
	if r.probe != nil {
		if err := r.probe.Close(); err != nil {
			r.errorf("%v", err)
		}
	}
	if r.st != nil {
		r.st.Remove()
	}
}

// RecoveredName is where the spool of an interrupted run is recovered to.
func RecoveredName(metricsFile, spool string) string {
	stamp := time.Now()
	if fi, err := os.Stat(spool); err == nil {
		stamp = fi.ModTime()
	}
	return filepath.Join(filepath.Dir(metricsFile),
		filepath.Base(metricsFile)+".recovered-"+stamp.UTC().Format("20060102T150405"))
}

// Recover turns a spool into a metrics file and removes the spool; it
// returns the number of samples recovered.
func Recover(spool, out string, format store.Format) (int, error) {
	if stale, err := store.Stale(spool); err != nil {
		return 0, err
	} else if !stale {
		return 0, fmt.Errorf("%s: %w", spool, os.ErrNotExist)
	}
	st, rec, err := store.Open(spool)
	if err != nil {
		return 0, err
	}
	if err := st.WriteFile(out, format); err != nil {
		return 0, err
	}
	return rec.Points, os.Remove(spool)
}
