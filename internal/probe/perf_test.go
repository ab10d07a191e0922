package probe

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestScalePerfCount(t *testing.T) {
	for _, c := range []struct{ value, enabled, running, want uint64 }{
		{1000, 100, 100, 1000}, // counted all along: exact
		{1000, 100, 50, 2000},  // half the time: doubled
		{1000, 300, 100, 3000}, // a third
		{999, 200, 150, 1332},  // perf: (u64)(999 * 200.0 / 150)
		{5, 100, 0, 0},         // never ran: nothing known
		{0, 0, 0, 0},           // not enabled yet
		{1000, 100, 120, 1000}, // running > enabled (rounding): as is
		{1 << 62, 1 << 20, 1 << 19, 1 << 63},
		{math.MaxUint64 / 2, 10, 1, math.MaxUint64}, // saturates
	} {
		if got := scalePerfCount(c.value, c.enabled, c.running); got != c.want {
			t.Errorf("scalePerfCount(%d, %d, %d) = %d, want %d", c.value, c.enabled, c.running, got, c.want)
		}
	}
	g := perfGroup{events: []perfEvent{{enabled: 100, running: 100}, {enabled: 100, running: 25}, {}}}
	if r := g.runningRatio(); r != 0.25 {
		t.Errorf("runningRatio = %v, want 0.25 (the lowest)", r)
	}
}

func TestParseCPUList(t *testing.T) {
	got, err := parseCPUList("0-3,5,7-8")
	if err != nil || fmt.Sprint(got) != "[0 1 2 3 5 7 8]" {
		t.Errorf("got %v, %v", got, err)
	}
	for _, bad := range []string{"", "a", "3-1", "0-x"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q): want an error", bad)
		}
	}
}

// TestPerfFaults: 256 MiB of fresh anonymous memory touched page by page
// gives one minor fault per page (small pages: the helper asks for no
// transparent huge pages), the process's own getrusage agrees.
func TestPerfFaults(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		const mb = 256
		touchFile := filepath.Join(t.TempDir(), "touch-faults")
		ps := runHostChild(t, s, "touch", "HELPER_MB="+strconv.Itoa(mb), "HELPER_FAULTS_FILE="+touchFile)
		b, err := os.ReadFile(touchFile)
		if err != nil {
			t.Fatal(err)
		}
		touch, err := strconv.ParseFloat(string(b), 64)
		if err != nil {
			t.Fatalf("touch faults %q: %v", b, err)
		}
		m := metrics(t, s)
		if m["statexec_probe_group_enabled{group=perf_sw}"] != 1 {
			t.Fatalf("perf_sw off as root: %v", m)
		}
		minor := m["statexec_process_page_faults_total{kind=minor}"]
		pages := float64(mb<<20) / float64(os.Getpagesize())
		ru := float64(rusage(ps).Minflt)
		t.Logf("%s: minor faults %.0f, pages %.0f, ru_minflt %.0f (%.0f of them in the touch), major %.0f, migrations %.0f", mode, minor, pages, ru, touch,
			m["statexec_process_page_faults_total{kind=major}"], m["statexec_process_cpu_migrations_total"])
		// One fault per page: the touch's own count, and statexec's
		// less the faults the process counted outside the touch (the
		// Go runtime's, more under the race detector).
		if !within(touch, pages, 0.05) {
			t.Errorf("the touch's own minor faults = %.0f, want %.0f pages ±5%%", touch, pages)
		}
		if outside := ru - touch; !within(minor-outside, pages, 0.05) {
			t.Errorf("minor faults = %.0f, less %.0f outside the touch, want %.0f pages ±5%%", minor, outside, pages)
		}
		if !within(minor, ru, 0.02) {
			t.Errorf("minor faults = %.0f, want the command's ru_minflt %.0f ±2%%", minor, ru)
		}
		if r := m["statexec_process_perf_events_running_ratio{group=perf_sw}"]; r != 1 {
			t.Errorf("software events running ratio = %v, want 1 (never multiplexed)", r)
		}
	})
}

