//go:build linux

package modes

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Exit codes for a command that cannot run, as env(1) and timeout(1) use.
const (
	ExitNotExecutable = 126
	ExitNotFound      = 127
	ExitUsage         = 2
)

// CommandError is a command that could not be started.
type CommandError struct {
	Code int
	Err  error
}

func (e *CommandError) Error() string { return e.Err.Error() }

// resolve finds the command's executable like the shell does.
func resolve(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "", &CommandError{ExitNotExecutable, fmt.Errorf("%s: permission denied", name)}
	case errors.Is(err, exec.ErrDot):
		return "", &CommandError{ExitNotFound, fmt.Errorf("%s: not found in PATH (use ./%s)", name, name)}
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, exec.ErrNotFound):
		return "", &CommandError{ExitNotFound, fmt.Errorf("%s: command not found", name)}
	}
	return "", &CommandError{ExitNotExecutable, fmt.Errorf("%s: %w", name, err)}
}

// child is the running command.
type child struct {
	pid        int
	foreground bool          // the child owns the terminal
	tty        *os.File      // the terminal, when foreground
	stderr     *os.File      // statexec's, for errors while the child runs
	done       chan struct{} // closed when reaped
	started    time.Time
	// A child started with hooks.runAt is held until then (gated true);
	// released is closed once it runs (c.started set) or was killed
	// (cancel).
	gated    bool
	released chan struct{}
	cancel   *os.File // write end of the gate's pipe: a byte cancels
	// exiting is called with the pid of every child of statexec (the
	// command, and descendants reparented to statexec) that exited and
	// is not reaped yet: its /proc files still hold its final counters.
	exiting func(pid int)
	// Written by the reaping goroutine before done is closed: read them
	// only after <-done (see result).
	ended  time.Time
	status unix.WaitStatus
	rusage unix.Rusage
}

// hooks are what the probe needs to know of the command's life.
type hooks struct {
	// prepare adjusts the child's attributes before it starts.
	prepare func(*syscall.SysProcAttr)
	// exiting sees each exited child before it is reaped.
	exiting func(pid int)
	// runAt, if set, holds the child right after its execve, stopped by
	// ptrace, until that instant: the costly part of a start (fork,
	// cgroup, execve) is then done, and at the instant the forking
	// thread, woken by the kernel's timer itself, only lets it run.
	// Where ptrace is not allowed, startChild returns once the child was
	// forked at the instant (gated false).
	runAt time.Time
}

// startChild starts the command in its own process group (so a signal
// statexec forwards reaches the whole group once) and, when statexec owns
// the terminal, in the foreground, so Ctrl+C goes to the command alone.
// The child gets SIGKILL if statexec dies. The goroutine that forks stays
// locked to its thread until the child is reaped, because the kernel sends
// the parent-death signal when the forking thread exits.
func startChild(path string, argv []string, stdio [3]*os.File, h hooks) (*child, error) {
	c := &child{done: make(chan struct{}), exiting: h.exiting, stderr: stdio[2]}
	if c.exiting == nil {
		c.exiting = func(int) {}
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if foregroundTTY(stdio[0]) {
			attr.Foreground = true
			attr.Ctty = 0 // the child's stdin
			c.foreground = true
			c.tty = stdio[0]
		}
		if h.prepare != nil {
			h.prepare(attr)
		}
		// The kernel stops a child that asked to be traced right after
		// its execve succeeded, before its first instruction.
		var gate *gate
		if !h.runAt.IsZero() {
			var err error
			if gate, err = newGate(h.runAt); err != nil {
				gate = nil // no timer: start at once
			} else {
				c.cancel = gate.w
			}
		}
		attr.Ptrace = gate != nil
		p, err := os.StartProcess(path, argv, &os.ProcAttr{Files: stdio[:], Sys: attr, Env: os.Environ()})
		if err != nil && attr.Ptrace && errors.Is(err, syscall.EPERM) {
			// ptrace denied here (seccomp, Yama, statexec traced): no
			// hold; fork at the instant instead.
			attr.Ptrace = false
			gate.wait()
			p, err = os.StartProcess(path, argv, &os.ProcAttr{Files: stdio[:], Sys: attr, Env: os.Environ()})
		}
		if err != nil {
			if gate != nil {
				gate.close()
			}
			started <- err
			return
		}
		c.pid = p.Pid
		p.Release() // reaped below with wait4, not by os.Process
		if attr.Ptrace && heldAfterExec(c.pid) {
			c.gated, c.released = true, make(chan struct{})
			started <- nil
			run := gate.wait()
			gate.close()
			if d := time.Until(h.runAt); run && d > 0 {
				time.Sleep(d) // never before the instant (see newGate)
			}
			if !run {
				unix.Kill(c.pid, syscall.SIGKILL)
			}
			// Only the forking thread (this one, locked) may detach.
			unix.PtraceDetach(c.pid)
			c.started = time.Now()
			close(c.released)
		} else {
			if gate != nil {
				gate.close()
			}
			c.started = time.Now()
			started <- nil
		}
		c.reap()
		close(c.done)
	}()
	if err := <-started; err != nil {
		code := ExitNotExecutable
		if errors.Is(err, fs.ErrNotExist) {
			code = ExitNotFound
		}
		return nil, &CommandError{code, fmt.Errorf("start %s: %w", argv[0], err)}
	}
	return c, nil
}

