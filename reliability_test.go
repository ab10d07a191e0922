package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/statexec/statexec/internal/store"
	"github.com/statexec/statexec/internal/testenv"
)

// Values of statexec_command_status.
const (
	statusPending = 0
	statusRunning = 1
	statusDone    = 2
)

// processGone reports whether pid has exited (gone, or a zombie).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+path, 10*time.Second, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

// lastStatus is the last statexec_command_status in st (an opened spool),
// -1 if there is none; scratch is a file to export into.
func lastStatus(t *testing.T, st *store.Store, scratch string) float64 {
	t.Helper()
	if err := st.WriteFile(scratch, store.OpenMetrics); err != nil {
		t.Fatalf("export the live spool %s: %v", st.Path(), err)
	}
	series := testenv.ParseFile(t, scratch).Series("statexec_command_status", nil)
	if len(series) == 0 {
		return -1
	}
	return series[len(series)-1].Value
}

// waitSpool waits until the run writing spool has stored at least ticks
// samples, the last with statexec_command_status = status: the run is in
// that phase, with that many samples on disk. store.Open reads a live
// spool without taking its lock; the export is skipped until there are
// enough ticks, to keep the polling light next to the run it watches.
func waitSpool(t *testing.T, spool string, ticks int, status float64) {
	t.Helper()
	scratch := filepath.Join(t.TempDir(), "live.txt")
	waitFor(t, fmt.Sprintf("%d samples with status %v in %s", ticks, status, spool), 10*time.Second, func() bool {
		st, rec, err := store.Open(spool)
		return err == nil && rec.Ticks >= ticks && lastStatus(t, st, scratch) == status
	})
}

// cgroupsOf lists the cgroup directories statexec pid created.
func cgroupsOf(pid int) []string {
	var found []string
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.HasPrefix(d.Name(), fmt.Sprintf("statexec-%d-", pid)) {
				found = append(found, path)
				return filepath.SkipDir
			}
			return nil
		})
	}
	return found
}

