package testenv

import (
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// 3 series x 5 points around 2024-01-01 (1704067200 s), written the way
// statexec writes OpenMetrics (plain decimal timestamps, "1.0"-style and
// exponent values). Values have at most 12 significant digits:
// VictoriaMetrics 1.79 stores floats as decimals and rounds beyond that
// (1.2345678901234567 reads back as 1.234567890123).
const consumersOM = `# HELP statexec_test_cpu_seconds CPU time of the command.
# TYPE statexec_test_cpu_seconds counter
statexec_test_cpu_seconds_total{mode="user"} 0.0 1704067200
statexec_test_cpu_seconds_total{mode="user"} 0.25 1704067200.25
statexec_test_cpu_seconds_total{mode="user"} 1.0 1704067200.5
statexec_test_cpu_seconds_total{mode="user"} 1.5 1704067201.001
statexec_test_cpu_seconds_total{mode="user"} 123456.789 1704067202
# HELP statexec_test_memory_bytes Resident memory.
# TYPE statexec_test_memory_bytes gauge
statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"} 1.048576e+06 1704067200
statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"} 2097152 1704067200.25
statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"} 4294967296 1704067200.5
statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"} 0 1704067201.001
statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"} 123456789012 1704067202
# HELP statexec_test_load Load.
# TYPE statexec_test_load gauge
statexec_test_load{core="0"} -3.25 1704067199.999
statexec_test_load{core="0"} 0.001 1704067200
statexec_test_load{core="0"} 1e-09 1704067200.001
statexec_test_load{core="0"} 99.5 1704067260
statexec_test_load{core="0"} 7.0 1704070800
# EOF
`

type point struct {
	ts int64
	v  float64
}

var consumersWant = map[string][]point{
	`statexec_test_cpu_seconds_total{mode="user"}`: {
		{1704067200000, 0}, {1704067200250, 0.25}, {1704067200500, 1}, {1704067201001, 1.5}, {1704067202000, 123456.789},
	},
	`statexec_test_memory_bytes{cmd="sh -c \"echo a\\b\"\nx",host="h1"}`: {
		{1704067200000, 1048576}, {1704067200250, 2097152}, {1704067200500, 4294967296}, {1704067201001, 0}, {1704067202000, 123456789012},
	},
	`statexec_test_load{core="0"}`: {
		{1704067199999, -3.25}, {1704067200000, 0.001}, {1704067200001, 1e-9}, {1704067260000, 99.5}, {1704070800000, 7},
	},
}

// toProm rewrites the expected data as Prometheus 0.0.4 text.
func toProm(t *testing.T) string {
	t.Helper()
	f := ParseFile(t, writeTemp(t, consumersOM))
	var b strings.Builder
	for _, fam := range f.Families {
		name := fam.Name
		if fam.Type == "counter" {
			name += "_total"
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, fam.Help, name, fam.Type)
		for _, s := range f.Samples {
			if s.Name == name {
				k := seriesKey(s.Name, s.Labels)
				fmt.Fprintf(&b, "%s%s %v %d\n", s.Name, k[len(s.Name):], s.Value, s.TimestampMs)
			}
		}
	}
	return b.String()
}

func checkSeries(t *testing.T, what string, got map[string][]point) {
	t.Helper()
	if len(got) != len(consumersWant) {
		t.Errorf("%s: %d series, want %d: %v", what, len(got), len(consumersWant), got)
	}
	for key, want := range consumersWant {
		g := got[key]
		if len(g) != len(want) {
			t.Errorf("%s: %s: %d points, want %d: %v", what, key, len(g), len(want), g)
			continue
		}
		for i := range want {
			if g[i] != want[i] {
				t.Errorf("%s: %s[%d] = %v@%d, want %v@%d", what, key, i, g[i].v, g[i].ts, want[i].v, want[i].ts)
			}
		}
	}
}

func vmPoints(series []Series) map[string][]point {
	out := map[string][]point{}
	for _, s := range series {
		labels := map[string]string{}
		for k, v := range s.Labels {
			if k != "__name__" {
				labels[k] = v
			}
		}
		key := seriesKey(s.Labels["__name__"], labels)
		for i := range s.Values {
			out[key] = append(out[key], point{s.TimestampsMs[i], s.Values[i]})
		}
		sort.Slice(out[key], func(i, j int) bool { return out[key][i].ts < out[key][j].ts })
	}
	return out
}

func TestConsumersParse(t *testing.T) {
	f := ParseFile(t, writeTemp(t, consumersOM))
	got := map[string][]point{}
	for _, s := range f.Samples {
		k := seriesKey(s.Name, s.Labels)
		got[k] = append(got[k], point{s.TimestampMs, s.Value})
	}
	checkSeries(t, "ParseFile", got)
	p := ParseFile(t, writeTemp(t, toProm(t)))
	if p.OpenMetrics || len(p.Samples) != 15 {
		t.Errorf("0.0.4 rewrite: OpenMetrics=%v, %d samples", p.OpenMetrics, len(p.Samples))
	}
}

func TestVictoriaMetricsRoundTrip(t *testing.T) {
	Require(t, "victoria-metrics")
	for _, format := range []string{"openmetrics", "prometheus"} {
		t.Run(format, func(t *testing.T) {
			content := consumersOM
			if format == "prometheus" {
				content = toProm(t)
			}
			path := writeTemp(t, content)
			ParseFile(t, path) // the input itself is valid
			vm := StartVictoriaMetrics(t)
			vm.Import(t, path)
			checkSeries(t, "VictoriaMetrics "+format, vmPoints(vm.Export(t, `{__name__=~"statexec_test_.*"}`)))
			if n := vm.CountSamples(t); n != 15 {
				t.Errorf("CountSamples = %d, want 15", n)
			}
			user := vm.Export(t, `statexec_test_cpu_seconds_total{mode="user"}`)
			if len(user) != 1 || len(user[0].Values) != 5 || user[0].Labels["__name__"] != "statexec_test_cpu_seconds_total" {
				t.Errorf("Export by selector: %+v", user)
			}
		})
	}
}

func TestVictoriaMetricsQuirks(t *testing.T) {
	Require(t, "victoria-metrics")
	vm := StartVictoriaMetrics(t)

	// Data stamped "now" is visible at once after Import (flush).
	now := time.Now().Add(-time.Second).UnixMilli()
	vm.ImportBytes(t, fmt.Appendf(nil, "quirk_now 1 %d\nquirk_now 2 %d\n", now-1000, now))
	if s := vm.Export(t, "quirk_now"); len(s) != 1 || len(s[0].Values) != 2 || s[0].TimestampsMs[1] != now {
		t.Errorf("recent samples not visible at once: %+v", s)
	}

	// Inf survives, NaN does not come back from export.
	vm.ImportBytes(t, []byte("quirk_nf +Inf 1704067200\nquirk_nf -Inf 1704067201\nquirk_nf NaN 1704067202\n"))
	s := vm.Export(t, "quirk_nf")
	if len(s) != 1 || len(s[0].Values) != 2 || !math.IsInf(s[0].Values[0], 1) || !math.IsInf(s[0].Values[1], -1) {
		t.Errorf("Inf/NaN: %+v", s)
	}

	// An unparsable line is answered with 204 but logged: Import fails.
	r := runFake(t, func(tb testing.TB) { vm.ImportBytes(tb, []byte("quirk_bad{ 1 2\n")) })
	if !r.failed || !strings.Contains(r.msg, "cannot") {
		t.Errorf("bad line: failed=%v msg=%q", r.failed, r.msg)
	}
	// So is a timestamp too far in the future (2^31-1 is read as seconds).
	r = runFake(t, func(tb testing.TB) { vm.ImportBytes(tb, []byte("quirk_future 1 2147483647\n")) })
	if !r.failed || !strings.Contains(r.msg, "too big timestamp") {
		t.Errorf("future timestamp: failed=%v msg=%q", r.failed, r.msg)
	}
}

func TestPromtoolBackfill(t *testing.T) {
	Require(t, "promtool")
	if n := PromtoolBackfill(t, writeTemp(t, consumersOM)); n != 15 {
		t.Errorf("PromtoolBackfill = %d samples, want 15", n)
	}

	// Without # EOF promtool fails, and so does PromtoolBackfill.
	bad := writeTemp(t, strings.TrimSuffix(consumersOM, "# EOF\n"))
	r := runFake(t, func(tb testing.TB) { PromtoolBackfill(tb, bad) })
	if !r.failed || !strings.Contains(r.msg, "EOF") {
		t.Errorf("no EOF: failed=%v msg=%q", r.failed, r.msg)
	}

	// Out-of-order samples are dropped silently (13 of 15 kept here).
	ooo := strings.Replace(consumersOM, "-3.25 1704067199.999", "-3.25 1704067299.999", 1)
	ooo = strings.Replace(ooo, "0.001 1704067200\n", "0.001 1704067300\n", 1)
	if n := PromtoolBackfill(t, writeTemp(t, ooo)); n != 13 {
		t.Errorf("out of order: %d samples, want 13 (promtool drops them)", n)
	}
}

func TestPythonParse(t *testing.T) {
	got := map[string][]point{}
	for _, s := range PythonParse(t, writeTemp(t, consumersOM)) {
		if !s.Exact {
			t.Errorf("%s: timestamp %s is not a whole millisecond", s.Name, s.Raw)
		}
		k := seriesKey(s.Name, s.Labels)
		got[k] = append(got[k], point{s.TimestampMs, s.Value})
	}
	for _, pts := range got { // per instant: grouped by timestamp, not series
		sort.Slice(pts, func(i, j int) bool { return pts[i].ts < pts[j].ts })
	}
	checkSeries(t, "python prometheus_client", got)

	// Why statexec writes plain decimals: this parser reads
	// 1.7040672005e+09 as 1 s + 0.704067200 s.
	exp := strings.Replace(consumersOM, "1.0 1704067200.5\n", "1.0 1.7040672005e+09\n", 1)
	for _, s := range PythonParse(t, writeTemp(t, exp)) {
		if s.Value == 1 && s.Name == "statexec_test_cpu_seconds_total" && s.Raw != "1065042/625" {
			t.Errorf("exponent timestamp read as %s ms, not 1704.0672 (1065042/625) ms: the parser's bug is gone?", s.Raw)
		}
	}

	// A file the parser rejects fails the test.
	r := runFake(t, func(tb testing.TB) { PythonParse(tb, writeTemp(t, "# TYPE g gauge\ng{ 1\n# EOF\n")) })
	if !r.failed || !strings.Contains(r.msg, "rejected") {
		t.Errorf("bad file: failed=%v msg=%q", r.failed, r.msg)
	}
}

func TestPromtoolCheckMetrics(t *testing.T) {
	Require(t, "promtool")
	good := "# HELP statexec_cpu_seconds_total CPU.\n# TYPE statexec_cpu_seconds_total counter\n" +
		"statexec_cpu_seconds_total{mode=\"user\"} 1.5 1704067200000\n" +
		"# HELP statexec_memory_bytes Memory.\n# TYPE statexec_memory_bytes gauge\nstatexec_memory_bytes 42\n"
	PromtoolCheckMetrics(t, good)

	for name, c := range map[string]struct{ in, want string }{
		"lint":            {"# TYPE c counter\nc 1\n", `should have "_total" suffix`},
		"float timestamp": {"# HELP g G.\n# TYPE g gauge\ng 1 1704067200.5\n", "expected integer as timestamp"},
	} {
		r := runFake(t, func(tb testing.TB) { PromtoolCheckMetrics(tb, c.in) })
		if !r.failed || !strings.Contains(r.msg, c.want) {
			t.Errorf("%s: failed=%v msg=%q", name, r.failed, r.msg)
		}
	}
}

func TestStartVictoriaMetricsCleanup(t *testing.T) {
	Require(t, "victoria-metrics")
	var vm *VM
	t.Run("inner", func(t *testing.T) { vm = StartVictoriaMetrics(t) })
	select {
	case <-vm.exited:
	default:
		t.Fatalf("victoria-metrics still running after the test's cleanup")
	}
	if _, err := os.Stat(filepath.Dir(vm.DataDir)); !os.IsNotExist(err) {
		t.Errorf("data dir left behind: %v", err)
	}
}

func TestStartVictoriaMetricsPortRetry(t *testing.T) {
	Require(t, "victoria-metrics")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	real := freePort
	defer func() { freePort = real }()
	calls := 0
	freePort = func() (int, error) {
		calls++
		if calls == 1 {
			return busy.Addr().(*net.TCPAddr).Port, nil // taken meanwhile
		}
		return real()
	}
	vm := StartVictoriaMetrics(t)
	if calls != 2 || vm.Addr == busy.Addr().String() {
		t.Errorf("calls=%d addr=%s busy=%s", calls, vm.Addr, busy.Addr())
	}
	if n := vm.CountSamples(t); n != 0 {
		t.Errorf("fresh VM has %d samples", n)
	}
}