// heldAfterExec waits for the stop of a traced child after its execve
// (SIGTRAP). If it stopped otherwise, it is let go and false returned.
func heldAfterExec(pid int) bool {
	for {
		var st unix.WaitStatus
		_, err := unix.Wait4(pid, &st, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err == nil && st.Stopped() && st.StopSignal() == syscall.SIGTRAP {
			return true
		}
		if err == nil && st.Stopped() {
			unix.PtraceDetach(pid)
		}
		return false
	}
}

// gate is a timerfd armed for an instant on CLOCK_MONOTONIC (Go's
// monotonic clock) and a pipe that cancels the wait.
type gate struct {
	tfd  int
	r, w *os.File
}

func newGate(at time.Time) (*gate, error) {
	// Go's reading first, the kernel's second: a pause between the two
	// (a preemption; the race detector) then makes the timer fire that
	// much late, never early. The other way round, an instant 2 ms
	// early was seen under load: the command ran before the origin.
	d := max(time.Until(at), 0)
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		return nil, err
	}
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	when := unix.NsecToTimespec(now.Nano() + int64(d) + 1) // 0 would disarm it
	if err := unix.TimerfdSettime(tfd, unix.TFD_TIMER_ABSTIME, &unix.ItimerSpec{Value: when}, nil); err != nil {
		unix.Close(tfd)
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		unix.Close(tfd)
		return nil, err
	}
	return &gate{tfd: tfd, r: r, w: w}, nil
}

// wait blocks the thread until the instant (true) or a cancel (false).
func (g *gate) wait() bool {
	fds := []unix.PollFd{{Fd: int32(g.tfd), Events: unix.POLLIN}, {Fd: int32(g.r.Fd()), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		return err == nil && fds[1].Revents == 0 && fds[0].Revents&unix.POLLIN != 0
	}
}

func (g *gate) close() {
	unix.Close(g.tfd)
	g.r.Close()
	g.w.Close()
}

// waitRelease waits until a gated child runs, and sets c.started.
func (c *child) waitRelease() {
	if c.gated {
		<-c.released
	}
}

// cancelGate kills a gated child before it ran; the caller waits for
// c.done.
func (c *child) cancelGate() {
	if c.gated {
		c.cancel.Write([]byte{0})
		<-c.released
	}
}

// reap waits for the child. statexec is a child subreaper, so orphaned
// descendants are reparented to it: they are reaped here as they exit.
// Each exited child is first left a zombie while c.exiting reads its
// final counters (its /proc/PID/io, for one, disappears with reaping).
func (c *child) reap() {
	for {
		pid, exited, err := waitNoReap(0)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // ECHILD: nothing left to wait for
			return
		}
		if exited {
			c.exiting(pid)
		}
		var st unix.WaitStatus
		var ru unix.Rusage
		if _, err := unix.Wait4(pid, &st, unix.WUNTRACED, &ru); err != nil && err != unix.EINTR {
			continue // reaped meanwhile (reapRemaining); look again
		}
		if pid == c.pid && st.Stopped() {
			c.suspend(st.StopSignal())
			continue
		}
		if pid == c.pid {
			c.ended = time.Now()
			c.status, c.rusage = st, ru
			c.reapOrphans()
			return
		}
	}
}

// result returns when the command ended and its rusage once it was
// reaped; ok is false while it runs (a signal can end statexec's run
// between /start and the wait) or when its status was lost. It reads the
// fields the reaping goroutine writes only after done is closed.
func (c *child) result() (ended time.Time, ru unix.Rusage, ok bool) {
	select {
	case <-c.done:
		return c.ended, c.rusage, !c.ended.IsZero()
	default:
		return time.Time{}, unix.Rusage{}, false
	}
}