// TestKilledStatexecLosesAtMostOneInterval: SIGKILL statexec mid-run; the
// command dies with it, the spool holds every sample but the interval in
// progress, `statexec recover` and the next run turn it into a valid file,
// and the next run removes the dead run's cgroup.
func TestKilledStatexecLosesAtMostOneInterval(t *testing.T) {
	testenv.Require(t, "promtool")
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	file := filepath.Join(dir, "m.txt")
	// Wall-clock timestamps here: the loss is the kill's time minus the
	// last sample's, on one clock. (With SE_TIME_RELATIVE the origin is
	// statexec's clock start, later than the test's by statexec's
	// start-up, which would count as loss.)
	b := startStatexec(t, []string{"SE_METRICS_FILE=" + file, "SE_INTERVAL=100ms"}, "exec", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 60")
	child := readPid(t, pidFile)
	waitSpool(t, file+".spool", 12, 1)
	b.cmd.Process.Signal(syscall.SIGKILL)
	killedMs := time.Now().UnixMilli()
	<-b.done
	waitFor(t, "the command to die with statexec", 3*time.Second, func() bool { return processGone(child) })

	spool := file + ".spool"
	out := filepath.Join(dir, "recovered.txt")
	r := statexec(t, "", nil, "recover", spool, out)
	if r.code != 0 || !strings.Contains(r.stdout, "recovered") {
		t.Fatalf("recover: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	f := checkComplete(t, nil, out)
	status := f.Series("statexec_command_status", nil)
	last := status[len(status)-1].TimestampMs
	// The last sample kept is at most one interval (plus scheduling
	// slack) before the kill.
	if lost := killedMs - last; lost > 100+150 {
		t.Fatalf("last sample at %d ms, killed at %d ms: %d ms lost", last, killedMs, lost)
	}
	if len(status) < 10 || status[len(status)-1].Value != 1 {
		t.Fatalf("%d status samples, last %v", len(status), status[len(status)-1].Value)
	}
	if _, err := os.Stat(spool); err == nil {
		t.Fatal("recover left the spool")
	}

	// Killed again, with shifted timestamps: this time the next run
	// recovers the spool itself.
	env := []string{"SE_METRICS_FILE=" + file, "SE_INTERVAL=100ms", "SE_TIME_RELATIVE=1704067200000"}
	b = startStatexec(t, env, "exec", "sleep", "60")
	waitSpool(t, spool, 3, 1)
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	r = statexec(t, "", env, "exec", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "recovered") {
		t.Fatalf("next run: exit %d stderr %s", r.code, r.stderr)
	}
	matches, _ := filepath.Glob(file + ".recovered-*")
	if len(matches) != 1 {
		t.Fatalf("recovered files: %v", matches)
	}
	checkComplete(t, nil, matches[0])
	if left := cgroupsOf(b.cmd.Process.Pid); len(left) != 0 {
		t.Fatalf("cgroups of the killed run left after the next run: %v", left)
	}
}

// phaseCase is one mode and phase in which statexec gets a signal.
type phaseCase struct {
	name string
	env  []string
	args []string
	// trigger, if set, moves the run into the phase (POST /start).
	trigger func(t *testing.T, b *background)
	// status is statexec_command_status in the phase: the test waits for
	// it in the spool before sending the signal.
	status float64
	// code is the expected exit code for signal sig.
	code func(sig syscall.Signal) int
}

// TestSignalsInEveryPhase sends SIGINT, SIGTERM and SIGHUP to statexec in
// every mode and phase, 20 times each, and checks the file every time.
func TestSignalsInEveryPhase(t *testing.T) {
	testenv.Require(t, "victoria-metrics", "promtool")
	syncServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/start" {
			w.WriteHeader(http.StatusCreated)
		} else {
			w.WriteHeader(http.StatusAccepted)
		}
	}))
	defer syncServer.Close()
	killed := func(sig syscall.Signal) int { return 128 + int(sig) }
	ok := func(syscall.Signal) int { return 0 }
	start := func(t *testing.T, b *background) {
		if code := post(t, "http://"+b.syncAddr(t)+"/start", ""); code != http.StatusCreated {
			t.Fatalf("POST /start: %d", code)
		}
	}
	fast := []string{"SE_INTERVAL=50ms", "SE_SUMMARY=0", "SE_SYNC_LISTEN=127.0.0.1:0"}
	before := append([]string{"SE_WAIT_TIME_BEFORE_COMMAND=30"}, fast...)
	after := append([]string{"SE_WAIT_TIME_AFTER_COMMAND=30"}, fast...)
	var cases []phaseCase
	for _, mode := range []string{"exec", "waitStart", "waitStartAndStop", "syncStart", "syncStartAndStop"} {
		var args []string
		var trigger func(*testing.T, *background)
		switch mode {
		case "exec":
			args = []string{mode}
		case "waitStart", "waitStartAndStop":
			args, trigger = []string{mode}, start
			cases = append(cases, phaseCase{mode + "/waiting-for-start", fast, append(args, "true"), nil, statusPending, killed})
		default:
			args = []string{mode, syncServer.URL}
		}
		cases = append(cases,
			phaseCase{mode + "/before", before, append(args, "true"), nil, statusPending, killed},
			phaseCase{mode + "/running", fast, append(args, "sleep", "30"), trigger, statusRunning, killed},
			phaseCase{mode + "/after", after, append(args, "true"), trigger, statusDone, ok},
		)
	}
	vm := testenv.StartVictoriaMetrics(t)
	signals := []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := range 20 {
				sig := signals[i%len(signals)]
				b := startStatexec(t, c.env, c.args...)
				if c.trigger != nil {
					c.trigger(t, b)
				}
				waitSpool(t, b.file+".spool", 3, c.status)
				b.cmd.Process.Signal(sig)
				b.wait(t, 10*time.Second)
				if want := c.code(sig); b.code != want {
					t.Fatalf("run %d, %v: exit %d, want %d; stderr:\n%s", i, sig, b.code, want, b.stderr.String())
				}
				f := checkComplete(t, vm, b.file)
				if n := len(f.Series("statexec_command_status", nil)); n < 3 {
					t.Fatalf("run %d: only %d status samples", i, n)
				}
			}
		})
	}
}

