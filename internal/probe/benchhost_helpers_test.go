package probe

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The benchmark-host tests (pressure, perf events, block latency) run the
// test binary as the measured command too, selected by their own variable
// so that the shared helper list stays as it is.
const hostHelperEnv = "STATEXEC_HOST_HELPER"

func init() {
	mode := os.Getenv(hostHelperEnv)
	if mode == "" {
		return
	}
	if err := runHostHelper(mode); err != nil {
		fmt.Fprintln(os.Stderr, "host helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runHostHelper(mode string) error {
	switch mode {
	case "spin":
		// HELPER_LOOPS processes (this one and HELPER_LOOPS-1 copies)
		// each spinning without sleeping for HELPER_MS of wall time.
		// This process writes its own run-queue wait (schedstat
		// run_delay, ns) to HELPER_FILE.
		runtime.GOMAXPROCS(1)
		ms := envInt("HELPER_MS", 3000)
		var kids []*exec.Cmd
		for i := 1; i < envInt("HELPER_LOOPS", 1); i++ {
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), "HELPER_LOOPS=1", "HELPER_FILE=")
			if err := c.Start(); err != nil {
				return err
			}
			kids = append(kids, c)
		}
		spin(time.Duration(ms) * time.Millisecond)
		for _, c := range kids {
			if err := c.Wait(); err != nil {
				return err
			}
		}
		if f := os.Getenv("HELPER_FILE"); f != "" {
			return os.WriteFile(f, []byte(threadsSchedstat()), 0o644)
		}
		return nil
	case "touch":
		// Touch HELPER_MB of fresh anonymous memory, one write per
		// page, in small pages (no transparent huge pages).
		n := envInt("HELPER_MB", 256) << 20
		mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
			return err
		}
		// The process's own count of the faults of the touch alone: the
		// runtime (more so under the race detector) faults on its own.
		var before, after unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &before)
		for i := 0; i < n; i += os.Getpagesize() {
			mem[i] = 1
		}
		unix.Getrusage(unix.RUSAGE_SELF, &after)
		if err := unix.Munmap(mem); err != nil {
			return err
		}
		if f := os.Getenv("HELPER_FAULTS_FILE"); f != "" {
			if err := os.WriteFile(f, []byte(strconv.FormatInt(after.Minflt-before.Minflt, 10)), 0o644); err != nil {
				return err
			}
		}
		// Then, optionally, HELPER_SPIN_LOOPS spinning processes for
		// HELPER_SPIN_MS: more runnable tasks than CPUs make the
		// scheduler migrate them.
		if loops := envInt("HELPER_SPIN_LOOPS", 0); loops > 0 {
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), hostHelperEnv+"=spin", "HELPER_LOOPS="+strconv.Itoa(loops), "HELPER_MS="+os.Getenv("HELPER_SPIN_MS"), "HELPER_FILE=")
			return c.Run()
		}
		return nil
	case "odirect":
		// HELPER_COUNT reads of HELPER_BS bytes with O_DIRECT from
		// HELPER_FILE (wrapping around), each waited for.
		return odirectRead(os.Getenv("HELPER_FILE"), envInt("HELPER_BS", 4096), envInt("HELPER_COUNT", 1024))
	case "steps":
		return hostStepsHelper(envInt("HELPER_STEPS", 3), os.Getenv("HELPER_FILE"))
	case "attach":
		// For scripts/bench.sh: a cgroup with the perf events and the
		// block group on it (HELPER_ATTACH=1; "perf" or "block" for one
		// of them) or nothing (0), so that a
		// workload run in it measures only what they add. Writes the
		// cgroup path to HELPER_FILE, holds until stdin closes.
		a := os.Getenv("HELPER_ATTACH")
		return attachHelper(a == "1" || a == "perf", a == "1" || a == "block", os.Getenv("HELPER_FILE"))
	default:
		return fmt.Errorf("unknown host helper %q", mode)
	}
}