// suspend follows a job-control stop of the command (Ctrl+Z on its
// terminal): statexec takes the terminal back and stops itself, so that
// the shell above sees the job stopped. When the shell continues statexec
// (fg or bg), statexec continues the command, and gives it the terminal
// again if statexec got it. Other stops (a SIGSTOP sent to the command)
// are the sender's business.
func (c *child) suspend(sig syscall.Signal) {
	if !c.foreground || (sig != syscall.SIGTSTP && sig != syscall.SIGTTIN && sig != syscall.SIGTTOU) {
		return
	}
	if err := takeTerminalBack(c.tty); err != nil {
		fmt.Fprintf(c.stderr, "statexec: %v\n", err)
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGSTOP) // returns once continued
	if foregroundTTY(c.tty) {
		ignoreTTOU()
		if err := unix.IoctlSetPointerInt(int(c.tty.Fd()), unix.TIOCSPGRP, c.pid); err != nil {
			fmt.Fprintf(c.stderr, "statexec: give the terminal back to the command: %v\n", err)
		}
		restoreTTOU()
	}
	c.signal(syscall.SIGCONT)
}

// reapRemaining collects descendants that exit within limit, such as those
// the probe's cgroup.kill just ended; it returns at once when statexec has
// no children left.
func reapRemaining(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
		switch {
		case err == unix.EINTR || pid > 0:
			continue
		case err != nil: // ECHILD: none left
			return
		case time.Now().After(deadline): // pid 0: children left, all alive
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reapOrphans collects descendants that already exited.
func (c *child) reapOrphans() {
	for i := 0; i < 10000; i++ {
		pid, exited, err := waitNoReap(unix.WNOHANG)
		if pid <= 0 || err != nil {
			return
		}
		if exited {
			c.exiting(pid)
		}
		var st unix.WaitStatus
		_, _ = unix.Wait4(pid, &st, unix.WNOHANG|unix.WUNTRACED, nil)
	}
}

// waitNoReap waits (waitid P_ALL with WNOWAIT) for a child that exited or
// stopped and returns its pid without reaping it; exited tells which.
// With WNOHANG and nothing to report, pid is 0.
func waitNoReap(options int) (pid int, exited bool, err error) {
	var info unix.Siginfo
	err = unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WSTOPPED|unix.WNOWAIT|options, nil)
	if err != nil {
		return 0, false, err
	}
	// si_pid is the first field of the union after three ints, aligned
	// to the pointer size (offset 16 on 64-bit ABIs, 12 on 32-bit ones).
	off := (3*unsafe.Sizeof(int32(0)) + unsafe.Sizeof(uintptr(0)) - 1) &^ (unsafe.Sizeof(uintptr(0)) - 1)
	pid = int(*(*int32)(unsafe.Add(unsafe.Pointer(&info), off)))
	exited = info.Code == cldExited || info.Code == cldKilled || info.Code == cldDumped
	return pid, exited, nil
}

// si_code values of SIGCHLD (<asm-generic/siginfo.h>) for a child that
// ended; the others (trapped, stopped, continued) are not exits.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// signal sends sig to the child's process group, or to the child if the
// group is gone.
func (c *child) signal(sig syscall.Signal) {
	if err := syscall.Kill(-c.pid, sig); err != nil {
		syscall.Kill(c.pid, sig)
	}
}

// exitCode is the shell's view of the status: the code, or 128+signal.
func (c *child) exitCode() int {
	switch {
	case c.status.Exited():
		return c.status.ExitStatus()
	case c.status.Signaled():
		return 128 + int(c.status.Signal())
	}
	return 1
}

// foregroundTTY reports whether f is a terminal whose foreground process
// group is statexec's own.
func foregroundTTY(f *os.File) bool {
	if f == nil {
		return false
	}
	pgrp, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

// takeTerminalBack makes statexec's process group the foreground group of
// the terminal again after the child, which owned it, ended. SIGTTOU is
// ignored meanwhile: statexec is a background group at this point. An
// error means the shell above may not get its terminal back (e.g. the
// command took the terminal into a session of its own).
func takeTerminalBack(f *os.File) error {
	if f == nil {
		return nil
	}
	fd := int(f.Fd())
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil {
		return fmt.Errorf("take the terminal back: %w", err)
	}
	if pgrp == unix.Getpgrp() {
		return nil
	}
	ignoreTTOU()
	defer restoreTTOU()
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, unix.Getpgrp()); err != nil {
		return fmt.Errorf("take the terminal back: %w", err)
	}
	return nil
}
