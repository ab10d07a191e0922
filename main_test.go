package main

// End-to-end tests: they build statexec, run it on real commands, and read
// its files with real VictoriaMetrics and promtool (scripts/install-deps.sh
// installs them; as root a missing tool fails the test, otherwise it skips).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/metricsfile"
	"github.com/statexec/statexec/internal/testenv"
)

var (
	statexecBin string
	// raceLogs is where statexec built with the race detector writes its
	// reports (GORACE log_path); "" without -race.
	raceLogs string
)

func TestMain(m *testing.M) {
	if os.Getenv(denySubreaperEnv) != "" && len(os.Args) > 1 {
		err := execDenyingSubreaper(os.Args[1:])
		fmt.Fprintf(os.Stderr, "exec %s without subreaper: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "statexec-e2e-")
	if err != nil {
		panic(err)
	}
	statexecBin = filepath.Join(dir, "statexec")
	build := []string{"build", "-o", statexecBin}
	if raceBuild {
		// internal/modes has no unit tests: these end-to-end runs are
		// what exercise it, so under -race statexec is built with the
		// race detector too, and any report fails the test binary.
		build = append(build, "-race")
		raceLogs = filepath.Join(dir, "race")
		if err := os.Mkdir(raceLogs, 0o755); err != nil {
			panic(err)
		}
		os.Setenv("GORACE", "log_path="+filepath.Join(raceLogs, "statexec")) // for commands that inherit the environment
	}
	if out, err := exec.Command("go", append(build, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build statexec: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if reports := raceReports(); reports != "" {
		fmt.Fprintf(os.Stderr, "FAIL: data races in statexec:\n%s", reports)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceReports returns the race detector's reports from every statexec run.
func raceReports() string {
	if raceLogs == "" {
		return ""
	}
	files, _ := filepath.Glob(filepath.Join(raceLogs, "statexec.*"))
	var all strings.Builder
	for _, f := range files {
		b, _ := os.ReadFile(f)
		all.Write(b)
	}
	return all.String()
}

// result is one finished statexec run.
type result struct {
	code           int
	stdout, stderr string
	file           string
	wall           time.Duration
}

// statexec runs the binary with env added to a clean SE_* environment.
func statexec(t *testing.T, stdin string, env []string, args ...string) result {
	t.Helper()
	cmd := newCmd(t, env, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), wall: time.Since(start), file: fileOf(cmd.Env)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run statexec: %v", err)
	}
	return r
}

func newCmd(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(statexecBin, args...)
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"SE_METRICS_FILE=" + filepath.Join(t.TempDir(), "metrics.txt")}
	if g := os.Getenv("GORACE"); g != "" {
		base = append(base, "GORACE="+g)
	}
	cmd.Env = append(base, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func fileOf(env []string) string {
	f := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "SE_METRICS_FILE="); ok {
			f = v
		}
	}
	return f
}

// statusSequence is the distinct successive values of statexec_command_status.
func statusSequence(f *testenv.File) []float64 {
	var seq []float64
	for _, s := range f.Series("statexec_command_status", nil) {
		if len(seq) == 0 || seq[len(seq)-1] != s.Value {
			seq = append(seq, s.Value)
		}
	}
	return seq
}

func TestExecFileReadByVictoriaMetricsAndPromtool(t *testing.T) {
	testenv.Require(t, "victoria-metrics", "promtool")
	const origin = int64(1704067200000) // 2024-01-01
	for _, format := range []string{"openmetrics", "prometheus"} {
		t.Run(format, func(t *testing.T) {
			r := statexec(t, "", []string{
				"SE_INTERVAL=200ms", fmt.Sprintf("SE_TIME_RELATIVE=%d", origin), "SE_METRICS_FORMAT=" + format,
				"SE_INSTANCE=bench \"one\"\\", "SE_LABEL_note=line1\nline2 ünï", "SE_LABEL_run=42", "SE_LABEL_empty=",
			}, "--label", "blank=", "exec", "sh", "-c", "sleep 1.1; exit 3")
			if r.code != 3 {
				t.Fatalf("exit code %d, want 3; stderr:\n%s", r.code, r.stderr)
			}
			f := testenv.ParseFile(t, r.file)
			if f.OpenMetrics != (format == "openmetrics") {
				t.Fatalf("format: OpenMetrics=%v", f.OpenMetrics)
			}
			if seq := statusSequence(f); fmt.Sprint(seq) != "[0 1 2]" {
				t.Fatalf("status sequence %v, want [0 1 2]", seq)
			}
			first, last := int64(1<<62), int64(0)
			for _, s := range f.Samples {
				first, last = min(first, s.TimestampMs), max(last, s.TimestampMs)
				if s.Labels["instance"] != "bench \"one\"\\" || s.Labels["job"] != "statexec" ||
					s.Labels["role"] != "standalone" || s.Labels["note"] != "line1\nline2 ünï" || s.Labels["run"] != "42" {
					t.Fatalf("labels of %s: %v", s.Name, s.Labels)
				}
				// Empty label values are absent labels (VictoriaMetrics
				// and promtool drop them): not in the file either.
				if _, has := s.Labels["empty"]; has {
					t.Fatalf("empty label empty on %s", s.Name)
				}
				if _, has := s.Labels["blank"]; has {
					t.Fatalf("empty label blank on %s", s.Name)
				}
			}
			// Timestamps are real offsets from the origin: the run took
			// ~1.1 s, sampled every 200 ms, so ~7 ticks plus start/end.
			if first < origin || first > origin+100 || last-first < 1000 || last-first > 3000 {
				t.Fatalf("timestamps span %d..%d, want origin %d and ~1.1 s", first, last, origin)
			}
			status := f.Series("statexec_command_status", nil)
			if len(status) < 6 || len(status) > 12 {
				t.Fatalf("%d status samples for a 1.1 s run at 200 ms", len(status))
			}
			for _, name := range []string{"statexec_cpu_seconds_total", "statexec_memory_total_bytes", "statexec_memory_used_ratio",
				"statexec_network_received_bytes_total", "statexec_disk_read_bytes_total", "statexec_collection_duration_seconds"} {
				if len(f.Series(name, nil)) == 0 {
					t.Errorf("no samples of %s", name)
				}
			}
			if lo := f.Series("statexec_network_sent_bytes_total", map[string]string{"interface": "lo"}); len(lo) == 0 {
				t.Errorf("no loopback interface series")
			}

			vm := testenv.StartVictoriaMetrics(t)
			vm.Import(t, r.file)
			checkVMHasEverySample(t, vm, f)
			if format == "openmetrics" { // promtool and Python read OpenMetrics only
				if n := testenv.PromtoolBackfill(t, r.file); n != len(f.Samples) {
					t.Fatalf("promtool backfilled %d samples, file has %d", n, len(f.Samples))
				}
				checkPythonHasEverySample(t, r.file, f)
			}
		})
	}
}

// checkVMHasEverySample compares every sample of the file with what
// VictoriaMetrics gives back: same series, values and timestamps.
func checkVMHasEverySample(t *testing.T, vm *testenv.VM, f *testenv.File) {
	t.Helper()
	type point struct {
		ts int64
		v  float64
	}
	want := map[string][]point{}
	key := func(labels map[string]string) string {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%q,", k, labels[k])
		}
		return b.String()
	}
	for _, s := range f.Samples {
		l := map[string]string{"__name__": s.Name}
		for k, v := range s.Labels {
			l[k] = v
		}
		want[key(l)] = append(want[key(l)], point{s.TimestampMs, s.Value})
	}
	got := vm.Export(t, `{job="statexec"}`)
	if len(got) != len(want) {
		t.Fatalf("VictoriaMetrics has %d series, the file %d", len(got), len(want))
	}
	for _, s := range got {
		w, ok := want[key(s.Labels)]
		if !ok {
			t.Fatalf("unexpected series %v", s.Labels)
		}
		if len(w) != len(s.TimestampsMs) {
			t.Fatalf("series %v: %d points in VM, %d in file", s.Labels, len(s.TimestampsMs), len(w))
		}
		for i := range w {
			// VM keeps ~12 significant digits.
			if s.TimestampsMs[i] != w[i].ts || !close12(s.Values[i], w[i].v) {
				t.Fatalf("series %v point %d: VM %v@%d, file %v@%d", s.Labels, i, s.Values[i], s.TimestampsMs[i], w[i].v, w[i].ts)
			}
		}
	}
}

// checkPythonHasEverySample reads the file with Python's prometheus_client
// and compares every sample with the file: same series, values and
// timestamps, exactly.
func checkPythonHasEverySample(t *testing.T, path string, f *testenv.File) {
	t.Helper()
	key := func(name string, labels map[string]string, ts int64, v float64) string {
		return fmt.Sprintf("%s %v@%d", metricsfile.Key(name, labels), v, ts)
	}
	want := map[string]int{}
	for _, s := range f.Samples {
		want[key(s.Name, s.Labels, s.TimestampMs, s.Value)]++
	}
	got := testenv.PythonParse(t, path)
	if len(got) != len(f.Samples) {
		t.Errorf("python prometheus_client read %d samples, the file has %d", len(got), len(f.Samples))
	}
	for _, s := range got {
		k := key(s.Name, s.Labels, s.TimestampMs, s.Value)
		if !s.Exact || want[k] == 0 {
			t.Fatalf("python prometheus_client read %s (timestamp %s ms), not in the file", k, s.Raw)
		}
		want[k]--
	}
}

func close12(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	m := max(a, -a, b, -b)
	return d <= m*1e-11
}

// TestSnapshotPassesPromtoolLint lints one snapshot (the first point of
// every series, without timestamps) with promtool check metrics.
func TestSnapshotPassesPromtoolLint(t *testing.T) {
	testenv.Require(t, "promtool")
	r := statexec(t, "", []string{"SE_METRICS_FORMAT=prometheus"}, "exec", "true")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	b, err := os.ReadFile(r.file)
	if err != nil {
		t.Fatal(err)
	}
	var snap strings.Builder
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(line, "#") {
			snap.WriteString(line + "\n")
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		series := line[:strings.LastIndexByte(line[:i], ' ')]
		if !seen[series] {
			seen[series] = true
			snap.WriteString(line[:i] + "\n")
		}
	}
	if len(seen) < 20 {
		t.Fatalf("snapshot of only %d series", len(seen))
	}
	testenv.PromtoolCheckMetrics(t, snap.String())
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec.sh")
	os.WriteFile(noexec, []byte("#!/bin/sh\necho hi\n"), 0o644)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"exec", "true"}, 0, ""},
		{[]string{"exec", "sh", "-c", "exit 42"}, 42, ""},
		{[]string{"exec", "sh", "-c", "kill -KILL $$"}, 128 + 9, ""},
		{[]string{"exec", "sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{[]string{"exec", "no-such-command-xyz"}, 127, "command not found"},
		{[]string{"exec", noexec}, 126, "permission denied"},
		{[]string{"frobnicate", "true"}, 2, `unknown mode "frobnicate"`},
		{[]string{"exec"}, 2, "needs a command"},
		{[]string{}, 2, "missing mode"},
	}
	for _, c := range cases {
		r := statexec(t, "", []string{"SE_SUMMARY=0"}, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("%v: exit %d stderr %q, want %d and %q", c.args, r.code, r.stderr, c.code, c.msg)
		}
		if c.code == 2 && !strings.Contains(r.stderr, "Usage:") {
			t.Errorf("%v: no usage on stderr", c.args)
		}
		_, err := os.Stat(r.file)
		if ran := err == nil; ran != (c.code != 2 && c.code != 126 && c.code != 127) {
			t.Errorf("%v: metrics file written = %v", c.args, ran)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := statexec(t, "", nil, "--help")
	for _, want := range []string{"exec", "waitStart", "waitStartAndStop", "syncStart", "syncStartAndStop", "recover",
		"SE_METRICS_FILE", "SE_INSTANCE", "SE_TIME_RELATIVE", "SE_WAIT_TIME_BEFORE_COMMAND", "SE_WAIT_TIME_AFTER_COMMAND",
		"SE_LABEL_", "SE_INTERVAL", "SE_METRICS_FORMAT", "SE_PROBES", "SE_SUMMARY", "SE_SYNC_LISTEN", "SE_SYNC_TOKEN",
		"SE_SYNC_TIMEOUT", "SE_STOP_GRACE", "SE_RUNQUEUE_HISTOGRAM", "--file", "--label",
		"empty string counts as unset", "SE_METRICS_FILE= writes /tmp/statexec_metrics.txt",
		"A label with an empty value is left out of the file"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	if r.code != 0 {
		t.Errorf("help exit %d", r.code)
	}
	if r := statexec(t, "", nil, "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "statexec ") {
		t.Errorf("version: %d %q", r.code, r.stdout)
	}
}

func TestStdinStdoutPassThrough(t *testing.T) {
	in := strings.Repeat("line of input\n", 10000)
	r := statexec(t, in, []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", "cat; echo err >&2")
	if r.code != 0 || r.stdout != in || r.stderr != "err\n" {
		t.Fatalf("exit %d, %d bytes out (want %d), stderr %q", r.code, len(r.stdout), len(in), r.stderr)
	}
}

// TestBadInputRunsNothing: a bad configuration exits 2 before the command
// runs, and leaves an existing metrics file alone.
func TestBadInputRunsNothing(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	existing := filepath.Join(dir, "old.txt")
	os.WriteFile(existing, []byte("old run"), 0o644)
	for _, env := range [][]string{
		{"SE_METRICS_FILE=" + filepath.Join(dir, "nodir", "m.txt")},
		{"SE_METRICS_FILE=" + existing, "SE_TIME_RELATIVE=yesterday"},
		{"SE_METRICS_FILE=" + existing, "SE_WAIT_TIME_AFTER_COMMAND=-3"},
		{"SE_METRICS_FILE=" + existing, "SE_LABEL_instance=x"},
		{"SE_METRICS_FILE=" + existing, "SE_LABEL_role=x"},
	} {
		r := statexec(t, "", env, "exec", "touch", marker)
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") > 1 {
			t.Errorf("%v: exit %d, stderr %q", env, r.code, r.stderr)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("%v: the command ran", env)
		}
		if b, _ := os.ReadFile(existing); string(b) != "old run" {
			t.Fatalf("%v: existing file changed to %q", env, b)
		}
	}
}

// TestNoWaitForTickAfterEnd: with a 5 s interval a quick command must not
// keep statexec for the next tick.
func TestNoWaitForTickAfterEnd(t *testing.T) {
	r := statexec(t, "", []string{"SE_INTERVAL=5s"}, "exec", "true")
	if r.code != 0 || r.wall > 3*time.Second {
		t.Fatalf("exit %d after %s", r.code, r.wall)
	}
	f := testenv.ParseFile(t, r.file)
	if seq := statusSequence(f); fmt.Sprint(seq) != "[0 1 2]" {
		t.Fatalf("status %v", seq)
	}
}

// TestFallbackWithoutCapabilities: with every capability dropped the eBPF
// probes cannot load; the run still succeeds in plain mode, says so in one
// line, and keeps the command's exit code. SE_PROBES=ebpf refuses to run.
func TestFallbackWithoutCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping capabilities is only meaningful as root")
	}
	testenv.Require(t, "setpriv")
	drop := []string{"--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"}
	file := filepath.Join(t.TempDir(), "m.txt")
	cmd := exec.Command("setpriv", append(drop, statexecBin, "exec", "sh", "-c", "exit 5")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SE_METRICS_FILE=" + file, "SE_SUMMARY=0"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("exit %v; stderr:\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "eBPF probes unavailable") || !strings.Contains(lines[0], "plain") {
		t.Fatalf("want one notice line, got:\n%s", stderr.String())
	}
	f := testenv.ParseFile(t, file)
	if len(f.Series("statexec_probe_info", map[string]string{"backend": "plain"})) == 0 {
		t.Fatal("no statexec_probe_info{backend=\"plain\"}")
	}
	if len(f.Series("statexec_process_cpu_seconds_total", nil)) == 0 {
		t.Fatal("no plain per-process metrics")
	}
	if len(f.Series("statexec_process_network_sent_bytes_total", nil)) != 0 {
		t.Fatal("eBPF network metrics in plain mode")
	}

	marker := filepath.Join(t.TempDir(), "ran")
	cmd = exec.Command("setpriv", append(drop, statexecBin, "exec", "touch", marker)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SE_METRICS_FILE=" + file, "SE_PROBES=ebpf"}
	out, err := cmd.CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("SE_PROBES=ebpf without capabilities: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran")
	}
}
