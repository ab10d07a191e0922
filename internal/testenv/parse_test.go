package testenv

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const goodOM = `# HELP statexec_cpu_seconds CPU time \\ "used"\nsecond line.
# TYPE statexec_cpu_seconds counter
# UNIT statexec_cpu_seconds seconds
statexec_cpu_seconds_total{mode="user"} 1.0 1704067200
statexec_cpu_seconds_total{mode="user"} 2.5 1704067200.5
statexec_cpu_seconds_total{mode="system"} 0.0 1704067200
statexec_cpu_seconds_created{mode="user"} 1.7040671e+09 1704067200
statexec_cpu_seconds_total{mode="user"} 3.0 1704067201.123
# HELP mem_bytes Memory.
# TYPE mem_bytes gauge
mem_bytes{cmd="a \\ b \"q\" \n c",x="y"} 123 1704067200.001
mem_bytes{cmd="a \\ b \"q\" \n c",x="y"} NaN 1704067201
mem_bytes{cmd="a \\ b \"q\" \n c",x="y"} +Inf 1704067202
mem_bytes{} -1.5e-3 1704067200
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le="0.1"} 1 1704067200
lat_bucket{le="+Inf"} 2 1704067200
lat_sum 0.3 1704067200
lat_count 2 1704067200
lat_created 1704067100 1704067200
# HELP q Quantiles.
# TYPE q summary
q{quantile="0.5"} 1 1704067200
q_sum 1 1704067200
q_count 1 1704067200
# HELP empty A family without samples.
# TYPE empty gauge
# EOF
`

const goodProm = `# HELP cpu_seconds_total CPU time \\ used\nsecond line.
# TYPE cpu_seconds_total counter
cpu_seconds_total{mode="user"} 1 1704067200000
cpu_seconds_total{mode="user"} 2.5 1704067200500
cpu_seconds_total{mode="system"}	0   1704067200000
# a plain comment, allowed in 0.0.4
# HELP mem_bytes Memory.
# TYPE mem_bytes gauge
mem_bytes{cmd="a \\ b \"q\" \n c"} 123 1704067200000
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le="+Inf"} 2 1704067200000
lat_sum 0.3 1704067200000
lat_count 2 1704067200000
`

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "metrics.txt")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseFileOpenMetrics(t *testing.T) {
	f := ParseFile(t, writeTemp(t, goodOM))
	if !f.OpenMetrics {
		t.Errorf("OpenMetrics = false")
	}
	wantFams := []Family{
		{Name: "statexec_cpu_seconds", Type: "counter", Help: "CPU time \\ \"used\"\nsecond line.", Unit: "seconds"},
		{Name: "mem_bytes", Type: "gauge", Help: "Memory."},
		{Name: "lat", Type: "histogram", Help: "Latency."},
		{Name: "q", Type: "summary", Help: "Quantiles."},
		{Name: "empty", Type: "gauge", Help: "A family without samples."},
	}
	if !reflect.DeepEqual(f.Families, wantFams) {
		t.Errorf("families:\n got %+v\nwant %+v", f.Families, wantFams)
	}
	if len(f.Samples) != 17 {
		t.Errorf("%d samples, want 17", len(f.Samples))
	}
	user := f.Series("statexec_cpu_seconds_total", map[string]string{"mode": "user"})
	wantTs := []int64{1704067200000, 1704067200500, 1704067201123}
	wantV := []float64{1, 2.5, 3}
	if len(user) != 3 {
		t.Fatalf("user series: %+v", user)
	}
	for i, s := range user {
		if s.TimestampMs != wantTs[i] || s.Value != wantV[i] {
			t.Errorf("user[%d] = %v@%d, want %v@%d", i, s.Value, s.TimestampMs, wantV[i], wantTs[i])
		}
	}
	created := f.Series("statexec_cpu_seconds_created", nil)
	if len(created) != 1 || created[0].Value != 1704067100 {
		t.Errorf("created: %+v", created)
	}
	mem := f.Series("mem_bytes", map[string]string{"cmd": "a \\ b \"q\" \n c"})
	if len(mem) != 3 {
		t.Fatalf("mem series (escaped label): %+v", mem)
	}
	if mem[0].TimestampMs != 1704067200001 || mem[0].Value != 123 || mem[0].Labels["x"] != "y" {
		t.Errorf("mem[0] = %+v", mem[0])
	}
	if !math.IsNaN(mem[1].Value) || !math.IsInf(mem[2].Value, 1) {
		t.Errorf("NaN/+Inf: %+v", mem)
	}
	if all := f.Series("mem_bytes", nil); len(all) != 4 || all[0].Value != -1.5e-3 {
		t.Errorf("all mem_bytes (sorted by time, stable): %+v", all)
	}
	if s := f.Series("mem_bytes", map[string]string{"nope": ""}); len(s) != 0 {
		t.Errorf("match on absent label: %+v", s)
	}
	// cpu user, cpu system, cpu created, mem x2, lat_bucket x2, sum, count,
	// created, q, q_sum, q_count.
	if n := f.SeriesCount(); n != 13 {
		t.Errorf("SeriesCount = %d, want 13", n)
	}
	if fam := f.Family("lat"); fam == nil || fam.Type != "histogram" {
		t.Errorf("Family(lat) = %+v", fam)
	}
	if f.Family("statexec_cpu_seconds_total") != nil {
		t.Errorf("Family must be looked up by the TYPE-line name")
	}
}