// spin keeps one CPU busy for d of wall time (never sleeping).
func spin(d time.Duration) {
	end := time.Now().Add(d)
	x := 1
	for time.Now().Before(end) {
		for i := 0; i < 1000; i++ {
			x = x*31 + i
		}
	}
	if x == 42 {
		fmt.Print("")
	}
}

func odirectRead(path string, bs, count int) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	blocks := st.Size() / int64(bs)
	if blocks == 0 {
		return fmt.Errorf("%s is smaller than one %d-byte block", path, bs)
	}
	// O_DIRECT wants an aligned buffer: mmap gives a page.
	buf, err := unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for i := 0; i < count; i++ {
		n, err := unix.Pread(int(f.Fd()), buf, (int64(i)%blocks)*int64(bs))
		if err != nil {
			return err
		}
		if n != bs {
			return fmt.Errorf("short O_DIRECT read: %d of %d bytes", n, bs)
		}
	}
	return nil
}

// diskFile makes a file of size bytes on a block device (not tmpfs: the
// test needs real block I/O), removed when the test ends.
func diskFile(t testing.TB, size int) string {
	t.Helper()
	for _, dir := range []string{"/var/tmp", "."} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) != nil || st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC || st.Type == unix.OVERLAYFS_SUPER_MAGIC {
			continue
		}
		abs, _ := filepath.Abs(dir)
		f, err := os.CreateTemp(abs, "benchhost-odirect-*")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.Remove(f.Name()) })
		chunk := make([]byte, 1<<20)
		for i := range chunk {
			chunk[i] = byte(i * 7)
		}
		for w := 0; w < size; w += len(chunk) {
			if _, err := f.Write(chunk[:min(len(chunk), size-w)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return f.Name()
	}
	t.Skip("no directory on a block device (all tmpfs/overlay)")
	return ""
}

// runHostChild runs the test binary as a host helper under s.
func runHostChild(t testing.TB, s *Session, mode string, env ...string) *os.ProcessState {
	t.Helper()
	return runChild(t, s, append([]string{hostHelperEnv + "=" + mode}, env...)...)
}

// schedstatDelay parses threadsSchedstat's "delay pcount" file.
func schedstatDelay(t testing.TB, path string) time.Duration {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d, p uint64
	if _, err := fmt.Sscan(string(data), &d, &p); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return time.Duration(d)
}

func attachHelper(perf, block bool, file string) error {
	cg, err := createCgroup()
	if err != nil {
		return err
	}
	defer cg.remove()
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	if perf {
		p := newPerfSource(cg, desc, desc("statexec_probe_group_enabled", "", "group"), os.Stderr)
		defer p.close()
		if !p.groups[0].on {
			return fmt.Errorf("perf events off: %s", p.groups[0].reason)
		}
	}
	if block {
		env := newLoadEnv(cg, desc)
		b, err := loadBlockGroup(env)
		if err != nil {
			return err
		}
		defer b.close()
	}
	if err := os.WriteFile(file, []byte(cg.path+"\n"), 0o644); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// Per-step work of the host "steps" helper: step k touches k × hostStepMB
// of fresh memory and makes k × hostStepReads O_DIRECT reads of 4 KiB.
const (
	hostStepMB    = 16
	hostStepReads = 512
)

// hostStepsHelper does the steps; after each it prints its cumulative
// ground truth ("ru_minflt reads", minflt from getrusage) and waits for a
// line on stdin, so that the test samples while it waits.
func hostStepsHelper(steps int, file string) error {
	in := bufio.NewReader(os.Stdin)
	reads := 0
	for k := 1; k <= steps; k++ {
		n := k * hostStepMB << 20
		mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
			return err
		}
		for i := 0; i < n; i += os.Getpagesize() {
			mem[i] = 1
		}
		if err := unix.Munmap(mem); err != nil {
			return err
		}
		if err := odirectRead(file, 4096, k*hostStepReads); err != nil {
			return err
		}
		reads += k * hostStepReads
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return err
		}
		fmt.Printf("%d %d\n", ru.Minflt, reads)
		if k == steps {
			return nil
		}
		if _, err := in.ReadString('\n'); err != nil {
			return err
		}
	}
	return nil
}