// TestPerfHardwareAbsent: without a PMU (this VM), the hardware series are
// absent and the info series says why; with one, they are there.
func TestPerfHardware(t *testing.T) {
	requireRoot(t)
	s, err := Start(Options{Mode: ModePlain})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	runHostChild(t, s, "spin", "HELPER_LOOPS=1", "HELPER_MS=100")
	m := metrics(t, s)
	hw := []string{"statexec_process_cpu_cycles_total", "statexec_process_instructions_total", "statexec_process_cache_misses_total", "statexec_process_branch_misses_total"}
	if m["statexec_probe_group_enabled{group=perf_hw}"] == 1 {
		for _, name := range hw {
			if _, ok := m[name]; !ok {
				t.Errorf("perf_hw on but %s missing", name)
			}
		}
		if m["statexec_process_instructions_total"] < 1e6 {
			t.Errorf("instructions = %v for 100 ms of spinning", m["statexec_process_instructions_total"])
		}
		t.Skip("this machine has a PMU: hardware counters present (their accuracy against perf stat is not tested here)")
	}
	for _, name := range hw {
		if _, ok := m[name]; ok {
			t.Errorf("%s present although perf_hw is off", name)
		}
	}
	// The kernel's own word on the PMU: perf_event_open of cycles.
	if m["statexec_probe_group_disabled_info{group=perf_hw,reason=no_pmu}"] != 1 {
		t.Errorf("perf_hw off without statexec_probe_group_disabled_info{reason=no_pmu}: %v", m)
	}
	if _, ok := m["statexec_probe_group_disabled_info{group=perf_sw,reason=no_pmu}"]; ok {
		t.Error("perf_sw listed as off")
	}
}

// TestPerfMatchesPerfStat runs `perf stat -a -G <the run's cgroup>` over the
// same run and compares its counts of page faults and CPU migrations.
func TestPerfMatchesPerfStat(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("perf"); err != nil {
		t.Skip("perf not installed (scripts/install-deps.sh installs it)")
	}
	s, err := Start(Options{Mode: ModePlain})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mount, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(mount, s.CgroupPath())
	if err != nil {
		t.Fatal(err)
	}
	stop, result := perfStat(t, rel, "page-faults", "cpu-migrations")
	ps := runHostChild(t, s, "touch", "HELPER_MB=64", "HELPER_SPIN_LOOPS=4", "HELPER_SPIN_MS=700")
	stop()
	want := result()
	m := metrics(t, s)
	faults := m["statexec_process_page_faults_total{kind=minor}"] + m["statexec_process_page_faults_total{kind=major}"]
	migr := m["statexec_process_cpu_migrations_total"]
	t.Logf("statexec: faults %.0f, migrations %.0f; perf stat: %v; ru_minflt+majflt %d", faults, migr, want, rusage(ps).Minflt+rusage(ps).Majflt)
	for _, c := range []struct {
		name string
		got  float64
	}{{"page-faults", faults}, {"cpu-migrations", migr}} {
		w, ok := want[c.name]
		if !ok {
			t.Fatalf("perf stat gave no %s", c.name)
		}
		// 2%, and at least 2 events for the small migration counts.
		if math.Abs(c.got-w) > max(0.02*w, 2) {
			t.Errorf("%s: statexec %.0f, perf stat %.0f (want within 2%%)", c.name, c.got, w)
		}
	}
	if migr == 0 {
		t.Error("no CPU migrations with 4 spinning processes on fewer CPUs: the workload proves nothing")
	}
}

// perfStat starts `perf stat -a -G cgroup` with its counters disabled, then
// enables them through its control fifo and waits for the ack: from the
// return on, it counts. stop ends it (SIGINT); result parses its counts.
func perfStat(t *testing.T, cgroup string, events ...string) (stop func(), result func() map[string]float64) {
	t.Helper()
	dir := t.TempDir()
	ctl, ack, out := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack"), filepath.Join(dir, "out")
	for _, f := range []string{ctl, ack} {
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	groups := strings.TrimSuffix(strings.Repeat(cgroup+",", len(events)), ",")
	cmd := exec.Command("perf", "stat", "-D", "-1", "--control", "fifo:"+ctl+","+ack, "-a",
		"-e", strings.Join(events, ","), "-G", groups, "-x,", "-o", out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// done is closed when perf stat exited; waitErr is then its status.
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	// Opening a fifo blocks until the other side opens it: perf opens
	// both once its events are set up.
	opened := make(chan error, 1)
	var ctlF, ackF *os.File
	go func() {
		var err error
		if ctlF, err = os.OpenFile(ctl, os.O_WRONLY, 0); err == nil {
			ackF, err = os.Open(ack)
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-done:
		t.Fatalf("perf stat exited: %v: %s", waitErr, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("perf stat did not open its control fifo in 20 s")
	}
	defer ctlF.Close()
	if _, err := ctlF.WriteString("enable\n"); err != nil {
		t.Fatal(err)
	}
	acked := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(ackF).ReadString('\n')
		acked <- line
	}()
	select {
	case line := <-acked:
		if strings.TrimSpace(line) != "ack" {
			t.Fatalf("perf stat control answered %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("perf stat did not ack enable in 10 s")
	}
	_ = ackF.Close()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("perf stat did not stop on SIGINT")
		}
	}
	result = func() map[string]float64 {
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		res := map[string]float64{}
		// CSV: value,unit,event,cgroup,run time,percentage,...
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 4 || f[3] != cgroup {
				continue
			}
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				res[f[2]] = v
			}
		}
		return res
	}
	return stop, result
}