func TestParseFileOpenMetricsNoTrailingNewline(t *testing.T) {
	f := ParseFile(t, writeTemp(t, strings.TrimSuffix(goodOM, "\n")))
	if !f.OpenMetrics || len(f.Samples) != 17 {
		t.Errorf("got OpenMetrics=%v, %d samples", f.OpenMetrics, len(f.Samples))
	}
}

func TestParseFilePrometheus(t *testing.T) {
	f := ParseFile(t, writeTemp(t, goodProm))
	if f.OpenMetrics {
		t.Errorf("OpenMetrics = true")
	}
	if len(f.Families) != 3 || f.Families[0].Name != "cpu_seconds_total" || f.Families[0].Help != "CPU time \\ used\nsecond line." {
		t.Errorf("families: %+v", f.Families)
	}
	user := f.Series("cpu_seconds_total", map[string]string{"mode": "user"})
	if len(user) != 2 || user[1].TimestampMs != 1704067200500 || user[1].Value != 2.5 {
		t.Errorf("user: %+v", user)
	}
	if sys := f.Series("cpu_seconds_total", map[string]string{"mode": "system"}); len(sys) != 1 || sys[0].TimestampMs != 1704067200000 {
		t.Errorf("system (tab/multiple spaces): %+v", sys)
	}
	if m := f.Series("mem_bytes", nil); len(m) != 1 || m[0].Labels["cmd"] != "a \\ b \"q\" \n c" {
		t.Errorf("mem: %+v", m)
	}
	if n := f.SeriesCount(); n != 6 {
		t.Errorf("SeriesCount = %d, want 6", n)
	}
}

const omHead = "# HELP g G.\n# TYPE g gauge\n"
const promHead = "# HELP g G.\n# TYPE g gauge\n"

