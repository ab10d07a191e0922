package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/statexec/statexec/internal/testenv"
)

// copyExample copies example/statexec_metrics.txt into dir.
func copyExample(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("example/statexec_metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "statexec_metrics.txt")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReportBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notMetrics := write("page.htm", "<html>\n<body>hello</body>\n</html>\n")
	badLine := write("bad.txt", "# HELP statexec_a A.\n# TYPE statexec_a gauge\nstatexec_a 1 1704067200\nstatexec_a{x=\"1\" 2 1704067201\n# EOF\n")
	empty := write("empty.txt", "")
	foreign := write("foreign.txt", "# HELP up Up.\n# TYPE up gauge\nup 1 1704067200\n# EOF\n")
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"not metrics", []string{"report", notMetrics}, []string{notMetrics, "line 1"}},
		{"bad line", []string{"report", "--text", badLine}, []string{badLine, "line 4", "label"}},
		{"empty", []string{"report", empty}, []string{empty, "empty file"}},
		{"no statexec series", []string{"report", foreign}, []string{foreign, "no statexec series"}},
		{"missing file", []string{"report", filepath.Join(dir, "nope.txt")}, []string{"nope.txt", "no such file"}},
		// The output is checked before any input is read.
		{"unwritable output", []string{"report", "-o", filepath.Join(dir, "no", "dir", "r.html"), filepath.Join(dir, "nope.txt")}, []string{"r.html", "cannot write"}},
		{"no file", []string{"report"}, []string{"no metrics file"}},
		{"output is an input", []string{"report", "-o", foreign, foreign}, []string{"is one of the input files"}},
		{"unknown flag", []string{"report", "--png", foreign}, []string{"unknown flag --png"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := statexec(t, "", nil, c.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", r.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Fatalf("stderr lacks %q: %s", w, r.stderr)
				}
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		t.Fatalf("report wrote something after an error: %v", entries)
	}
}

func TestReportDefaultOutputTextAndClashingRuns(t *testing.T) {
	a := copyExample(t, t.TempDir())
	b := copyExample(t, t.TempDir()) // same name, same labels: a clash
	r := statexec(t, "", nil, "report", a, b)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	page := strings.TrimSuffix(a, ".txt") + ".html"
	html, err := os.ReadFile(page)
	if err != nil {
		t.Fatalf("default output %s: %v", page, err)
	}
	// Told apart by their paths.
	for _, p := range []string{a, b} {
		if !strings.Contains(string(html), p) {
			t.Fatalf("the page does not name run %s", p)
		}
	}
	r = statexec(t, "", nil, "report", "--text", a, b)
	if r.code != 0 {
		t.Fatalf("--text: exit %d: %s", r.code, r.stderr)
	}
	// The wall time is the span of statexec_command_status at 1 up to its
	// first 2, read from the file itself (example/ is regenerated now and
	// then); the same file twice is 1.00x.
	wall := commandWallTime(t, a)
	for _, want := range []string{"wall time", wall, "1.00×", a, b, "run 2 / run 1"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("--text output lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestReportAtTheEndOfARun(t *testing.T) {
	dir := t.TempDir()
	page := filepath.Join(dir, "run.html")
	r := statexec(t, "", []string{"SE_REPORT=" + page, "SE_PROBES=plain"}, "exec", "sh", "-c", "exit 7")
	if r.code != 7 {
		t.Fatalf("exit %d, want the command's 7: %s", r.code, r.stderr)
	}
	html, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	// The run knows what the file does not: the command and its exit code.
	for _, want := range []string{"<td>exit code</td><td>7</td>", "<td>sh -c exit 7</td>", `id="report-data"`} {
		if !strings.Contains(string(html), want) {
			t.Fatalf("the page lacks %q", want)
		}
	}
	// An output that cannot be written is refused before the command runs.
	marker := filepath.Join(dir, "ran")
	r = statexec(t, "", []string{"SE_REPORT=" + filepath.Join(dir, "missing", "r.html")}, "exec", "touch", marker)
	if r.code != 2 || !strings.Contains(r.stderr, "r.html") {
		t.Fatalf("exit %d, stderr %q; want 2 naming the report", r.code, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although the report path was bad")
	}
}

// commandWallTime is the command's run time in a metrics file, from the
// first sample of statexec_command_status at 1 to its first at 2, as the
// report prints it.
func commandWallTime(t *testing.T, path string) string {
	t.Helper()
	var started, ended int64 = -1, -1
	for _, s := range testenv.ParseFile(t, path).Series("statexec_command_status", nil) {
		if s.Value == 1 && started < 0 {
			started = s.TimestampMs
		}
		if s.Value == 2 && ended < 0 {
			ended = s.TimestampMs
		}
	}
	if started < 0 || ended < started {
		t.Fatalf("%s: no command phase in statexec_command_status", path)
	}
	return fmt.Sprintf("%.3f s", float64(ended-started)/1000)
}
