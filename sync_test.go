package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/testenv"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// lockedBuffer is a bytes.Buffer that a test may read while the process
// writes to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// background is a statexec started without waiting for it.
type background struct {
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer
	file           string
	done           chan struct{}
	code           int
	ended          time.Time
}

func startStatexec(t *testing.T, env []string, args ...string) *background {
	t.Helper()
	b := &background{cmd: newCmd(t, env, args...), done: make(chan struct{})}
	b.file = fileOf(b.cmd.Env)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.cmd.Wait()
		b.ended = time.Now()
		b.code = b.cmd.ProcessState.ExitCode()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

func (b *background) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(limit):
		b.cmd.Process.Kill()
		<-b.done
		t.Fatalf("statexec %v still running after %s; stderr:\n%s", b.cmd.Args[1:], limit, b.stderr.String())
	}
}

// syncAddr waits for a wait* mode's "waiting for POST /start on ADDR" line
// and returns ADDR.
func (b *background) syncAddr(t *testing.T) string {
	t.Helper()
	const marker = "waiting for POST /start on "
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		out := b.stderr.String()
		if i := strings.Index(out, marker); i >= 0 {
			if j := strings.IndexByte(out[i:], '\n'); j > 0 {
				return strings.TrimSpace(out[i+len(marker) : i+j])
			}
		}
	}
	t.Fatalf("no sync server address; stderr:\n%s", b.stderr.String())
	return ""
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("nothing listens on %s", addr)
}