func TestParseFileBad(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		// Format / framing.
		{"empty file", "", "empty file"},
		{"no EOF, seconds timestamps", omHead + "g 1 1704067200\n", "VictoriaMetrics would read it as seconds"},
		{"content after EOF", omHead + "g 1 1704067200\n# EOF\ng 2 1704067201\n", "content after `# EOF`"},
		{"blank line after EOF", omHead + "g 1 1704067200\n# EOF\n\n", "content after `# EOF`"},
		{"empty line", omHead + "g 1 1704067200\n\ng 2 1704067201\n# EOF\n", "empty line"},
		{"CRLF", "# HELP g G.\r\n# TYPE g gauge\r\ng 1 1704067200\r\n# EOF\r\n", "carriage return"},
		{"custom comment in OpenMetrics", omHead + "# written by statexec\ng 1 1704067200\n# EOF\n", "comment line"},
		{"malformed EOF", omHead + "g 1 1704067200\n# EOF \n# EOF\n", "malformed `# EOF`"},
		{"malformed EOF only", promHead + "g 1 1704067200000\n# EOF \n", "no exact `# EOF` line"},
		{"prom without final newline", promHead + "g 1 1704067200000", "no trailing newline"},
		{"UNIT in 0.0.4", "# HELP g_seconds G.\n# TYPE g_seconds gauge\n# UNIT g_seconds seconds\ng_seconds 1 1704067200000\n", "UNIT is not part"},
		{"exemplar", "# HELP c C.\n# TYPE c counter\nc_total 1 1704067200 # {id=\"x\"} 1\n# EOF\n", "exemplars"},

		// Metadata.
		{"no metadata", "g 1 1704067200\n# EOF\n", "before any # HELP/# TYPE"},
		{"no HELP", "# TYPE g gauge\ng 1 1704067200\n# EOF\n", "no # HELP"},
		{"no TYPE", "# HELP g G.\ng 1 1704067200\n# EOF\n", "no # TYPE"},
		{"HELP after samples", omHead + "g 1 1704067200\n# HELP g G.\n# EOF\n", "after its samples"},
		{"duplicate HELP", "# HELP g G.\n# HELP g G.\n# TYPE g gauge\ng 1 1704067200\n# EOF\n", "second # HELP"},
		{"duplicate TYPE", "# HELP g G.\n# TYPE g gauge\n# TYPE g gauge\ng 1 1704067200\n# EOF\n", "second # TYPE"},
		{"invalid type", "# HELP g G.\n# TYPE g foo\ng 1 1704067200\n# EOF\n", "invalid type"},
		{"untyped is 0.0.4 only", "# HELP g G.\n# TYPE g untyped\ng 1 1704067200\n# EOF\n", "invalid type"},
		{"bad HELP escape", "# HELP g G\\t.\n# TYPE g gauge\ng 1 1704067200\n# EOF\n", "invalid escape"},
		{"metadata split", "# HELP a A.\n# HELP b B.\n# TYPE a gauge\n# TYPE b gauge\n# EOF\n", "appears again"},

		// Contiguity / membership.
		{"interleaved families", omHead + "g 1 1704067200\n# HELP h H.\n# TYPE h gauge\nh 1 1704067200\ng 2 1704067201\n# EOF\n", "must not be interleaved"},
		{"family declared twice", omHead + "g 1 1704067200\n# HELP h H.\n# TYPE h gauge\nh 1 1704067200\n" + omHead + "g 2 1704067201\n# EOF\n", "appears again"},
		{"foreign sample in family", omHead + "g 1 1704067200\nother 1 1704067200\n# EOF\n", "does not belong to the current family"},
		{"OM counter without _total", "# HELP c C.\n# TYPE c counter\nc 1 1704067200\n# EOF\n", "does not belong"},
		{"OM counter TYPE with _total", "# HELP c_total C.\n# TYPE c_total counter\nc_total 1 1704067200\n# EOF\n", "without _total"},
		{"0.0.4 counter sample with extra _total", "# HELP c C.\n# TYPE c counter\nc_total 1 1704067200000\n", "does not belong"},
		{"0.0.4 _created", "# HELP c_total C.\n# TYPE c_total counter\nc_total 1 1704067200000\nc_created 1 1704067200000\n", "does not belong"},
		{"bucket without le", "# HELP h H.\n# TYPE h histogram\nh_bucket 1 1704067200\n# EOF\n", "without an le label"},
		{"bad le", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"x\"} 1 1704067200\n# EOF\n", "le label"},
		{"summary without quantile", "# HELP s S.\n# TYPE s summary\ns 1 1704067200\n# EOF\n", "without a quantile"},
		{"unit not a suffix", "# HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 1 1704067200\n# EOF\n", "not a suffix"},

		// Timestamps.
		{"missing timestamp", omHead + "g 1\n# EOF\n", "no timestamp"},
		{"_created without timestamp (expfmt style)", "# HELP c C.\n# TYPE c counter\nc_total 1 1704067200\nc_created 1.7040671e+09\n# EOF\n", "no timestamp"},
		{"0.0.4 missing timestamp", promHead + "g 1\n", "no timestamp"},
		{"equal timestamps", omHead + "g 1 1704067200\ng 2 1704067200\n# EOF\n", "strictly increasing"},
		{"decreasing timestamps", omHead + "g{a=\"1\"} 1 1704067200\ng{a=\"2\"} 1 1704067100\ng{a=\"1\"} 2 1704067199.999\n# EOF\n", "strictly increasing"},
		{"equal timestamps, labels in other order", omHead + "g{a=\"1\",b=\"2\"} 1 1704067200\ng{b=\"2\",a=\"1\"} 2 1704067200\n# EOF\n", "strictly increasing"},
		{"ms timestamp in OpenMetrics", omHead + "g 1 1704067200000\n# EOF\n", "milliseconds"},
		{"sub-ms timestamp", omHead + "g 1 1704067200.0001\n# EOF\n", "sub-millisecond"},
		{"bad OM timestamp", omHead + "g 1 NaN\n# EOF\n", "invalid timestamp"},
		{"exponent timestamp", omHead + "g 1 1.70406720012e+09\n# EOF\n", "plain decimal"},
		{"needless zero in timestamp", omHead + "g 1 1704067200.120\n# EOF\n", "plain decimal"},
		{"needless point in timestamp", omHead + "g 1 1704067200.\n# EOF\n", "plain decimal"},
		{"leading zero in timestamp", omHead + "g 1 01704067200\n# EOF\n", "plain decimal"},
		{"float timestamp in 0.0.4", promHead + "g 1 1704067200.5\n", "integer milliseconds"},
		{"seconds in 0.0.4", promHead + "g 1 1704067200\n", "read it as seconds"},

		// Sample syntax.
		{"double space", omHead + "g  1 1704067200\n# EOF\n", "exactly one space"},
		{"trailing space", omHead + "g 1 1704067200 \n# EOF\n", "exactly one space"},
		{"extra field", omHead + "g 1 1704067200 5\n# EOF\n", "unexpected fields"},
		{"bad value", omHead + "g abc 1704067200\n# EOF\n", "invalid number"},
		{"hex value", omHead + "g 0x10 1704067200\n# EOF\n", "invalid number"},
		{"value out of range", omHead + "g 1e999 1704067200\n# EOF\n", "invalid number"},
		{"bad name", omHead + "9g 1 1704067200\n# EOF\n", "does not start with a metric name"},

		// Labels.
		{"bad label escape", omHead + "g{a=\"x\\ty\"} 1 1704067200\n# EOF\n", "invalid escape"},
		{"unterminated label value", omHead + "g{a=\"xy} 1 1704067200\n# EOF\n", "unterminated"},
		{"lone backslash at end", omHead + "g{a=\"x\\\n# EOF\n", "unterminated"},
		{"empty label value", omHead + "g{a=\"\"} 1 1704067200\n# EOF\n", "empty value"},
		{"duplicate label", omHead + "g{a=\"1\",a=\"2\"} 1 1704067200\n# EOF\n", "duplicate label"},
		{"trailing comma", omHead + "g{a=\"1\",} 1 1704067200\n# EOF\n", "trailing comma"},
		{"unquoted label value", omHead + "g{a=1} 1 1704067200\n# EOF\n", "expected =\""},
		{"bad label name", omHead + "g{1a=\"1\"} 1 1704067200\n# EOF\n", "invalid label name"},
		{"__name__ label", omHead + "g{__name__=\"g\"} 1 1704067200\n# EOF\n", "__name__"},
		{"no comma between labels", omHead + "g{a=\"1\" b=\"2\"} 1 1704067200\n# EOF\n", "expected , or }"},
		{"invalid UTF-8 label", omHead + "g{a=\"\xff\"} 1 1704067200\n# EOF\n", "UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTemp(t, c.in)
			f := runFake(t, func(tb testing.TB) { ParseFile(tb, path) })
			if !f.failed {
				t.Fatalf("ParseFile accepted bad input:\n%s", c.in)
			}
			if !strings.Contains(f.msg, c.want) {
				t.Errorf("error %q does not mention %q", f.msg, c.want)
			}
		})
	}
}

