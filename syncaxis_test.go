package main

// End-to-end tests of the shared time axis of the sync modes (issue 13):
// two statexec in two network namespaces the test creates, the server
// started seconds before the client, both with the same SE_TIME_RELATIVE.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/testenv"
)

const axisOrigin = int64(1704067200000)

// netnsPair is two network namespaces joined by a veth pair: the server
// side (10.78.0.1) and the client side (10.78.0.2).
type netnsPair struct {
	srv, cli         string // namespace names
	srvVeth, cliVeth string // interface names
}

// newNetnsPair creates the namespaces with names unique to this run (pid
// and random suffix: another developer may run the same test now) and
// removes them at cleanup.
func newNetnsPair(t *testing.T) netnsPair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	testenv.Require(t, "ip", "nsenter")
	b := make([]byte, 3)
	rand.Read(b)
	tag := hex.EncodeToString(b)
	p := netnsPair{
		srv: fmt.Sprintf("seax-s-%d-%s", os.Getpid(), tag), cli: fmt.Sprintf("seax-c-%d-%s", os.Getpid(), tag),
		srvVeth: "vxs" + tag, cliVeth: "vxc" + tag,
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() {
		for _, ns := range []string{p.srv, p.cli} {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	run("netns", "add", p.srv)
	run("netns", "add", p.cli)
	run("link", "add", p.srvVeth, "netns", p.srv, "type", "veth", "peer", "name", p.cliVeth, "netns", p.cli)
	run("-n", p.srv, "addr", "add", "10.78.0.1/24", "dev", p.srvVeth)
	run("-n", p.cli, "addr", "add", "10.78.0.2/24", "dev", p.cliVeth)
	for _, l := range [][2]string{{p.srv, "lo"}, {p.cli, "lo"}, {p.srv, p.srvVeth}, {p.cli, p.cliVeth}} {
		run("-n", l[0], "link", "set", l[1], "up")
	}
	return p
}

// startIn starts statexec in namespace ns. nsenter --net enters only the
// network namespace (ip netns exec would hide the cgroup2 mount) and
// execs statexec, so that the pid is statexec's.
func startIn(t *testing.T, ns string, env []string, args ...string) *background {
	t.Helper()
	cmd := newCmd(t, env, args...)
	cmd.Path, _ = exec.LookPath("nsenter")
	cmd.Args = append([]string{"nsenter", "--net=/run/netns/" + ns, statexecBin}, args...)
	b := &background{cmd: cmd, done: make(chan struct{}), file: fileOf(cmd.Env)}
	cmd.Stdout, cmd.Stderr = &b.stdout, &b.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		b.ended = time.Now()
		b.code = cmd.ProcessState.ExitCode()
		close(b.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-b.done
	})
	return b
}

// startedAt is the timestamp of the first statexec_command_status 1.
func startedAt(t *testing.T, f *testenv.File) int64 {
	t.Helper()
	for _, s := range f.Series("statexec_command_status", nil) {
		if s.Value == 1 {
			return s.TimestampMs
		}
	}
	t.Fatal("statexec_command_status never 1")
	return 0
}

func bothOK(t *testing.T, srv, cli *background) {
	t.Helper()
	if cli.code != 0 || srv.code != 0 {
		t.Fatalf("client exit %d, server exit %d\nclient:\n%s%s\nserver:\n%s%s", cli.code, srv.code,
			cli.stdout.String(), cli.stderr.String(), srv.stdout.String(), srv.stderr.String())
	}
}

// TestSyncInstantIsTheOrigin: a server started 3 s before its client, the
// same origin and the same 1 s wait before the command on both sides: in
// both files the command starts within 10 ms of origin + 1 s, within 10 ms
// of each other, and the server's samples of its 3 s of waiting keep their
// place before the origin.
func TestSyncInstantIsTheOrigin(t *testing.T) {
	p := newNetnsPair(t)
	env := []string{"SE_TIME_RELATIVE=" + strconv.FormatInt(axisOrigin, 10), "SE_INTERVAL=100ms", "SE_WAIT_TIME_BEFORE_COMMAND=1"}
	srv := startIn(t, p.srv, append(env, "SE_SYNC_LISTEN=10.78.0.1:8080"), "waitStartAndStop", "sleep", "30")
	srv.syncAddr(t)
	launched := time.Now()
	// The scenario itself: the client comes 3 s later.
	time.Sleep(3 * time.Second)
	cli := startIn(t, p.cli, env, "syncStartAndStop", "http://10.78.0.1:8080", "sleep", "1")
	cli.wait(t, 30*time.Second)
	srv.wait(t, 15*time.Second)
	bothOK(t, srv, cli)
	fs, fc := testenv.ParseFile(t, srv.file), testenv.ParseFile(t, cli.file)
	want := axisOrigin + 1000
	ts, tc := startedAt(t, fs), startedAt(t, fc)
	t.Logf("command started at origin + %d ms (server), + %d ms (client)", ts-axisOrigin, tc-axisOrigin)
	for _, b := range []*background{srv, cli} {
		for _, l := range strings.Split(b.stderr.String(), "\n") {
			if strings.Contains(l, "synchronised at") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
	if d := ts - want; d < -10 || d > 10 {
		t.Errorf("server's command started at origin + %d ms, want 1000 ± 10", ts-axisOrigin)
	}
	if d := tc - want; d < -10 || d > 10 {
		t.Errorf("client's command started at origin + %d ms, want 1000 ± 10", tc-axisOrigin)
	}
	if d := ts - tc; d < -10 || d > 10 {
		t.Errorf("the two commands started %d ms apart", d)
	}
	// The server's first sample lies as long before the origin as the
	// server waited for /start (>= 3 s, less than the time since launch).
	first := fs.Series("statexec_command_status", nil)[0].TimestampMs
	waited := axisOrigin - first
	if waited < 3000 || waited > time.Since(launched).Milliseconds() {
		t.Errorf("server's first sample at origin - %d ms, want 3 s or more before it", waited)
	}
	for _, f := range []*testenv.File{fs, fc} {
		for _, s := range f.Samples {
			if s.TimestampMs < 0 {
				t.Fatalf("negative timestamp: %+v", s)
			}
		}
	}
}

// counterAt is the counter's value at ms, interpolated linearly between
// its samples (clamped at the ends).
func counterAt(samples []testenv.Sample, ms int64) float64 {
	if ms <= samples[0].TimestampMs {
		return samples[0].Value
	}
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		if ms <= b.TimestampMs {
			return a.Value + (b.Value-a.Value)*float64(ms-a.TimestampMs)/float64(b.TimestampMs-a.TimestampMs)
		}
	}
	return samples[len(samples)-1].Value
}

// busyBins are the 1 s bins of the axis (numbered from the origin) that
// carry more than half of the busiest bin's bytes.
func busyBins(t *testing.T, samples []testenv.Sample, from, to int) ([]int, []float64) {
	t.Helper()
	if len(samples) < 2 {
		t.Fatalf("%d samples", len(samples))
	}
	var bytes []float64
	top := 0.0
	for k := from; k < to; k++ {
		b := counterAt(samples, axisOrigin+int64(k)*1000+1000) - counterAt(samples, axisOrigin+int64(k)*1000)
		bytes = append(bytes, b)
		top = math.Max(top, b)
	}
	var busy []int
	for i, b := range bytes {
		if b > top/2 {
			busy = append(busy, from+i)
		}
	}
	return busy, bytes
}

func ifaceSeries(f *testenv.File, name, iface string) []testenv.Sample {
	return f.Series(name, map[string]string{"interface": iface})
}

// TestIperf3OnTheSharedAxis: iperf3 server and client under statexec in
// two namespaces, the server started 3 s early, the client's iperf3 after
// a 2 s wait: the client's sent-bytes rate and the server's received-bytes
// rate (host counters of each namespace's veth) rise and fall in the same
// 1 s bins of the shared axis; in VictoriaMetrics, the two command phases
// overlap under the shared label benchmark="sample".
func TestIperf3OnTheSharedAxis(t *testing.T) {
	testenv.Require(t, "iperf3", "victoria-metrics", "promtool")
	p := newNetnsPair(t)
	env := []string{"SE_TIME_RELATIVE=" + strconv.FormatInt(axisOrigin, 10), "SE_INTERVAL=100ms",
		"SE_WAIT_TIME_AFTER_COMMAND=1", "SE_LABEL_benchmark=sample"}
	srv := startIn(t, p.srv, append(env, "SE_SYNC_LISTEN=10.78.0.1:8080", "SE_INSTANCE=server"),
		"waitStartAndStop", "iperf3", "-s", "-B", "10.78.0.1")
	srv.syncAddr(t)
	time.Sleep(3 * time.Second) // the scenario: the client comes 3 s later
	cli := startIn(t, p.cli, append(env, "SE_WAIT_TIME_BEFORE_COMMAND=2", "SE_INSTANCE=client"),
		"syncStartAndStop", "http://10.78.0.1:8080", "iperf3", "-c", "10.78.0.1", "-t", "3")
	cli.wait(t, 40*time.Second)
	srv.wait(t, 20*time.Second)
	bothOK(t, srv, cli)
	vm := testenv.StartVictoriaMetrics(t)
	fs, fc := checkComplete(t, vm, srv.file), checkComplete(t, vm, cli.file)
	sent := ifaceSeries(fc, "statexec_network_sent_bytes_total", p.cliVeth)
	recv := ifaceSeries(fs, "statexec_network_received_bytes_total", p.srvVeth)
	busySent, sentBins := busyBins(t, sent, -3, 8)
	busyRecv, recvBins := busyBins(t, recv, -3, 8)
	t.Logf("bytes per 1 s bin from origin - 3 s: client sent %.0f, server received %.0f", sentBins, recvBins)
	if len(busySent) < 2 || !slices.Equal(busySent, busyRecv) {
		t.Fatalf("busy bins: client sent %v, server received %v", busySent, busyRecv)
	}
	// iperf3 -t 3 after the client's 2 s wait: bins 2, 3 and 4.
	if busySent[0] != 2 {
		t.Errorf("traffic starts in bin %d, want 2 (after the 2 s wait)", busySent[0])
	}
	// VictoriaMetrics: the running phase of each side, by the shared label.
	phase := map[string][2]int64{}
	for _, s := range vm.Export(t, `statexec_command_status{benchmark="sample"}`) {
		role := s.Labels["role"]
		for i, v := range s.Values {
			if v != 1 {
				continue
			}
			ph, ok := phase[role]
			ts := s.TimestampsMs[i]
			if !ok {
				ph = [2]int64{ts, ts}
			}
			ph[0], ph[1] = min(ph[0], ts), max(ph[1], ts)
			phase[role] = ph
		}
	}
	s, c := phase["server"], phase["client"]
	t.Logf("running in VictoriaMetrics: server %v, client %v (ms from origin: %d..%d, %d..%d)", s, c,
		s[0]-axisOrigin, s[1]-axisOrigin, c[0]-axisOrigin, c[1]-axisOrigin)
	if s[0] == 0 || c[0] == 0 || s[0] > c[1] || c[0] > s[1] {
		t.Fatalf("command phases do not overlap: server %v, client %v", s, c)
	}
}

// exampleRuns is how many times TestReadmeIperf3Example runs the README's
// example: STATEXEC_EXAMPLE_RUNS, default 10.
func exampleRuns(t *testing.T) int {
	n := 10
	if v := os.Getenv("STATEXEC_EXAMPLE_RUNS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("STATEXEC_EXAMPLE_RUNS=%q", v)
		}
	}
	return n
}

// TestReadmeIperf3Example runs the README's localhost example verbatim
// (port 8080, iperf3's default port) several times in a row: both exit 0
// and the client's iperf3 is never refused, thanks to its 2 s wait after
// the sync. Each run is in a network namespace of its own, whose
// loopback is its localhost, so that the fixed ports collide with nothing.
func TestReadmeIperf3Example(t *testing.T) {
	testenv.Require(t, "iperf3")
	runs := exampleRuns(t)
	for i := range runs {
		ns := newNetnsPair(t).srv
		// The README's commands, word for word (each gets its own
		// SE_METRICS_FILE in a temporary directory).
		srv := startIn(t, ns, []string{"SE_WAIT_TIME_AFTER_COMMAND=5"},
			"waitStartAndStop", "iperf3", "-s")
		cli := startIn(t, ns, []string{"SE_WAIT_TIME_BEFORE_COMMAND=2", "SE_WAIT_TIME_AFTER_COMMAND=5"},
			"syncStartAndStop", "http://localhost:8080", "iperf3", "-c", "localhost", "-t", "3")
		cli.wait(t, 60*time.Second)
		srv.wait(t, 30*time.Second)
		out := cli.stdout.String() + cli.stderr.String()
		if strings.Contains(out, "refused") || strings.Contains(out, "unable to connect") {
			t.Fatalf("run %d: the client's iperf3 was refused:\n%s", i, out)
		}
		bothOK(t, srv, cli)
		for _, f := range []string{srv.file, cli.file} {
			if seq := statusSequence(testenv.ParseFile(t, f)); fmt.Sprint(seq) != "[0 1 2]" {
				t.Fatalf("run %d: %s status %v", i, f, seq)
			}
		}
	}
	t.Logf("%d runs, all fine", runs)
}

// TestStartAfterSignalRefused (issue 14 item 7): SIGINT to a server that
// waits for /start, then 1 ms later a POST /start on a connection opened
// before: the answer is not 201, the command never runs and statexec
// exits 130. 50 times.
func TestStartAfterSignalRefused(t *testing.T) {
	for i := range 50 {
		marker := filepath.Join(t.TempDir(), "ran")
		b := startStatexec(t, []string{"SE_SYNC_LISTEN=127.0.0.1:0", "SE_SUMMARY=0"}, "waitStart", "touch", marker)
		addr := b.syncAddr(t)
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		b.cmd.Process.Signal(syscall.SIGINT)
		time.Sleep(time.Millisecond) // the scenario: /start 1 ms after the signal
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /start HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", addr)
		status, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		b.wait(t, 15*time.Second)
		if strings.Contains(status, " 201 ") {
			t.Fatalf("run %d: /start after SIGINT answered %q", i, strings.TrimSpace(status))
		}
		if status != "" && !strings.Contains(status, " 503 ") && !strings.Contains(status, " 409 ") {
			t.Fatalf("run %d: /start after SIGINT answered %q, want 503, 409 or no answer", i, strings.TrimSpace(status))
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("run %d: the command ran after SIGINT (answer %q)", i, strings.TrimSpace(status))
		}
		if b.code != 130 {
			t.Fatalf("run %d: exit %d, want 130; stderr:\n%s", i, b.code, b.stderr.String())
		}
	}
}

// TestKilledServerRecoversOnTheSyncAxis: a server killed (SIGKILL) after
// the sync leaves a spool whose recovered file is on the sync axis too:
// its waiting samples before the origin, the command's start at it.
func TestKilledServerRecoversOnTheSyncAxis(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.txt")
	pidFile := filepath.Join(dir, "child.pid")
	launched := time.Now()
	b := startStatexec(t, []string{"SE_METRICS_FILE=" + file, "SE_INTERVAL=100ms", "SE_SYNC_LISTEN=127.0.0.1:0",
		"SE_TIME_RELATIVE=" + strconv.FormatInt(axisOrigin, 10)},
		"waitStartAndStop", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 60")
	addr := b.syncAddr(t)
	time.Sleep(time.Second) // the scenario: /start comes 1 s later
	if code := post(t, "http://"+addr+"/start", ""); code != http.StatusCreated {
		t.Fatalf("POST /start: %d", code)
	}
	waited := time.Since(launched)
	readPid(t, pidFile)
	time.Sleep(500 * time.Millisecond) // a few samples after the start
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	out := filepath.Join(dir, "recovered.txt")
	if r := statexec(t, "", nil, "recover", file+".spool", out); r.code != 0 {
		t.Fatalf("recover: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	f := testenv.ParseFile(t, out)
	status := f.Series("statexec_command_status", nil)
	first := axisOrigin - status[0].TimestampMs
	if first < 900 || first > waited.Milliseconds() {
		t.Fatalf("first sample at origin - %d ms, want about 1 s before (waited %v)", first, waited)
	}
	if d := startedAt(t, f) - axisOrigin; d < 0 || d > 50 {
		t.Fatalf("command started at origin + %d ms", d)
	}
	for _, s := range status {
		if (s.Value == 0) != (s.TimestampMs < startedAt(t, f)) {
			t.Fatalf("status %v at origin %+d ms", s.Value, s.TimestampMs-axisOrigin)
		}
	}
}

// TestSmallOriginRefusedInSyncModes: in the wait* and sync* modes an
// origin below one day would put the waiting samples below 0: exit 2 up
// front, nothing runs, no file; exec mode still takes any origin.
func TestSmallOriginRefusedInSyncModes(t *testing.T) {
	for _, args := range [][]string{
		{"waitStart", "touch"}, {"waitStartAndStop", "touch"},
		{"syncStart", "http://" + freePort(t), "touch"}, {"syncStartAndStop", "http://" + freePort(t), "touch"},
	} {
		for _, origin := range []string{"0", "86399999"} {
			marker := filepath.Join(t.TempDir(), "ran")
			r := statexec(t, "", []string{"SE_TIME_RELATIVE=" + origin, "SE_SYNC_LISTEN=127.0.0.1:0"}, append(args, marker)...)
			if r.code != 2 || !strings.Contains(r.stderr, "SE_TIME_RELATIVE="+origin+" is too small") {
				t.Fatalf("%s with origin %s: exit %d, stderr %q", args[0], origin, r.code, r.stderr)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatalf("%s: the command ran", args[0])
			}
			if _, err := os.Stat(r.file); err == nil {
				t.Fatalf("%s: a metrics file was written", args[0])
			}
		}
	}
	// The client also needs room for SE_SYNC_TIMEOUT: 2 days of retries.
	r := statexec(t, "", []string{"SE_TIME_RELATIVE=" + strconv.Itoa(2*86400000), "SE_SYNC_TIMEOUT=172800"}, "syncStart", "http://"+freePort(t), "true")
	if r.code != 2 {
		t.Fatalf("client with a 2-day timeout and a 2-day origin: exit %d, %s", r.code, r.stderr)
	}
	// exec mode has no waiting before its origin: 0 is fine.
	if r := statexec(t, "", []string{"SE_TIME_RELATIVE=0"}, "exec", "true"); r.code != 0 {
		t.Fatalf("exec with origin 0: exit %d %s", r.code, r.stderr)
	}
}
