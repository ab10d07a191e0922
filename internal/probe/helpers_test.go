package probe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The test binary re-executes itself as the measured child: helperEnv
// selects what the child does (see runHelper).
const helperEnv = "STATEXEC_PROBE_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := runHelper(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func runHelper(mode string) error {
	switch mode {
	case "net":
		_, err := loopbackTransfer(int64(envInt("HELPER_BYTES", 50<<20)))
		return err
	case "burn":
		// Burn CPU in the main process and in short-lived children
		// (their rusage reaches ours when we reap them), with sleeps for
		// voluntary switches.
		ms := envInt("HELPER_MS", 2000)
		kids := envInt("HELPER_KIDS", 0)
		var cmds []*exec.Cmd
		for i := 0; i < kids; i++ {
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), helperEnv+"=burn", "HELPER_MS=200", "HELPER_KIDS=0")
			if err := c.Start(); err != nil {
				return err
			}
			cmds = append(cmds, c)
		}
		burn(time.Duration(ms) * time.Millisecond)
		for _, c := range cmds {
			if err := c.Wait(); err != nil {
				return err
			}
		}
		if f := os.Getenv("HELPER_SCHEDSTAT_FILE"); f != "" {
			// The kernel's own run-queue wait of our threads
			// (run_delay) and arrivals (pcount), for comparison.
			return os.WriteFile(f, []byte(threadsSchedstat()), 0o644)
		}
		return nil
	case "steps":
		return stepsHelper(envInt("HELPER_STEPS", 4), os.Getenv("HELPER_FILE"))
	case "hold":
		// A run that lives until its stdin closes: it writes its
		// cgroup path (and pid, as seen in its PID namespace) to
		// HELPER_FILE once the cgroup exists.
		s, err := Start(Options{Mode: ModePlain})
		if err != nil {
			return err
		}
		defer s.Close()
		ready := fmt.Sprintf("%s %d\n", s.CgroupPath(), os.Getpid())
		if err := os.WriteFile(os.Getenv("HELPER_FILE"), []byte(ready), 0o644); err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, os.Stdin)
		return s.Close()
	case "mem":
		buf := make([]byte, envInt("HELPER_MB", 100)<<20)
		for i := 0; i < len(buf); i += os.Getpagesize() {
			buf[i] = 1
		}
		time.Sleep(time.Duration(envInt("HELPER_MS", 500)) * time.Millisecond)
		buf[len(buf)-1] = 2 // keep buf alive
		return nil
	case "disk":
		f, err := os.Create(os.Getenv("HELPER_FILE"))
		if err != nil {
			return err
		}
		chunk := make([]byte, 1<<20)
		for i := range chunk {
			chunk[i] = byte(i)
		}
		for i := 0; i < 8; i++ {
			if _, err := f.Write(chunk); err != nil {
				return err
			}
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
		return nil
	case "fallback":
		return fallbackHelper()
	case "spin", "churn", "idle":
		return schedHelper(mode)
	case "nobudp", "nobdrop", "nobdnsd", "nobdnsq", "nobpeers", "nobrcvbuf": // netobs_test.go
		return netobsHelper(mode)
	default:
		// Group tcp's helpers (tcp_test.go).
		if h, ok := tcpHelpers[mode]; ok {
			return h()
		}
		return fmt.Errorf("unknown helper %q", mode)
	}
}

// burn spins until the process used d of CPU time (bounded by 30 s of
// wall time), with a short sleep every 10 ms.
func burn(d time.Duration) {
	deadline := time.Now().Add(30 * time.Second)
	x := 1
	for selfCPU() < d && time.Now().Before(deadline) {
		slice := time.Now().Add(10 * time.Millisecond)
		for time.Now().Before(slice) {
			for i := 0; i < 1000; i++ {
				x = x*31 + i
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	if x == 42 {
		fmt.Print("")
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const transferTimeout = 60 * time.Second

// loopbackTransfer sends n bytes over a TCP connection to itself on
// 127.0.0.1 and returns how many arrived.
func loopbackTransfer(n int64) (int64, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(transferTimeout))
		k, err := io.Copy(io.Discard, c)
		if err != nil {
			errc <- err
			return
		}
		got <- k
	}()
	c, err := net.DialTimeout("tcp4", ln.Addr().String(), transferTimeout)
	if err != nil {
		return 0, err
	}
	_ = c.SetDeadline(time.Now().Add(transferTimeout))
	buf := make([]byte, 256<<10)
	var sent int64
	for sent < n {
		k := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:k]); err != nil {
			c.Close()
			return sent, err
		}
		sent += k
	}
	if err := c.Close(); err != nil {
		return sent, err
	}
	select {
	case k := <-got:
		return k, nil
	case err := <-errc:
		return 0, err
	case <-time.After(transferTimeout):
		return 0, errors.New("transfer timed out")
	}
}

// requireRoot skips unless the test can create cgroups and load BPF.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroup v2 + BPF)")
	}
	if _, err := cgroup2Mount(); err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
}