func TestParseFileMissing(t *testing.T) {
	f := runFake(t, func(tb testing.TB) { ParseFile(tb, filepath.Join(t.TempDir(), "nope")) })
	if !f.failed || !strings.Contains(f.msg, "no such file") {
		t.Errorf("failed=%v msg=%q", f.failed, f.msg)
	}
}

func TestParseBytes(t *testing.T) {
	if f := ParseBytes(t, []byte(goodProm)); len(f.Samples) != 7 {
		t.Errorf("%d samples, want 7", len(f.Samples))
	}
	r := runFake(t, func(tb testing.TB) { ParseBytes(tb, []byte("garbage")) })
	if !r.failed {
		t.Errorf("ParseBytes accepted garbage")
	}
}

func TestRequire(t *testing.T) {
	defer func(old func() bool) { isRoot = old }(isRoot)

	isRoot = func() bool { return true }
	f := runFake(t, func(tb testing.TB) { Require(tb, "sh", "statexec-no-such-command") })
	if !f.failed || !strings.Contains(f.msg, "install-deps.sh") || !strings.Contains(f.msg, "statexec-no-such-command") {
		t.Errorf("as root: failed=%v skipped=%v msg=%q", f.failed, f.skipped, f.msg)
	}

	isRoot = func() bool { return false }
	f = runFake(t, func(tb testing.TB) { Require(tb, "statexec-no-such-command") })
	if !f.skipped || f.failed || !strings.Contains(f.msg, "statexec-no-such-command") {
		t.Errorf("as user: failed=%v skipped=%v msg=%q", f.failed, f.skipped, f.msg)
	}

	f = runFake(t, func(tb testing.TB) { Require(tb, "sh") })
	if f.failed || f.skipped {
		t.Errorf("present command: failed=%v skipped=%v msg=%q", f.failed, f.skipped, f.msg)
	}
}