func post(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// checkComplete reads a file with the strict parser, VictoriaMetrics and
// promtool and returns it.
func checkComplete(t *testing.T, vm *testenv.VM, path string) *testenv.File {
	t.Helper()
	f := testenv.ParseFile(t, path)
	if vm != nil {
		vm.Import(t, path)
	}
	if n := testenv.PromtoolBackfill(t, path); n != len(f.Samples) {
		t.Fatalf("promtool backfilled %d of %d samples", n, len(f.Samples))
	}
	return f
}

func TestSyncPairOverLoopback(t *testing.T) {
	testenv.Require(t, "victoria-metrics", "promtool")
	addr := freePort(t)
	origin := "SE_TIME_RELATIVE=1704067200000"
	srv := startStatexec(t, []string{"SE_SYNC_LISTEN=" + addr, "SE_INTERVAL=250ms", origin}, "waitStartAndStop", "sleep", "60")
	waitListening(t, addr)
	cli := startStatexec(t, []string{"SE_INTERVAL=250ms", origin}, "syncStartAndStop", "http://"+addr, "sleep", "1")
	cli.wait(t, 20*time.Second)
	srv.wait(t, 10*time.Second)
	if cli.code != 0 || srv.code != 0 {
		t.Fatalf("client exit %d, server exit %d\nclient:\n%s\nserver:\n%s", cli.code, srv.code, cli.stderr.String(), srv.stderr.String())
	}
	if gap := srv.ended.Sub(cli.ended); gap > 2*time.Second {
		t.Fatalf("server ended %s after the client", gap)
	}
	vm := testenv.StartVictoriaMetrics(t)
	var startServer, startClient int64
	for _, b := range []*background{srv, cli} {
		f := checkComplete(t, vm, b.file)
		if seq := statusSequence(f); fmt.Sprint(seq) != "[0 1 2]" {
			t.Fatalf("%s status sequence %v", b.cmd.Args[1], seq)
		}
		for _, s := range f.Series("statexec_command_status", nil) {
			if s.Value == 1 {
				if b == srv {
					startServer = s.TimestampMs
				} else {
					startClient = s.TimestampMs
				}
				break
			}
		}
	}
	role := map[string]int{}
	for _, s := range vm.Export(t, `statexec_command_status`) {
		role[s.Labels["role"]] += len(s.Values)
	}
	if role["server"] == 0 || role["client"] == 0 {
		t.Fatalf("roles in VictoriaMetrics: %v", role)
	}
	// Same origin, so the two commands' starts line up: the client starts
	// its command once the server answered 201.
	if d := startClient - startServer; d < -1000 || d > 1000 {
		t.Fatalf("server started at %d, client at %d", startServer, startClient)
	}
}

func TestSyncClientFirstServerLater(t *testing.T) {
	addr := freePort(t)
	cli := startStatexec(t, []string{"SE_SYNC_TIMEOUT=20"}, "syncStart", "http://"+addr, "true")
	time.Sleep(2 * time.Second)
	srv := startStatexec(t, []string{"SE_SYNC_LISTEN=" + addr}, "waitStart", "sleep", "0.5")
	cli.wait(t, 20*time.Second)
	srv.wait(t, 10*time.Second)
	if cli.code != 0 || srv.code != 0 {
		t.Fatalf("client %d server %d\n%s\n%s", cli.code, srv.code, cli.stderr.String(), srv.stderr.String())
	}
}

func TestSyncClientGivesUp(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	r := statexec(t, "", []string{"SE_SYNC_TIMEOUT=1"}, "syncStart", "http://"+freePort(t), "touch", marker)
	if r.code == 0 || !strings.Contains(r.stderr, "not reachable") || !strings.Contains(r.stderr, "not run") {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran")
	}
}

func TestSyncToken(t *testing.T) {
	addr := freePort(t)
	srv := startStatexec(t, []string{"SE_SYNC_LISTEN=" + addr, "SE_SYNC_TOKEN=s3cret"}, "waitStartAndStop", "sleep", "30")
	waitListening(t, addr)
	marker := filepath.Join(t.TempDir(), "ran")
	for _, token := range []string{"", "wrong"} {
		r := statexec(t, "", []string{"SE_SYNC_TOKEN=" + token}, "syncStart", "http://"+addr, "touch", marker)
		if r.code == 0 || !strings.Contains(r.stderr, "401") {
			t.Fatalf("token %q: exit %d stderr %q", token, r.code, r.stderr)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("client ran without the right token")
	}
	if code := post(t, "http://"+addr+"/stop", "wrong"); code != 401 {
		t.Fatalf("stop with wrong token: %d", code)
	}
	if code := post(t, "http://"+addr+"/stop", "s3cret"); code != http.StatusPreconditionFailed {
		t.Fatalf("stop before start: %d, want 412", code)
	}
	r := statexec(t, "", []string{"SE_SYNC_TOKEN=s3cret"}, "syncStartAndStop", "http://"+addr, "true")
	if r.code != 0 {
		t.Fatalf("right token: exit %d %s", r.code, r.stderr)
	}
	srv.wait(t, 10*time.Second)
	if srv.code != 0 {
		t.Fatalf("server exit %d", srv.code)
	}
}

func TestSyncConcurrentStartsStartOnce(t *testing.T) {
	addr := freePort(t)
	marker := filepath.Join(t.TempDir(), "count")
	srv := startStatexec(t, []string{"SE_SYNC_LISTEN=" + addr}, "waitStartAndStop", "sh", "-c", "echo x >> "+marker+"; sleep 30")
	waitListening(t, addr)
	var wg sync.WaitGroup
	codes := make(chan int, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post("http://"+addr+"/start", "", nil)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[201] != 1 || count[409] != 99 {
		t.Fatalf("status codes %v, want one 201 and 99 409", count)
	}
	if code := post(t, "http://"+addr+"/stop", ""); code != 202 {
		t.Fatalf("stop: %d", code)
	}
	srv.wait(t, 15*time.Second)
	b, _ := os.ReadFile(marker)
	if string(b) != "x\n" || srv.code != 0 {
		t.Fatalf("command ran %q times, server exit %d", b, srv.code)
	}
}

func TestSyncServerCommandFailsToStart(t *testing.T) {
	dir := t.TempDir()
	addr := freePort(t)
	// Executable now (resolved up front), removed before /start.
	script := filepath.Join(dir, "cmd.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755)
	srv := startStatexec(t, []string{"SE_SYNC_LISTEN=" + addr}, "waitStart", script)
	waitListening(t, addr)
	os.Remove(script)
	marker := filepath.Join(dir, "ran")
	r := statexec(t, "", nil, "syncStart", "http://"+addr, "touch", marker)
	if r.code == 0 || !strings.Contains(r.stderr, "500") {
		t.Fatalf("client exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("client ran although the server's command failed")
	}
	srv.wait(t, 10*time.Second)
	if srv.code != 127 {
		t.Fatalf("server exit %d, want 127; %s", srv.code, srv.stderr.String())
	}
}

// TestIperf3ExampleAcrossNamespaces runs the README's example for real:
// iperf3 server and client under statexec in two network namespaces.
func TestIperf3ExampleAcrossNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	testenv.Require(t, "iperf3", "ip", "victoria-metrics", "promtool")
	out := t.TempDir()
	cmd := exec.Command("scripts/example.sh", out, "2")
	cmd.Env = append(os.Environ(), "STATEXEC="+statexecBin, "SE_INTERVAL=250ms")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("example: %v\n%s", err, b)
	}
	vm := testenv.StartVictoriaMetrics(t)
	files := map[string]*testenv.File{}
	for role, name := range map[string]string{"server": "statexec_metrics_server.txt", "client": "statexec_metrics.txt"} {
		f := checkComplete(t, vm, filepath.Join(out, name))
		files[role] = f
		if seq := statusSequence(f); fmt.Sprint(seq) != "[0 1 2]" {
			t.Fatalf("%s status %v", role, seq)
		}
		if s := f.Samples[0]; s.Labels["role"] != role || s.Labels["instance"] != role {
			t.Fatalf("%s labels %v", role, s.Labels)
		}
	}
	// 2 s of iperf3 over the veth moves far more than 50 MB; the client's
	// host metrics see it on its veth interface (its own namespace).
	veth := files["client"].Series("statexec_network_sent_bytes_total", nil)
	var vethSent []float64
	for _, s := range veth {
		if strings.HasPrefix(s.Labels["interface"], "vc") {
			vethSent = append(vethSent, s.Value)
		}
	}
	if len(vethSent) < 2 || vethSent[len(vethSent)-1]-vethSent[0] < 50e6 {
		t.Fatalf("client veth sent: %v", vethSent)
	}
	sent := vethSent[len(vethSent)-1] - vethSent[0]
	// With eBPF, the command's own count is the veth's: only iperf3
	// talks there (the sync requests are outside the command's cgroup).
	if info := files["client"].Series("statexec_probe_info", map[string]string{"backend": "ebpf"}); len(info) > 0 {
		proc := files["client"].Series("statexec_process_network_sent_bytes_total", nil)
		got := proc[len(proc)-1].Value
		if got < 0.95*sent || got > 1.05*sent {
			t.Fatalf("iperf3 client sent %.0f bytes per eBPF, the veth %.0f", got, sent)
		}
	} else if os.Geteuid() == 0 {
		t.Logf("probes ran in plain mode")
	}
	// Both files start on the same origin.
	first := func(f *testenv.File) int64 { return f.Series("statexec_command_status", nil)[0].TimestampMs }
	if d := first(files["server"]) - first(files["client"]); d < -3000 || d > 3000 {
		t.Fatalf("first samples %d ms apart", d)
	}
}