// startEBPF starts an eBPF session. As root a failure is a test failure,
// unless the kernel lacks BPF altogether.
func startEBPF(t testing.TB) *Session {
	t.Helper()
	return startEBPFWith(t, Options{})
}

// startEBPFWith is startEBPF with more options (Mode and ConstLabels are
// set here).
func startEBPFWith(t testing.TB, opts Options) *Session {
	t.Helper()
	requireRoot(t)
	opts.Mode, opts.ConstLabels = ModeEBPF, prometheus.Labels{"job": "test"}
	s, err := Start(opts)
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, errNoKernelBTF) {
		t.Skipf("kernel lacks BPF support: %v", err)
	}
	if err != nil {
		t.Fatalf("Start(ebpf): %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// runChild runs the test binary as helper under s and returns its state.
func runChild(t testing.TB, s *Session, env ...string) *os.ProcessState {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	s.PrepareCommand(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	s.CommandStarted(cmd.Process.Pid)
	err := cmd.Wait()
	s.CommandEnded()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	return cmd.ProcessState
}

// metrics gathers s through a pedantic registry (which checks Describe
// against Collect) and flattens the result: "name{k=v,...}" -> value.
// Histograms give name_count and name_sum.
func metrics(t testing.TB, s *Session) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatalf("register: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetHelp() == "" {
			t.Errorf("%s has no HELP", mf.GetName())
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "job" {
					continue
				}
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			if !hasLabel(m, "job", "test") && s.opts.ConstLabels != nil {
				t.Errorf("%s lacks the const label", mf.GetName())
			}
			sort.Strings(labels)
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
				out[key+"_sum"] = m.Histogram.GetSampleSum()
			}
		}
	}
	return out
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}

func rusageCPU(ps *os.ProcessState) time.Duration {
	return ps.UserTime() + ps.SystemTime()
}

func rusage(ps *os.ProcessState) *syscall.Rusage {
	return ps.SysUsage().(*syscall.Rusage)
}

// burnOutside keeps another process (outside the cgroup) busy until the
// test ends: noise that must not be counted.
func burnOutside(t testing.TB) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=burn", "HELPER_MS=60000")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start outside burner: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

func within(got, want, tol float64) bool {
	return got >= want*(1-tol) && got <= want*(1+tol)
}

func cgroupGone(t testing.TB, path string) {
	t.Helper()
	if path == "" {
		return
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s still exists after Close (stat: %v)", path, err)
	}
	if matches, _ := filepath.Glob(path); len(matches) > 0 {
		t.Errorf("cgroup %s still listed", path)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// shellCommand prepares sh -c script inside s's cgroup (s may be nil).
func shellCommand(s *Session, script string) *exec.Cmd {
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if s != nil {
		s.PrepareCommand(cmd.SysProcAttr)
	}
	return cmd
}

// procRunning reports whether pid is a live (not zombie) task.
func procRunning(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// threadsSchedstat sums run_delay (ns) and pcount over this process's
// threads: "delay pcount".
func threadsSchedstat() string {
	tids, _ := filepath.Glob("/proc/self/task/*/schedstat")
	var delay, pcount uint64
	for _, f := range tids {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var run, d, p uint64
		if _, err := fmt.Sscan(string(data), &run, &d, &p); err == nil {
			delay += d
			pcount += p
		}
	}
	return fmt.Sprintf("%d %d", delay, pcount)
}

// forEachBackend runs f as a subtest with a fresh session of each backend
// (root only); the session is closed when the subtest ends.
func forEachBackend(t *testing.T, f func(t *testing.T, mode Mode, s *Session)) {
	for _, mode := range []Mode{ModeEBPF, ModePlain} {
		t.Run(string(mode), func(t *testing.T) {
			requireRoot(t)
			s, err := Start(Options{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			f(t, mode, s)
		})
	}
}

// samplePlain samples p; a failed collection fails the test.
func samplePlain(t testing.TB, p *plainSampler) plainTotals {
	t.Helper()
	tot, err := p.sample()
	if err != nil {
		t.Errorf("plain sample: %v", err)
	}
	return tot
}