func TestParseExport(t *testing.T) {
	in := `{"metric":{"__name__":"b","l":"NaN Inf -Inf \"x\""},"values":[1,-Inf,Inf,+Inf,NaN,0.000001,` + "1797693134862315" + strings.Repeat("0", 293) + `],"timestamps":[1,2,3,4,5,6,7]}
{"metric":{"__name__":"a"},"values":[2],"timestamps":[1704067200000]}
`
	got, err := parseExport(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Labels["__name__"] != "a" || got[1].Labels["l"] != `NaN Inf -Inf "x"` {
		t.Fatalf("got %+v", got)
	}
	v := got[1].Values
	if v[0] != 1 || !math.IsInf(v[1], -1) || !math.IsInf(v[2], 1) || !math.IsInf(v[3], 1) || !math.IsNaN(v[4]) || v[5] != 1e-6 || v[6] != 1.797693134862315e308 {
		t.Errorf("values %v", v)
	}
	if _, err := parseExport(strings.NewReader(`{"metric":{},"values":[1,2],"timestamps":[1]}`)); err == nil {
		t.Errorf("length mismatch accepted")
	}
}

func TestSumListedSamples(t *testing.T) {
	out := `BLOCK ULID                  MIN TIME       MAX TIME       DURATION     NUM SAMPLES  NUM CHUNKS   NUM SERIES   SIZE
01M88NNBK3EQ0VDBHTJPR9RRZR  1704067200000  1704067202501  2.501s       6            3            3            860
01M88NNC478V4G3S6YZTN9Q9Q5  10000          20001          10.001s      2            1            1            496
`
	if n, err := sumListedSamples(out); err != nil || n != 8 {
		t.Errorf("got %d, %v", n, err)
	}
}
