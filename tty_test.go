package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/statexec/statexec/internal/testenv"
)

// openPTY returns a new pseudo-terminal's master and slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// startOnTerminal runs statexec as the foreground job of a new terminal,
// as a shell would.
func startOnTerminal(t *testing.T, env []string, args ...string) (*exec.Cmd, *os.File, *lockedBuffer, chan int) {
	t.Helper()
	master, slave := openPTY(t)
	cmd := newCmd(t, env, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
	out := &lockedBuffer{}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			out.Write(b[:n])
			if err != nil {
				return
			}
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		cmd.Wait()
		done <- cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, master, out, done
}

// exitCode waits up to 15 s for statexec to end and returns its exit code.
func exitCode(t *testing.T, done chan int, out *lockedBuffer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("statexec did not end; terminal:\n%s", out.String())
		return 0
	}
}

func waitOutput(t *testing.T, out *lockedBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(out.String(), want) {
			return
		}
	}
	t.Fatalf("terminal never showed %q; it shows:\n%s", want, out.String())
}

// TestCtrlCReachesCommandOnce: Ctrl+C on the terminal interrupts the
// command once (statexec does not forward a second SIGINT), and statexec
// writes the file and exits 130.
func TestCtrlCReachesCommandOnce(t *testing.T) {
	script := `n=0; trap 'n=$((n+1))' INT; echo ready; i=0; while [ $n -eq 0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; sleep 0.5; echo "ints=$n"; exit 3`
	cmd, master, out, done := startOnTerminal(t, []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", script)
	waitOutput(t, out, "ready")
	master.Write([]byte{3}) // ^C: SIGINT to the terminal's foreground group
	code := exitCode(t, done, out)
	waitOutput(t, out, "ints=")
	if !strings.Contains(out.String(), "ints=1") || code != 3 {
		t.Fatalf("exit %d; terminal:\n%s", code, out.String())
	}
	testenvParse(t, fileOf(cmd.Env))
}

// TestInteractiveShell drives `statexec exec bash` on a terminal.
func TestInteractiveShell(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	_, master, out, done := startOnTerminal(t, []string{"SE_SUMMARY=0", "PS1=prompt$ "}, "exec", "bash", "--norc", "-i")
	waitOutput(t, out, "prompt$ ")
	master.Write([]byte("echo $((6*7))\n"))
	waitOutput(t, out, "42")
	master.Write([]byte("sleep 30\n"))
	waitForeground(t, master, out, "sleep")
	master.Write([]byte{3}) // interrupts the sleep, not bash nor statexec
	waitForeground(t, master, out, "bash")
	waitFor(t, "a prompt after ^C", 10*time.Second, func() bool { return strings.Count(out.String(), "prompt$ ") >= 3 })
	master.Write([]byte("echo alive; exit 5\n"))
	if code := exitCode(t, done, out); code != 5 || !strings.Contains(out.String(), "alive") {
		t.Fatalf("exit %d; terminal:\n%s", code, out.String())
	}
}

func testenvParse(t *testing.T, path string) { testenv.ParseFile(t, path) }

// foreground is the terminal's foreground process group, 0 if unknown.
func foreground(master *os.File) int {
	pgrp, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPGRP)
	if err != nil {
		return 0
	}
	return pgrp
}

// waitForeground waits until the terminal's foreground group is led by a
// process named comm.
func waitForeground(t *testing.T, master *os.File, out *lockedBuffer, comm string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", foreground(master)))
		if strings.TrimSpace(string(b)) == comm {
			return
		}
	}
	t.Fatalf("%s never became the terminal's foreground job; terminal:\n%s", comm, out.String())
}

// groupMembers lists the processes of process group pgrp.
func groupMembers(pgrp int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name: state ppid pgrp ...
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 2 && f[2] == strconv.Itoa(pgrp) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procState is the state letter of /proc/PID/stat (R, S, T, Z...).
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || len(b) < i+3 {
		return 0
	}
	return b[i+2]
}

// TestCtrlZStopsAndContinues: Ctrl+Z stops the command, and statexec with
// it (as a shell expects of a job); continuing statexec continues the
// command in the foreground, and the run ends normally.
func TestCtrlZStopsAndContinues(t *testing.T) {
	// The command runs until the test lets it go (a file), at most 20 s:
	// "done" before the file exists means it ran through its stop, however
	// slow a busy machine makes the stop.
	release := filepath.Join(t.TempDir(), "release")
	script := `echo ready; i=0; while [ $i -lt 400 ] && [ ! -e "$1" ]; do sleep 0.05; i=$((i+1)); done; echo done`
	cmd, master, out, done := startOnTerminal(t, []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", script, "sh", release)
	waitOutput(t, out, "ready")
	job := foreground(master) // the command's group, which statexec made the foreground
	if job == 0 || job == cmd.Process.Pid {
		t.Fatalf("foreground group %d, want the command's (statexec is %d)", job, cmd.Process.Pid)
	}
	master.Write([]byte{0x1a}) // ^Z: SIGTSTP to the terminal's foreground group
	stopped := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if procState(cmd.Process.Pid) == 'T' {
			stopped = true
			break
		}
	}
	if !stopped {
		t.Fatalf("statexec did not stop with its command; terminal:\n%s", out.String())
	}
	// Every process of the command stops (not only its shell; a zombie
	// cannot run either): it cannot run on while statexec is stopped.
	waitFor(t, "every process of the command stopped", 5*time.Second, func() bool {
		members := groupMembers(job)
		for _, pid := range members {
			if st := procState(pid); st != 'T' && st != 'Z' {
				return false
			}
		}
		return len(members) > 0
	})
	if procState(cmd.Process.Pid) != 'T' {
		t.Fatal("statexec was continued while its command is stopped")
	}
	if strings.Contains(out.String(), "done") {
		t.Fatal("the command ran to its end although stopped")
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGCONT) // what the shell's fg does
	if code := exitCode(t, done, out); code != 0 || !strings.Contains(out.String(), "done") {
		t.Fatalf("exit %d after SIGCONT; terminal:\n%s", code, out.String())
	}
	testenvParse(t, fileOf(cmd.Env))
}

// TestTerminalTakeBackFailureReported: the command takes the terminal into
// a session of its own (setsid --ctty, which steals it as root), so
// statexec cannot take it back when the command ends: statexec says so in
// one line and keeps the command's exit code.
func TestTerminalTakeBackFailureReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("stealing a terminal needs CAP_SYS_ADMIN")
	}
	cmd, _, out, done := startOnTerminal(t, []string{"SE_SUMMARY=0"}, "exec", "setsid", "--ctty", "--wait", "sh", "-c", "exit 4")
	code := exitCode(t, done, out)
	const line = "statexec: take the terminal back: inappropriate ioctl for device"
	if code != 4 || strings.Count(out.String(), "statexec: ") != 1 || !strings.Contains(out.String(), line) {
		t.Fatalf("exit %d, want 4 and one line %q; terminal:\n%s", code, line, out.String())
	}
	testenvParse(t, fileOf(cmd.Env))
}
