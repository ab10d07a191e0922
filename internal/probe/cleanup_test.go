package probe

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCleanup: after Close the cgroup is gone and nothing of the tree
// runs, even a grandchild that ignores SIGTERM and outlives the root.
func TestCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		path := s.CgroupPath()
		if path == "" {
			t.Fatal("no cgroup as root")
		}
		cmd := shellCommand(s, `sh -c 'trap "" TERM; sleep 1000' & sleep 1000`)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.CommandStarted(cmd.Process.Pid)

		var pids []int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(pids) < 3; time.Sleep(5 * time.Millisecond) {
			pids, _ = readPids(filepath.Join(path, "cgroup.procs"))
		}
		if len(pids) < 3 {
			t.Fatalf("tree did not start: pids %v", pids)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		s.CommandEnded()

		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		cgroupGone(t, path)
		for _, pid := range pids {
			if procRunning(pid) {
				t.Errorf("pid %d of the tree still runs after Close", pid)
			}
		}
		// Final values stay collectable after Close.
		m := metrics(t, s)
		if m[fmt.Sprintf("statexec_probe_info{backend=%s}", mode)] != 1 {
			t.Errorf("no probe info after Close: %v", m)
		}
	})
}

// TestCleanStale: a cgroup left by a statexec killed with SIGKILL (its pid
// is gone) is removed by the next run, with whatever still ran in it.
func TestCleanStale(t *testing.T) {
	requireRoot(t)
	mount, _ := cgroup2Mount()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(mount, fmt.Sprintf("%s%d-deadbeef", cgroupPrefix, dead.Process.Pid))
	if err := os.Mkdir(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeCgroupDir(stale) })
	cg, err := openCgroup(stale)
	if err != nil {
		t.Fatal(err)
	}
	leftover := exec.Command("sleep", "1000")
	leftover.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd()}
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	_ = cg.dir.Close()
	waited := make(chan struct{})
	go func() { _ = leftover.Wait(); close(waited) }()

	// Ours (this pid is alive) must survive.
	s, err := Start(Options{Mode: ModePlain})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale cgroup %s survived Start: %v", stale, err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Errorf("process in the stale cgroup was not killed")
	}
	if err := CleanStale(""); err != nil {
		t.Errorf("CleanStale: %v", err)
	}
	if _, err := os.Stat(s.CgroupPath()); err != nil {
		t.Errorf("CleanStale removed a live run's cgroup: %v", err)
	}
}

// TestCollectBeforeStartAndCloseWhileRunning: Collect works before the
// command starts (probe info, zeros), and Close on an error path kills a
// command that still runs.
func TestCollectBeforeStartAndCloseWhileRunning(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		m := metrics(t, s)
		if m[fmt.Sprintf("statexec_probe_info{backend=%s}", mode)] != 1 {
			t.Errorf("no probe info before start: %v", m)
		}
		if m["statexec_process_processes"] != 0 || m["statexec_process_cpu_seconds_total{mode=user}"] != 0 {
			t.Errorf("non-zero values before start: %v", m)
		}
		cmd := shellCommand(s, "sleep 1000")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.CommandStarted(cmd.Process.Pid)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("command still runs after Close")
		}
	})
}

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"6.18.44-fc-v782", true}, {"5.7.0", true}, {"5.10.0-28-amd64", true},
		{"5.6.19", false}, {"5.4.0-150-generic", false}, {"4.19.0", false},
		{"5.15+", true}, {"garbage", true}, {"", true},
	} {
		if got := kernelAtLeast(c.release, cloneIntoCgroupMajor, cloneIntoCgroupMinor); got != c.want {
			t.Errorf("kernelAtLeast(%q) = %v, want %v", c.release, got, c.want)
		}
	}
}

