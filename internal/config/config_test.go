package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, env []string, args ...string) (*Invocation, error) {
	t.Helper()
	return Parse(args, env, "host1")
}

func TestDefaults(t *testing.T) {
	inv, err := parse(t, nil, "exec", "sleep", "1")
	if err != nil {
		t.Fatal(err)
	}
	c := inv.Config
	if inv.Mode != ModeExec || strings.Join(inv.Command, " ") != "sleep 1" {
		t.Fatalf("mode %q command %q", inv.Mode, inv.Command)
	}
	if c.MetricsFile != "/tmp/statexec_metrics.txt" || c.Instance != "host1" || c.TimeRelativeMs != -1 ||
		c.Interval != time.Second || c.Format != FormatOpenMetrics || c.Probes != "auto" || !c.Summary ||
		c.Listen != ":8080" || c.SyncTimeout != 30*time.Second || c.WaitBefore != 0 || len(c.Labels) != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestEmptyVariableIsUnset: every SE_* variable set to "" leaves its
// default (as README and --help say), e.g. SE_METRICS_FILE= is the
// default path, not an error nor an empty path.
func TestEmptyVariableIsUnset(t *testing.T) {
	def, err := parse(t, nil, "exec", "true")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		inv, err := parse(t, []string{s.env + "="}, "exec", "true")
		if err != nil {
			t.Errorf("%s=: %v", s.env, err)
			continue
		}
		if !reflect.DeepEqual(inv.Config, def.Config) {
			t.Errorf("%s= gives %+v, want the defaults %+v", s.env, inv.Config, def.Config)
		}
	}
}

func TestEnvAndFlags(t *testing.T) {
	env := []string{
		"SE_METRICS_FILE=/tmp/env.txt", "SE_INSTANCE=envhost", "SE_TIME_RELATIVE=1704067200000",
		"SE_WAIT_TIME_BEFORE_COMMAND=1.5", "SE_WAIT_TIME_AFTER_COMMAND=2", "SE_INTERVAL=100ms",
		"SE_LABEL_run=7", "SE_LABEL_Bench-Name=iperf", "SE_METRICS_FORMAT=prometheus", "SE_PROBES=plain",
		"SE_SUMMARY=0", "OTHER=x",
	}
	inv, err := parse(t, env, "-f", "/tmp/flag.txt", "--label", "run=8", "syncStartAndStop", "--interval=10ms", "http://127.0.0.1:9/", "iperf3", "-c", "x")
	if err != nil {
		t.Fatal(err)
	}
	c := inv.Config
	if c.MetricsFile != "/tmp/flag.txt" || c.Instance != "envhost" || c.TimeRelativeMs != 1704067200000 ||
		c.WaitBefore != 1500*time.Millisecond || c.WaitAfter != 2*time.Second || c.Interval != 10*time.Millisecond ||
		c.Format != FormatPrometheus || c.Probes != "plain" || c.Summary {
		t.Fatalf("config: %+v", c)
	}
	if inv.URL != "http://127.0.0.1:9/" || strings.Join(inv.Command, " ") != "iperf3 -c x" {
		t.Fatalf("url %q command %q", inv.URL, inv.Command)
	}
	// the flag wins over SE_LABEL_run; Bench-Name is sanitised
	want := map[string]string{"run": "8", "Bench_Name": "iperf"}
	if len(c.Labels) != 2 {
		t.Fatalf("labels %v", c.Labels)
	}
	for _, l := range c.Labels {
		if want[l.Key] != l.Value {
			t.Fatalf("labels %v", c.Labels)
		}
	}
}

func TestFlagsStopAtCommand(t *testing.T) {
	inv, err := parse(t, nil, "exec", "ls", "-f", "--label", "x=y")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(inv.Command, " ") != "ls -f --label x=y" || inv.Config.MetricsFile != DefaultMetricsFile {
		t.Fatalf("command %q file %q", inv.Command, inv.Config.MetricsFile)
	}
	inv, err = parse(t, nil, "exec", "--", "-weird-name")
	if err != nil || inv.Command[0] != "-weird-name" {
		t.Fatalf("after --: %v %v", inv, err)
	}
}

func TestHelpVersion(t *testing.T) {
	for _, a := range []string{"help", "-h", "--help"} {
		if inv, err := parse(t, nil, a); err != nil || inv.Mode != ModeHelp {
			t.Errorf("%s: %v %v", a, inv, err)
		}
	}
	for _, a := range []string{"version", "--version"} {
		if inv, err := parse(t, nil, a); err != nil || inv.Mode != ModeVersion {
			t.Errorf("%s: %v %v", a, inv, err)
		}
	}
}

