package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Kill stops VictoriaMetrics with sig and waits until it has exited.
// SIGTERM makes it flush what it acknowledged; SIGKILL loses the rows
// still in its memory (about a second's worth), which no client can see.
func (vm *VM) Kill(t testing.TB, sig syscall.Signal) {
	t.Helper()
	_ = vm.cmd.Process.Signal(sig)
	select {
	case <-vm.exited:
	case <-time.After(vmStopTimeout):
		t.Fatalf("victoria-metrics did not exit within %v of %v", vmStopTimeout, sig)
	}
}

// Restart starts VictoriaMetrics again on the same address and storage
// after Kill, and waits until it is healthy.
func (vm *VM) Restart(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(vm.LogFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(vm.cmd.Path, vm.cmd.Args[1:]...)
	cmd.Stdout, cmd.Stderr, cmd.Dir, cmd.Env = logf, logf, vm.cmd.Dir, vm.cmd.Env
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("restart victoria-metrics: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	vm.cmd, vm.exited = cmd, exited
	deadline := time.Now().Add(vmStartTimeout)
	for !vm.healthy() {
		select {
		case <-exited:
			t.Fatalf("victoria-metrics exited on restart; log:\n%s", tail(vm.Log(), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("victoria-metrics not healthy %v after restart", vmStartTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Prometheus is a Prometheus server (the Debian package, 2.42) started by
// StartPrometheus with its remote-write receiver on, on 127.0.0.1.
type Prometheus struct {
	URL      string // http://127.0.0.1:port
	WriteURL string // URL + /api/v1/write
	LogFile  string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// StartPrometheus starts prometheus with --web.enable-remote-write-receiver,
// no scrape targets, a storage directory in t.TempDir() and a free port,
// waits until /-/ready answers (at most 20 s) and ends it (by its pid) on
// cleanup.
func StartPrometheus(t testing.TB) *Prometheus {
	t.Helper()
	bin := Bin(t, "prometheus")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p := &Prometheus{URL: "http://" + addr, WriteURL: "http://" + addr + "/api/v1/write",
			LogFile: filepath.Join(dir, fmt.Sprintf("prometheus-%d.log", attempt))}
		logf, err := os.Create(p.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		p.cmd = exec.Command(bin, "--config.file="+cfg, "--web.listen-address="+addr,
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			"--web.enable-remote-write-receiver", "--log.level=warn")
		p.cmd.Dir = dir
		if err := p.start(logf); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		if p.waitReady(vmStartTimeout) {
			t.Cleanup(p.stop)
			return p
		}
		p.stop()
		log, _ := os.ReadFile(p.LogFile)
		if !strings.Contains(string(log), "address already in use") {
			t.Fatalf("prometheus not ready; log:\n%s", tail(string(log), 30))
		}
	}
	t.Fatal("prometheus: no free port after 3 tries")
	return nil
}

// start starts p.cmd logging to logf (closed here).
func (p *Prometheus) start(logf *os.File) error {
	defer logf.Close()
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	setProcAttr(p.cmd)
	if err := p.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	p.exited = exited
	cmd := p.cmd
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return nil
}

// Kill ends Prometheus with SIGKILL and waits until it has exited: what
// it acknowledged is in its write-ahead log (in the page cache), so a
// restart replays it.
func (p *Prometheus) Kill(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(vmStopTimeout):
		t.Fatal("prometheus did not exit after SIGKILL")
	}
}

// Restart starts Prometheus again on the same address and storage after
// Kill, and waits until it is ready (its WAL replayed).
func (p *Prometheus) Restart(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(p.LogFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	old := p.cmd
	p.cmd = exec.Command(old.Path, old.Args[1:]...)
	p.cmd.Dir = old.Dir
	if err := p.start(logf); err != nil {
		t.Fatalf("restart prometheus: %v", err)
	}
	if !p.waitReady(vmStartTimeout) {
		log, _ := os.ReadFile(p.LogFile)
		t.Fatalf("prometheus not ready after restart; log:\n%s", tail(string(log), 30))
	}
}

func (p *Prometheus) waitReady(d time.Duration) bool {
	deadline := time.Now().Add(d)
	c := http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return false
		default:
		}
		if resp, err := c.Get(p.URL + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func (p *Prometheus) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(vmStopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Series reads back every raw sample of the series matching selector
// (e.g. `{job="statexec"}`) over the last span before now, through a
// range-vector instant query. Series are sorted by their labels.
func (p *Prometheus) Series(t testing.TB, selector string, span time.Duration) []Series {
	t.Helper()
	q := url.Values{}
	q.Set("query", fmt.Sprintf("%s[%ds]", selector, int64(span.Seconds())))
	q.Set("time", strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10))
	resp, err := http.Get(p.URL + "/api/v1/query?" + q.Encode())
	if err != nil {
		t.Fatalf("prometheus query: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("prometheus query: HTTP %d: %s", resp.StatusCode, body)
	}
	var r struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("prometheus query: %v", err)
	}
	var out []Series
	for _, res := range r.Data.Result {
		s := Series{Labels: res.Metric}
		for _, v := range res.Values {
			sec, _ := v[0].(float64)
			str, _ := v[1].(string)
			f, err := strconv.ParseFloat(str, 64)
			if err != nil {
				t.Fatalf("prometheus value %q: %v", str, err)
			}
			s.TimestampsMs = append(s.TimestampsMs, int64(math.Round(sec*1000)))
			s.Values = append(s.Values, f)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return fmt.Sprint(out[i].Labels) < fmt.Sprint(out[j].Labels) })
	return out
}
