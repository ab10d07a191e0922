package main

// Remote write end to end: statexec sends to a real VictoriaMetrics and a
// real Prometheus, and what they store is read back and compared with the
// metrics file, sample by sample.

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/testenv"
)

// labelKey is a canonical form of a label set (with __name__).
func labelKey(labels map[string]string) string {
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

// checkEverySample compares what a database returned with the file: the
// same series, and in each every sample at its exact millisecond with its
// value (exact for Prometheus; VictoriaMetrics keeps ~12 significant
// digits). A sample stored twice (a batch resent after a lost answer) is
// collapsed when both copies are equal, as the database's dedup does; two
// different values at one timestamp fail. It returns the samples compared.
func checkEverySample(t *testing.T, db string, got []testenv.Series, files ...*testenv.File) int {
	t.Helper()
	type point struct {
		ts int64
		v  float64
	}
	want := map[string][]point{}
	n := 0
	for _, f := range files {
		for _, s := range f.Samples {
			if math.IsNaN(s.Value) && db == "VictoriaMetrics" {
				continue // VictoriaMetrics 1.79 does not return NaN samples
			}
			l := map[string]string{"__name__": s.Name}
			for k, v := range s.Labels {
				l[k] = v
			}
			want[labelKey(l)] = append(want[labelKey(l)], point{s.TimestampMs, s.Value})
			n++
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s has %d series, the file %d", db, len(got), len(want))
	}
	same := func(a, b float64) bool {
		if db == "VictoriaMetrics" {
			return close12(a, b)
		}
		return a == b || math.IsNaN(a) && math.IsNaN(b)
	}
	for _, s := range got {
		w, ok := want[labelKey(s.Labels)]
		if !ok {
			t.Fatalf("%s: series %v is not in the file", db, s.Labels)
		}
		var pts []point
		for i, ts := range s.TimestampsMs {
			if k := len(pts); k > 0 && pts[k-1].ts == ts {
				if !same(pts[k-1].v, s.Values[i]) {
					t.Fatalf("%s: series %v has %v and %v at %d", db, s.Labels, pts[k-1].v, s.Values[i], ts)
				}
				continue
			}
			pts = append(pts, point{ts, s.Values[i]})
		}
		if len(pts) != len(w) {
			t.Fatalf("%s: series %v: %d samples, the file %d", db, s.Labels, len(pts), len(w))
		}
		for i := range w {
			if pts[i].ts != w[i].ts || !same(pts[i].v, w[i].v) {
				t.Fatalf("%s: series %v sample %d: %v@%d, file %v@%d", db, s.Labels, i, pts[i].v, pts[i].ts, w[i].v, w[i].ts)
			}
		}
	}
	return n
}

var sentLine = regexp.MustCompile(`statexec: remote write: (\d+) samples sent to \S+, (\d+) failed`)

// sentFailed reads the final remote-write line (exactly one).
func sentFailed(t *testing.T, stderr string) (sent, failed int) {
	t.Helper()
	m := sentLine.FindAllStringSubmatch(stderr, -1)
	if len(m) != 1 {
		t.Fatalf("want one final remote-write line, got %d in:\n%s", len(m), stderr)
	}
	fmt.Sscan(m[0][1], &sent)
	fmt.Sscan(m[0][2], &failed)
	return sent, failed
}

func countSamples(f *testenv.File) int { return len(f.Samples) }

// TestRemoteWriteVictoriaMetrics: a run's samples arrive exactly while it
// runs; VictoriaMetrics stopped for 3 s mid-run and restarted loses
// nothing; statexec push of example/ arrives exactly.
func TestRemoteWriteVictoriaMetrics(t *testing.T) {
	vm := testenv.StartVictoriaMetrics(t)
	url := vm.URL + "/api/v1/write"

	t.Run("live", func(t *testing.T) {
		r := statexec(t, "", []string{"SE_INTERVAL=50ms", "SE_REMOTE_WRITE_URL=" + url, "SE_LABEL_rwrun=live"}, "exec", "sleep", "1")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		f := testenv.ParseFile(t, r.file)
		sent, failed := sentFailed(t, r.stderr)
		if failed != 0 || sent != countSamples(f) {
			t.Fatalf("sent %d failed %d, file has %d samples", sent, failed, countSamples(f))
		}
		vm.Flush(t)
		n := checkEverySample(t, "VictoriaMetrics", vm.Export(t, `{rwrun="live"}`), f)
		t.Logf("%d samples of %d series arrived exactly", n, f.SeriesCount())
	})

	t.Run("stopped 3s mid-run", func(t *testing.T) {
		dir := t.TempDir()
		stop := filepath.Join(dir, "stop")
		cmd := newCmd(t, []string{"SE_INTERVAL=50ms", "SE_REMOTE_WRITE_URL=" + url, "SE_LABEL_rwrun=outage"},
			"exec", "sh", "-c", `while [ ! -e "$0" ]; do sleep 0.02; done`, stop)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Samples arrive during the run: wait for the first ones.
		deadline := time.Now().Add(15 * time.Second)
		for {
			vm.Flush(t)
			if len(vm.Export(t, `{rwrun="outage"}`)) > 0 {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("no sample arrived during the run within 15 s; stderr:\n%s", stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		// SIGTERM: VictoriaMetrics writes out what it acknowledged (with
		// SIGKILL it would lose its own last second, which no client sees).
		vm.Kill(t, syscall.SIGTERM)
		time.Sleep(3 * time.Second) // the outage being tested
		vm.Restart(t)
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if err != nil {
			t.Fatalf("statexec: %v\n%s", err, stderr.String())
		}
		f := testenv.ParseFile(t, fileOf(cmd.Env))
		sent, failed := sentFailed(t, stderr.String())
		if failed != 0 || sent != countSamples(f) {
			t.Fatalf("sent %d failed %d, file has %d samples\n%s", sent, failed, countSamples(f), stderr.String())
		}
		if c := strings.Count(stderr.String(), "retrying"); c != 1 {
			t.Errorf("want one warning about the outage, got %d:\n%s", c, stderr.String())
		}
		vm.Flush(t)
		n := checkEverySample(t, "VictoriaMetrics", vm.Export(t, `{rwrun="outage"}`), f)
		t.Logf("%d samples over a 3 s outage arrived exactly, none twice after dedup", n)
	})

	// Both sides of a sync pair stream to one database, on one time axis.
	t.Run("sync pair", func(t *testing.T) {
		addr := freePort(t)
		env := []string{"SE_INTERVAL=100ms", "SE_REMOTE_WRITE_URL=" + url, "SE_LABEL_rwrun=sync"}
		srv := startStatexec(t, append([]string{"SE_SYNC_LISTEN=" + addr}, env...), "waitStartAndStop", "sleep", "60")
		waitListening(t, addr)
		cli := startStatexec(t, env, "syncStartAndStop", "http://"+addr, "sleep", "1")
		cli.wait(t, 20*time.Second)
		srv.wait(t, 20*time.Second)
		if cli.code != 0 || srv.code != 0 {
			t.Fatalf("client exit %d, server exit %d\nclient:\n%s\nserver:\n%s", cli.code, srv.code, cli.stderr.String(), srv.stderr.String())
		}
		var files []*testenv.File
		for _, b := range []*background{srv, cli} {
			f := testenv.ParseFile(t, b.file)
			if sent, failed := sentFailed(t, b.stderr.String()); failed != 0 || sent != countSamples(f) {
				t.Fatalf("%s: sent %d failed %d, file %d", b.cmd.Args[1], sent, failed, countSamples(f))
			}
			files = append(files, f)
		}
		vm.Flush(t)
		n := checkEverySample(t, "VictoriaMetrics", vm.Export(t, `{rwrun="sync"}`), files...)
		t.Logf("sync pair: %d samples of server and client arrived exactly", n)
	})

	t.Run("push example", func(t *testing.T) {
		var files []*testenv.File
		for _, name := range []string{"example/statexec_metrics.txt", "example/statexec_metrics_server.txt"} {
			r := statexec(t, "", nil, "push", name, url)
			if r.code != 0 {
				t.Fatalf("push %s: exit %d\n%s", name, r.code, r.stderr)
			}
			f := testenv.ParseFile(t, name)
			if sent, failed := sentFailed(t, r.stderr); sent != countSamples(f) || failed != 0 {
				t.Fatalf("push %s: sent %d failed %d, file %d", name, sent, failed, countSamples(f))
			}
			files = append(files, f)
		}
		vm.Flush(t)
		got := vm.Export(t, `{job="statexec",instance=~"client|server",rwrun=""}`)
		n := checkEverySample(t, "VictoriaMetrics", got, files...)
		t.Logf("push: %d samples of example/ arrived exactly", n)
	})
}

// TestRemoteWritePrometheus: Prometheus 2.42's receiver gets example/ and
// a live run exactly; samples it refuses as too old (an old
// SE_TIME_RELATIVE) give its own message and exit status 1.
func TestRemoteWritePrometheus(t *testing.T) {
	p := testenv.StartPrometheus(t)
	// example/ first: Prometheus refuses samples an hour older than its
	// newest, so the older data must come first.
	var files []*testenv.File
	for _, name := range []string{"example/statexec_metrics.txt", "example/statexec_metrics_server.txt"} {
		r := statexec(t, "", nil, "push", name, p.WriteURL)
		if r.code != 0 {
			t.Fatalf("push %s: exit %d\n%s", name, r.code, r.stderr)
		}
		files = append(files, testenv.ParseFile(t, name))
	}
	got := p.Series(t, `{job="statexec",instance=~"client|server"}`, 400*24*time.Hour)
	n := checkEverySample(t, "Prometheus", got, files...)
	t.Logf("push: %d samples of example/ arrived exactly", n)

	r := statexec(t, "", []string{"SE_INTERVAL=50ms", "SE_REMOTE_WRITE_URL=" + p.WriteURL, "SE_LABEL_rwrun=live"}, "exec", "sleep", "1")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	f := testenv.ParseFile(t, r.file)
	if sent, failed := sentFailed(t, r.stderr); failed != 0 || sent != countSamples(f) {
		t.Fatalf("sent %d failed %d, file has %d samples", sent, failed, countSamples(f))
	}
	n = checkEverySample(t, "Prometheus", p.Series(t, `{rwrun="live"}`, time.Hour), f)
	t.Logf("live: %d samples arrived exactly", n)

	// Killed (SIGKILL) for 3 s mid-run: Prometheus keeps what it
	// acknowledged in its WAL, statexec resends the rest.
	stop := filepath.Join(t.TempDir(), "stop")
	cmd := newCmd(t, []string{"SE_INTERVAL=50ms", "SE_REMOTE_WRITE_URL=" + p.WriteURL, "SE_LABEL_rwrun=killed"},
		"exec", "sh", "-c", `while [ ! -e "$0" ]; do sleep 0.02; done`, stop)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(p.Series(t, `{rwrun="killed"}`, time.Hour)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no sample arrived during the run within 15 s; stderr:\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.Kill(t)
	time.Sleep(3 * time.Second) // the outage being tested
	p.Restart(t)
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("statexec: %v\n%s", err, stderr.String())
	}
	f = testenv.ParseFile(t, fileOf(cmd.Env))
	if sent, failed := sentFailed(t, stderr.String()); failed != 0 || sent != countSamples(f) {
		t.Fatalf("sent %d failed %d, file has %d samples\n%s", sent, failed, countSamples(f), stderr.String())
	}
	if c := strings.Count(stderr.String(), "retrying"); c != 1 {
		t.Errorf("want one warning about the outage, got %d:\n%s", c, stderr.String())
	}
	n = checkEverySample(t, "Prometheus", p.Series(t, `{rwrun="killed"}`, time.Hour), f)
	t.Logf("killed 3 s mid-run: %d samples arrived exactly, none twice", n)

	// 2024-01-01: far older than what the head takes now.
	r = statexec(t, "", []string{"SE_INTERVAL=100ms", "SE_TIME_RELATIVE=1704067200000", "SE_REMOTE_WRITE_URL=" + p.WriteURL,
		"SE_REMOTE_WRITE_TIMEOUT=5", "SE_LABEL_rwrun=old"}, "exec", "true")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1 (samples refused)\n%s", r.code, r.stderr)
	}
	f = testenv.ParseFile(t, r.file)
	sent, failed := sentFailed(t, r.stderr)
	if sent+failed != countSamples(f) || failed == 0 {
		t.Fatalf("sent %d + failed %d != %d samples in the file", sent, failed, countSamples(f))
	}
	for _, want := range []string{"HTTP 400 Bad Request: out of bounds", "SE_TIME_RELATIVE"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if c := strings.Count(r.stderr, "refused"); c != 1 {
		t.Errorf("refusal shown %d times:\n%s", c, r.stderr)
	}
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.Contains(l, "remote write") {
			t.Log(l)
		}
	}
}

// TestRemoteWriteUnreachable: the command runs as without remote write,
// one warning, the metrics file complete, exit 1 only if the command
// succeeded.
func TestRemoteWriteUnreachable(t *testing.T) {
	url := "http://127.0.0.1:9/api/v1/write" // discard port: nothing listens
	marker := filepath.Join(t.TempDir(), "ran")
	env := []string{"SE_INTERVAL=50ms", "SE_REMOTE_WRITE_URL=" + url, "SE_REMOTE_WRITE_TIMEOUT=0.5"}
	r := statexec(t, "", env, "exec", "sh", "-c", `echo ran > "$0"; sleep 0.3`, marker)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s", r.code, r.stderr)
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "ran\n" {
		t.Fatalf("the command did not run: %v %q", err, b)
	}
	f := testenv.ParseFile(t, r.file)
	sent, failed := sentFailed(t, r.stderr)
	if sent != 0 || failed != countSamples(f) {
		t.Fatalf("sent %d failed %d, file %d samples", sent, failed, countSamples(f))
	}
	if c := strings.Count(r.stderr, "retrying"); c != 1 {
		t.Errorf("want one warning, got %d:\n%s", c, r.stderr)
	}
	// The summary tells the command's own code; only the exit status is 1.
	if !strings.Contains(r.stderr, "command exited with code 0") {
		t.Errorf("summary does not say the command succeeded:\n%s", r.stderr)
	}
	if st := statusSequence(f); len(st) == 0 || st[len(st)-1] != 2 {
		t.Errorf("command status sequence %v", st)
	}
	// The command's own failure code is kept.
	r = statexec(t, "", env, "exec", "sh", "-c", "exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want the command's 3\n%s", r.code, r.stderr)
	}
}