func TestErrors(t *testing.T) {
	cases := []struct {
		env  []string
		args []string
		want string
	}{
		{nil, nil, "missing mode"},
		{nil, []string{"run", "ls"}, `unknown mode "run"`},
		{nil, []string{"exec"}, "needs a command"},
		{nil, []string{"syncStart"}, "needs a server URL"},
		{nil, []string{"syncStart", "127.0.0.1:8080", "ls"}, "invalid server URL"},
		{[]string{"SE_TIME_RELATIVE=abc"}, []string{"exec", "ls"}, "invalid SE_TIME_RELATIVE"},
		{[]string{"SE_TIME_RELATIVE=-5"}, []string{"exec", "ls"}, "invalid SE_TIME_RELATIVE"},
		{[]string{"SE_WAIT_TIME_BEFORE_COMMAND=-1"}, []string{"exec", "ls"}, "invalid SE_WAIT_TIME_BEFORE_COMMAND"},
		{[]string{"SE_WAIT_TIME_AFTER_COMMAND=soon"}, []string{"exec", "ls"}, "invalid SE_WAIT_TIME_AFTER_COMMAND"},
		{[]string{"SE_INTERVAL=5ms"}, []string{"exec", "ls"}, "below the minimum"},
		{[]string{"SE_INTERVAL=1"}, []string{"exec", "ls"}, "invalid SE_INTERVAL"},
		{[]string{"SE_PROBES=bpf"}, []string{"exec", "ls"}, "invalid SE_PROBES"},
		{[]string{"SE_METRICS_FORMAT=json"}, []string{"exec", "ls"}, "invalid SE_METRICS_FORMAT"},
		{[]string{"SE_LABEL_instance=x"}, []string{"exec", "ls"}, "reserved"},
		{[]string{"SE_LABEL_Job=x"}, []string{"exec", "ls"}, "reserved"},
		{nil, []string{"-l", "CPU=1", "exec", "ls"}, "reserved"},
		{[]string{"SE_LABEL_collector=x"}, []string{"exec", "ls"}, "reserved"},
		{nil, []string{"-l", "__x=1", "exec", "ls"}, "reserved"},
		{nil, []string{"-l", "1abc=1", "exec", "ls"}, "starts with a digit"},
		{nil, []string{"-l", "=1", "exec", "ls"}, "empty"},
		{nil, []string{"-l", "novalue", "exec", "ls"}, "want key=value"},
		{nil, []string{"-l", "a=1", "-l", "A=2", "exec", "ls"}, "given twice"},
		{[]string{"SE_LABEL_a-b=1", "SE_LABEL_a_b=2"}, []string{"exec", "ls"}, "given twice"},
		{nil, []string{"--bogus", "exec", "ls"}, "unknown flag --bogus"},
		{nil, []string{"exec", "-f"}, "needs a value"},
		{nil, []string{"-i", "", "exec", "ls"}, "instance must not be empty"},
		{nil, []string{"recover"}, "spool"},
	}
	for _, c := range cases {
		_, err := parse(t, c.env, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || !IsUsage(err) {
			t.Errorf("env %v args %v: error %v, want %q", c.env, c.args, err, c.want)
		}
	}
}

func TestLabelValuesCleaned(t *testing.T) {
	long := strings.Repeat("é", 10000) // 20000 bytes
	inv, err := parse(t, []string{"SE_LABEL_a=x\xffy\r", "SE_INSTANCE=q\"\\\n", "SE_LABEL_long=" + long}, "exec", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range inv.Config.Labels {
		switch l.Key {
		case "a":
			if l.Value != "x\uFFFDy\uFFFD" {
				t.Errorf("a = %q", l.Value)
			}
		case "long":
			if len(l.Value) != maxLabelValueLen || !strings.HasPrefix(long, l.Value) {
				t.Errorf("long value: %d bytes", len(l.Value))
			}
		}
	}
	if inv.Config.Instance != "q\"\\\n" {
		t.Errorf("instance = %q", inv.Config.Instance)
	}
}

func TestCheckMetricsFile(t *testing.T) {
	dir := t.TempDir()
	if err := CheckMetricsFile(filepath.Join(dir, "m.txt")); err != nil {
		t.Fatal(err)
	}
	if err := CheckMetricsFile(filepath.Join(dir, "missing", "m.txt")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing dir: %v", err)
	}
	if err := CheckMetricsFile(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("dir as file: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("check left files: %v", entries)
	}
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro")
		os.Mkdir(ro, 0o500)
		if err := CheckMetricsFile(filepath.Join(ro, "m.txt")); err == nil {
			t.Fatal("read-only dir accepted")
		}
	}
}

// FuzzParse: no input panics; accepted labels are valid and unreserved.
func FuzzParse(f *testing.F) {
	f.Add("SE_LABEL_a", "b", "-l", "x=y")
	f.Add("SE_TIME_RELATIVE", "-1", "--interval", "10ms")
	f.Add("SE_LABEL_\xff", "\"\n\\", "--wait-before", "1e9")
	f.Fuzz(func(t *testing.T, envKey, envVal, flag, flagVal string) {
		inv, err := Parse([]string{flag, flagVal, "exec", "true"}, []string{envKey + "=" + envVal}, "h")
		if err != nil {
			if !IsUsage(err) {
				t.Fatalf("non-usage error %v", err)
			}
			return
		}
		if inv.Mode != ModeExec {
			return // help, version or recover, chosen by the fuzzed flag
		}
		for _, l := range inv.Config.Labels {
			if SanitizeLabelKey(l.Key) != l.Key || l.Key == "" || strings.HasPrefix(l.Key, "__") {
				t.Fatalf("bad key %q", l.Key)
			}
			if CleanLabelValue(l.Value) != l.Value {
				t.Fatalf("uncleaned value %q", l.Value)
			}
		}
		if inv.Config.Interval < MinInterval || inv.Config.WaitBefore < 0 || inv.Config.TimeRelativeMs < -1 {
			t.Fatalf("out of range: %+v", inv.Config)
		}
	})
}

func TestReportSetting(t *testing.T) {
	inv, err := parse(t, []string{"SE_REPORT=/tmp/env.html"}, "exec", "true")
	if err != nil || inv.Config.Report != "/tmp/env.html" {
		t.Fatalf("SE_REPORT: %+v, %v", inv, err)
	}
	inv, err = parse(t, []string{"SE_REPORT=/tmp/env.html"}, "--report", "/tmp/flag.html", "exec", "true")
	if err != nil || inv.Config.Report != "/tmp/flag.html" {
		t.Fatalf("--report over SE_REPORT: %+v, %v", inv, err)
	}
	inv, err = parse(t, nil, "exec", "true")
	if err != nil || inv.Config.Report != "" {
		t.Fatalf("default: %+v, %v", inv, err)
	}
}

// Remote write (issue 12): every variable has its flag, the flag wins,
// headers are "Name: value" lines, and push takes a file and a URL.
func TestRemoteWriteSettings(t *testing.T) {
	env := []string{"SE_REMOTE_WRITE_URL=http://u:p@vm:8428/api/v1/write", "SE_REMOTE_WRITE_BEARER_TOKEN=tok",
		"SE_REMOTE_WRITE_HEADERS=X-Scope-OrgID: team-a\n\nX-Other:  two words ", "SE_REMOTE_WRITE_TIMEOUT=2.5"}
	inv, err := parse(t, env, "exec", "true")
	if err != nil {
		t.Fatal(err)
	}
	want := RemoteWrite{URL: "http://u:p@vm:8428/api/v1/write", BearerToken: "tok",
		Headers: []Header{{"X-Scope-OrgID", "team-a"}, {"X-Other", "two words"}}, Timeout: 2500 * time.Millisecond}
	if !reflect.DeepEqual(inv.Config.RemoteWrite, want) {
		t.Fatalf("from the environment: %+v, want %+v", inv.Config.RemoteWrite, want)
	}
	inv, err = parse(t, env, "--remote-write", "https://prom:9090/api/v1/write", "--remote-write-bearer-token=t2",
		"--remote-write-headers", "A: b", "--remote-write-timeout", "1s", "exec", "true")
	if err != nil {
		t.Fatal(err)
	}
	want = RemoteWrite{URL: "https://prom:9090/api/v1/write", BearerToken: "t2", Headers: []Header{{"A", "b"}}, Timeout: time.Second}
	if !reflect.DeepEqual(inv.Config.RemoteWrite, want) {
		t.Fatalf("flags: %+v, want %+v", inv.Config.RemoteWrite, want)
	}
	def, _ := parse(t, nil, "exec", "true")
	if def.Config.RemoteWrite.URL != "" || def.Config.RemoteWrite.Timeout != 30*time.Second {
		t.Fatalf("defaults: %+v", def.Config.RemoteWrite)
	}
	for _, bad := range [][]string{
		{"--remote-write", "vm:8428/api/v1/write", "exec", "true"},
		{"--remote-write", "ftp://vm/x", "exec", "true"},
		{"--remote-write-headers", "no colon", "exec", "true"},
		{"--remote-write-headers", "Bad Name: x", "exec", "true"},
		{"--remote-write-timeout", "-1", "exec", "true"},
		{"push", "file.txt"},
		{"push", "file.txt", "not-a-url"},
		{"push", "a", "http://vm/api/v1/write", "extra"},
	} {
		if _, err := parse(t, nil, bad...); err == nil || !IsUsage(err) {
			t.Errorf("%q: want a usage error, got %v", bad, err)
		}
	}
	inv, err = parse(t, []string{"SE_REMOTE_WRITE_TIMEOUT=3"}, "push", "--remote-write-bearer-token", "x", "m.txt", "http://vm:8428/api/v1/write")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Mode != ModePush || strings.Join(inv.Args, " ") != "m.txt http://vm:8428/api/v1/write" ||
		inv.Config.RemoteWrite.BearerToken != "x" || inv.Config.RemoteWrite.Timeout != 3*time.Second {
		t.Fatalf("push: %+v", inv)
	}
}

// TestSyncPartiesSettings: SE_SYNC_PARTIES and SE_SYNC_STOP (N-party
// sync), as variables and flags, their defaults and bad values.
func TestSyncPartiesSettings(t *testing.T) {
	inv, err := parse(t, nil, "waitStart", "true")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Config.SyncParties != 1 || inv.Config.SyncStopLast {
		t.Fatalf("defaults: parties %d, stop last %v", inv.Config.SyncParties, inv.Config.SyncStopLast)
	}
	inv, err = parse(t, []string{"SE_SYNC_PARTIES=4", "SE_SYNC_STOP=last"}, "waitStartAndStop", "true")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Config.SyncParties != 4 || !inv.Config.SyncStopLast {
		t.Fatalf("variables: parties %d, stop last %v", inv.Config.SyncParties, inv.Config.SyncStopLast)
	}
	inv, err = parse(t, []string{"SE_SYNC_STOP=last"}, "--parties", "3", "--sync-stop", "first", "waitStartAndStop", "true")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Config.SyncParties != 3 || inv.Config.SyncStopLast {
		t.Fatalf("flags: parties %d, stop last %v", inv.Config.SyncParties, inv.Config.SyncStopLast)
	}
	for _, env := range []string{"SE_SYNC_PARTIES=0", "SE_SYNC_PARTIES=-2", "SE_SYNC_PARTIES=many", "SE_SYNC_PARTIES=1001", "SE_SYNC_STOP=middle"} {
		name, _, _ := strings.Cut(env, "=")
		if _, err := parse(t, []string{env}, "waitStart", "true"); err == nil || !strings.Contains(err.Error(), "invalid "+name) {
			t.Errorf("%s: %v", env, err)
		}
	}
}

// TestRunqueueHistogram: the opt-in histogram (probe group runq) is off by
// default, on with SE_RUNQUEUE_HISTOGRAM=1, and the flag wins.
func TestRunqueueHistogram(t *testing.T) {
	for _, c := range []struct {
		env  []string
		args []string
		want bool
	}{
		{nil, []string{"exec", "true"}, false},
		{[]string{"SE_RUNQUEUE_HISTOGRAM=1"}, []string{"exec", "true"}, true},
		{[]string{"SE_RUNQUEUE_HISTOGRAM=on"}, []string{"exec", "true"}, true},
		{[]string{"SE_RUNQUEUE_HISTOGRAM=1"}, []string{"--runqueue-histogram", "0", "exec", "true"}, false},
		{nil, []string{"exec", "--runqueue-histogram=1", "true"}, true},
	} {
		inv, err := parse(t, c.env, c.args...)
		if err != nil {
			t.Fatalf("%v %v: %v", c.env, c.args, err)
		}
		if inv.Config.RunqueueHistogram != c.want {
			t.Errorf("%v %v: RunqueueHistogram %v, want %v", c.env, c.args, inv.Config.RunqueueHistogram, c.want)
		}
	}
	if _, err := parse(t, []string{"SE_RUNQUEUE_HISTOGRAM=maybe"}, "exec", "true"); err == nil || !IsUsage(err) {
		t.Errorf("SE_RUNQUEUE_HISTOGRAM=maybe: %v, want a usage error", err)
	}
}