// TestCleanupSubCgroups: a command that made a sub-cgroup of its own and
// moved a process into it is still killed and removed by Close (rmdir of
// a cgroup with children fails with EBUSY).
func TestCleanupSubCgroups(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		path := s.CgroupPath()
		sub := filepath.Join(path, "sub", "deeper")
		cmd := shellCommand(s, `mkdir -p "$SUB" && sh -c 'echo $$ > "$SUB/cgroup.procs" && exec sleep 1000' & wait`)
		cmd.Env = append(os.Environ(), "SUB="+sub)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.CommandStarted(cmd.Process.Pid)
		var pids []int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(pids) == 0; time.Sleep(5 * time.Millisecond) {
			pids, _ = readPids(filepath.Join(sub, "cgroup.procs"))
		}
		if len(pids) == 0 {
			t.Fatal("no process in the sub-cgroup")
		}
		start := time.Now()
		err := s.Close()
		_ = cmd.Wait()
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
		t.Logf("Close took %v", time.Since(start))
		cgroupGone(t, path)
		for _, pid := range pids {
			if procRunning(pid) {
				t.Errorf("pid %d in the sub-cgroup still runs after Close", pid)
			}
		}
	})
}

// TestCleanStaleReusedPid: a dead run's cgroup whose pid now belongs to an
// unrelated live process is removed (kill(pid, 0) kept it forever).
func TestCleanStaleReusedPid(t *testing.T) {
	requireRoot(t)
	mount, _ := cgroup2Mount()
	unrelated := exec.Command("sleep", "1000")
	if err := unrelated.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unrelated.Process.Kill(); _ = unrelated.Wait() })
	parent := cgroupParents(mount)[0]
	stale := filepath.Join(parent, fmt.Sprintf("%s%d-0badc0de", cgroupPrefix, unrelated.Process.Pid))
	if err := os.Mkdir(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeCgroupDir(stale) })
	if err := CleanStale(""); err != nil {
		t.Errorf("CleanStale: %v", err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale cgroup %s of a reused pid survived CleanStale: %v", stale, err)
	}
	if !procRunning(unrelated.Process.Pid) {
		t.Errorf("the unrelated process was killed")
	}
}

// TestCleanStaleSparesOtherPidNamespace: a live run in another PID
// namespace, sharing our parent cgroup, has a pid in its name that means
// nothing here (chosen free in ours): its cgroup and command must survive
// our CleanStale (kill(pid, 0) said it was dead and killed it).
func TestCleanStaleSparesOtherPidNamespace(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare (util-linux) not installed")
	}
	// A pid free in our namespace, which the other run will get in its.
	nsPid := 0
	for p := 30000; p > 1000; p-- {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); errors.Is(err, os.ErrNotExist) {
			nsPid = p
			break
		}
	}
	if nsPid == 0 {
		t.Fatal("no free pid")
	}
	ready := filepath.Join(t.TempDir(), "ready")
	// sh is pid 1 there; ns_last_pid makes its next child nsPid. The
	// trailing ":" keeps sh from exec'ing the helper (which would keep 1).
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
		`echo $((NSPID - 1)) > /proc/sys/kernel/ns_last_pid && "$0"; :`, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=hold", "HELPER_FILE="+ready, "NSPID="+itoa(nsPid))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var data []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(data) == 0; time.Sleep(5 * time.Millisecond) {
		data, _ = os.ReadFile(ready)
	}
	var path string
	var pid int
	if _, err := fmt.Sscan(string(data), &path, &pid); err != nil {
		t.Fatalf("helper did not report its cgroup: %q", data)
	}
	if pid != nsPid {
		t.Fatalf("helper has pid %d in its namespace, want %d", pid, nsPid)
	}
	if !strings.Contains(filepath.Base(path), fmt.Sprintf("%s%d-", cgroupPrefix, nsPid)) {
		t.Fatalf("helper's cgroup %s does not carry its namespace pid %d", path, nsPid)
	}
	if err := CleanStale(""); err != nil {
		t.Errorf("CleanStale: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("CleanStale removed the live run's cgroup in another PID namespace: %v", err)
	}
	// The run ends normally and removes its own cgroup.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper run: %v", err)
	}
	cgroupGone(t, path)
}
