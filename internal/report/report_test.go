package report

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// synthetic writes an OpenMetrics file of a run: status 0 until startMs,
// 1 until endMs, then 2; the command's CPU user time grows by cpuPerTick a
// tick; a run-queue histogram gains one observation in (1ms, 2ms] a tick.
func synthetic(t *testing.T, dir, name, role string, firstMs, startMs, endMs, lastMs, tickMs int64, cpuPerTick float64) string {
	t.Helper()
	var b strings.Builder
	lbl := fmt.Sprintf(`instance="h",job="statexec",role="%s"`, role)
	sec := func(ms int64) string { return fmt.Sprintf("%d.%03d", ms/1000, ms%1000) }
	var ticks []int64
	for ts := firstMs; ts <= lastMs; ts += tickMs {
		ticks = append(ticks, ts)
	}
	b.WriteString("# HELP statexec_command_status State.\n# TYPE statexec_command_status gauge\n")
	for _, ts := range ticks {
		st := 0
		if ts >= endMs {
			st = 2
		} else if ts >= startMs {
			st = 1
		}
		fmt.Fprintf(&b, "statexec_command_status{%s} %d %s\n", lbl, st, sec(ts))
	}
	b.WriteString("# HELP statexec_process_cpu_seconds CPU.\n# TYPE statexec_process_cpu_seconds counter\n")
	for _, mode := range []string{"system", "user"} {
		for i, ts := range ticks {
			v := 0.0
			if mode == "user" {
				v = float64(i) * cpuPerTick
			}
			fmt.Fprintf(&b, "statexec_process_cpu_seconds_total{%s,mode=\"%s\"} %g %s\n", lbl, mode, v, sec(ts))
		}
	}
	b.WriteString("# HELP statexec_process_sched_runqueue_latency_seconds Latency.\n# TYPE statexec_process_sched_runqueue_latency_seconds histogram\n")
	for _, le := range []string{"0.001", "0.002", "+Inf"} {
		for i, ts := range ticks {
			v := i
			if le == "0.001" {
				v = 0
			}
			fmt.Fprintf(&b, "statexec_process_sched_runqueue_latency_seconds_bucket{%s,le=\"%s\"} %d %s\n", lbl, le, v, sec(ts))
		}
	}
	b.WriteString("# HELP statexec_future_thing A series no panel knows.\n# TYPE statexec_future_thing gauge\n")
	for i, ts := range ticks {
		fmt.Fprintf(&b, "statexec_future_thing{%s,collector=\"x\"} %d %s\n", lbl, i, sec(ts))
	}
	b.WriteString("# EOF\n")
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func row(t *testing.T, rep *Report, label string) Row {
	t.Helper()
	for _, r := range rep.Summary {
		if r.Label == label {
			return r
		}
	}
	t.Fatalf("no summary row %q", label)
	return Row{}
}

func TestSummaryAndAxisOfTwoRuns(t *testing.T) {
	dir := t.TempDir()
	// Run A: 1 s wait, command from 1 s to 5 s, 1 s after; 0.5 s of CPU
	// per 1 s tick. Run B, an hour later: command from 0.5 s to 2.5 s,
	// 0.25 s per tick.
	a := synthetic(t, dir, "a.txt", "standalone", 1_704_067_200_000, 1_704_067_201_000, 1_704_067_205_000, 1_704_067_206_000, 1000, 0.5)
	b := synthetic(t, dir, "b.txt", "standalone", 1_704_070_800_000, 1_704_070_800_500, 1_704_070_802_500, 1_704_070_803_500, 500, 0.125)
	runs, err := Load([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	rep := Build(runs, MaxPoints)
	if rep.SyncPair {
		t.Fatal("two standalone runs an hour apart taken for a sync pair")
	}
	if w := row(t, rep, "wall time").Values; w[0] != 4 || w[1] != 2 {
		t.Fatalf("wall time %v, want [4 2]", w)
	}
	// A: 7 ticks (0..6 s) -> 6 * 0.5 = 3 s; B: 8 ticks -> 7 * 0.125.
	if u := row(t, rep, "CPU user").Values; u[0] != 3 || u[1] != 0.875 {
		t.Fatalf("CPU user %v, want [3 0.875]", u)
	}
	if c := row(t, rep, "CPU average").Values; c[0] != 0.75 || c[1] != 0.4375 {
		t.Fatalf("CPU average %v, want [0.75 0.4375]", c)
	}
	// Every observation is in (1ms, 2ms]: p50 is its middle, p99 near its end.
	if p := row(t, rep, "run-queue latency p50").Values; math.Abs(p[0]-0.0015) > 1e-12 {
		t.Fatalf("p50 %v, want 0.0015", p)
	}
	if got := row(t, rep, "CPU user").Ratios(); got[1] != "0.29×" {
		t.Fatalf("ratio %q, want 0.29× (0.875/3)", got[1])
	}
	// Both runs start their command at 0 s on the page.
	cpu := panelByID(t, rep, "cmd-cpu")
	for _, s := range cpu.Series {
		if s.Label == "a.txt: user" || s.Label == "b.txt: user" {
			first := -1.0
			for i, v := range s.Values {
				if !math.IsNaN(v) {
					first = cpu.X[i]
					break
				}
			}
			// Rates start at the second sample: A's is its start (1 s
			// after the first), B's too (0.5 s after).
			if first != 0 {
				t.Fatalf("%s first rate at %v s, want 0 (the command's start)", s.Label, first)
			}
			for i, v := range s.Values {
				perTick := map[string]float64{"a.txt: user": 0.5, "b.txt: user": 0.25}[s.Label]
				if !math.IsNaN(v) && math.Abs(v-perTick) > 1e-9 {
					t.Fatalf("%s rate %v at %v s, want %v cores", s.Label, v, cpu.X[i], perTick)
				}
			}
		}
	}
	// Every series of every file is on some panel.
	for _, r := range runs {
		for _, s := range r.file.Series {
			if !r.drawn[s] {
				t.Errorf("%s: series %s on no panel", r.Name, s.Name)
			}
		}
	}
	if p := panelByID(t, rep, "other-3"); !strings.Contains(p.Title, "statexec_future_thing") {
		t.Fatalf("unknown family's panel: %q", p.Title)
	}
	for _, p := range rep.Panels {
		if p.ID == "cmd-rss" || p.ID == "host-cpu" {
			t.Fatalf("panel %s drawn without data", p.ID)
		}
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"wall time", "4.000 s", "2.000 s", "0.50×", "run 2 / run 1"} {
		if !strings.Contains(text.String(), want) {
			t.Fatalf("text summary lacks %q:\n%s", want, text.String())
		}
	}
}

// TestEveryPanelSpansTheWholeRun: the charts share one zoom, so a rate
// panel (no point at the first sample) must not start later than a gauge
// panel, or its range would hide the gauges' first samples.
func TestEveryPanelSpansTheWholeRun(t *testing.T) {
	dir := t.TempDir()
	a := synthetic(t, dir, "a.txt", "standalone", 1_704_067_200_000, 1_704_067_201_000, 1_704_067_205_000, 1_704_067_206_000, 1000, 0.5)
	runs, err := Load([]string{a})
	if err != nil {
		t.Fatal(err)
	}
	rep := Build(runs, MaxPoints)
	// The command starts 1 s after the first sample and the file ends 1 s
	// after the command's 4 s.
	for _, p := range rep.Panels {
		if len(p.X) == 0 || p.X[0] != -1 || p.X[len(p.X)-1] != 5 {
			t.Errorf("panel %s spans %v, want -1 s .. 5 s", p.ID, p.X)
		}
	}
}

func panelByID(t *testing.T, rep *Report, id string) Panel {
	t.Helper()
	for _, p := range rep.Panels {
		if p.ID == id {
			return p
		}
	}
	t.Fatalf("no panel %s", id)
	return Panel{}
}

func TestSyncPairSharesTheRealAxis(t *testing.T) {
	dir := t.TempDir()
	// Server waits 3 s for /start; the client starts 1 ms later.
	srv := synthetic(t, dir, "server.txt", "server", 1_704_067_197_000, 1_704_067_200_000, 1_704_067_204_000, 1_704_067_205_000, 500, 0.1)
	cli := synthetic(t, dir, "client.txt", "client", 1_704_067_199_001, 1_704_067_200_001, 1_704_067_203_001, 1_704_067_203_001, 500, 0.1)
	runs, err := Load([]string{cli, srv})
	if err != nil {
		t.Fatal(err)
	}
	rep := Build(runs, MaxPoints)
	if !rep.SyncPair {
		t.Fatal("server and client of one run not seen as a sync pair")
	}
	if rep.offsets[0] != rep.offsets[1] || rep.offsets[0] != 1_704_067_200_000 {
		t.Fatalf("offsets %v, want both at the server's start", rep.offsets)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	for _, c := range []struct{ name, text, want string }{
		{"empty.txt", "", "empty.txt: empty file"},
		{"other.txt", "# HELP x X.\n# TYPE x gauge\nx 1 1704067200\n# EOF\n", "no statexec series"},
		{"bad.txt", "# HELP statexec_a A.\n# TYPE statexec_a gauge\nstatexec_a 1 1704067200\nstatexec_a x 1704067201\n# EOF\n", `bad.txt: line 4 (OpenMetrics text): invalid number "x"`},
		{"html.txt", "<html>\n", "html.txt: line 1"},
	} {
		_, err := Load([]string{write(c.name, c.text)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	if err := CheckOutput(filepath.Join(dir, "r.html")); err != nil {
		t.Fatal(err)
	}
	if err := CheckOutput(filepath.Join(dir, "missing", "r.html")); err == nil {
		t.Fatal("missing directory accepted")
	}
	if err := CheckOutput(dir); err == nil {
		t.Fatal("a directory accepted as output")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("the check left files: %v", entries)
	}
}