// TestSignalForwardedOnce: each signal statexec forwards (SIGINT, SIGTERM,
// SIGHUP, SIGQUIT) reaches the command exactly once, and statexec exits
// with the command's code.
func TestSignalForwardedOnce(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			// The trap is set before "ready"; after the first signal the
			// script waits 0.3 s more for a second one (the sleep it
			// interrupts dies of the signal; no core file from SIGQUIT).
			name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
			script := `ulimit -c 0; trap 'n=$((n+1)); echo "got $n"' ` + name + `; n=0; i=0; echo ready; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); if [ $n -gt 0 ]; then sleep 0.3; exit 7; fi; done`
			b := startStatexec(t, []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", script)
			waitFor(t, "the command's trap", 10*time.Second, func() bool { return b.stdout.String() == "ready\n" })
			b.cmd.Process.Signal(sig)
			b.wait(t, 15*time.Second)
			if b.code != 7 || b.stdout.String() != "ready\ngot 1\n" {
				t.Fatalf("exit %d, stdout %q; stderr:\n%s", b.code, b.stdout.String(), b.stderr.String())
			}
			testenv.ParseFile(t, b.file)
		})
	}
}

// TestStoppedStatexecKeepsTimestampsMonotonic: SIGSTOP statexec for 3 s;
// the timestamps jump by the pause and stay increasing.
func TestStoppedStatexecKeepsTimestampsMonotonic(t *testing.T) {
	b := startStatexec(t, []string{"SE_INTERVAL=100ms", "SE_SUMMARY=0"}, "exec", "sleep", "4.5")
	waitSpool(t, b.file+".spool", 5, 1)
	b.cmd.Process.Signal(syscall.SIGSTOP)
	waitFor(t, "statexec stopped", 5*time.Second, func() bool { return procState(b.cmd.Process.Pid) == 'T' })
	time.Sleep(3 * time.Second) // the pause under test, not a synchronisation
	b.cmd.Process.Signal(syscall.SIGCONT)
	b.wait(t, 10*time.Second)
	f := testenv.ParseFile(t, b.file) // checks strictly increasing per series
	status := f.Series("statexec_command_status", nil)
	gap := int64(0)
	for i := 1; i < len(status); i++ {
		gap = max(gap, status[i].TimestampMs-status[i-1].TimestampMs)
	}
	if gap < 2900 {
		t.Fatalf("largest gap %d ms, want the 3 s pause", gap)
	}
}

// TestDiskFullMidRun: the metrics directory fills up; the command still
// runs to its end, statexec says so and exits non-zero, and what was
// written can be recovered.
func TestDiskFullMidRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dir).Run()
	marker := filepath.Join(t.TempDir(), "done")
	r := statexec(t, "", []string{"SE_METRICS_FILE=" + filepath.Join(dir, "m.txt"), "SE_INTERVAL=10ms"},
		"exec", "sh", "-c", "sleep 2; echo done > "+marker)
	if r.code == 0 || !strings.Contains(r.stderr, "no space left on device") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(marker); string(b) != "done\n" {
		t.Fatal("the command did not run to its end")
	}
	out := filepath.Join(t.TempDir(), "recovered.txt")
	rec := statexec(t, "", nil, "recover", filepath.Join(dir, "m.txt.spool"), out)
	if rec.code != 0 {
		t.Fatalf("recover: %d %s", rec.code, rec.stderr)
	}
	if f := testenv.ParseFile(t, out); len(f.Series("statexec_command_status", nil)) < 2 {
		t.Fatal("nothing recovered")
	}
}

func TestOldOriginHint(t *testing.T) {
	r := statexec(t, "", []string{"SE_TIME_RELATIVE=1704067200000"}, "exec", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "-retentionPeriod") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r := statexec(t, "", nil, "exec", "true"); strings.Contains(r.stderr, "retentionPeriod") {
		t.Fatalf("hint without SE_TIME_RELATIVE: %q", r.stderr)
	}
}

// TestNoZombiesLeft: a command that leaves a background grandchild behind
// has it killed (with the cgroup) and reaped by statexec: no zombie of the
// run survives statexec.
func TestNoZombiesLeft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the run's cgroup needs root")
	}
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	r := statexec(t, "", []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", "sleep 60 & echo $! > "+pidFile)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	pid := readPid(t, pidFile)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Fatalf("background process %d still exists (alive or zombie) after statexec ended", pid)
	}
}
