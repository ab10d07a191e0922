package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
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

// VM is a VictoriaMetrics single-node instance started by
// StartVictoriaMetrics for one test. It listens on 127.0.0.1 only and is
// killed on test cleanup.
type VM struct {
	URL     string // base URL, e.g. http://127.0.0.1:40123
	Addr    string // 127.0.0.1:port
	DataDir string // -storageDataPath (inside t.TempDir())
	LogFile string // stdout+stderr of the process

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	client *http.Client
}

// Series is one time series read back from VictoriaMetrics.
type Series struct {
	Labels       map[string]string // includes __name__
	Values       []float64
	TimestampsMs []int64
}

const (
	vmStartTimeout = 20 * time.Second
	vmStopTimeout  = 10 * time.Second
	httpTimeout    = 60 * time.Second
	vmStartTries   = 5
)

// VMArgs are the flags StartVictoriaMetrics passes besides -httpListenAddr and
// -storageDataPath:
//   - -retentionPeriod=100y: samples older than the retention (default 1
//     month) are dropped silently, with HTTP 204, at import.
//   - -search.disableCache and -search.latencyOffset=0: freshly imported (and
//     backfilled, old) data shows up in queries at once.
//   - -dedup.minScrapeInterval is deliberately not set: every sample is kept.
var VMArgs = []string{
	"-retentionPeriod=100y",
	"-search.disableCache",
	"-search.latencyOffset=0",
	"-loggerLevel=INFO",
}

// StartVictoriaMetrics starts the Debian victoria-metrics binary on 127.0.0.1
// with a free port and a storage directory in t.TempDir(), waits until
// /health answers OK (at most 20s) and stops it on cleanup.
func StartVictoriaMetrics(t testing.TB) *VM {
	t.Helper()
	bin := Bin(t, "victoria-metrics")
	base := t.TempDir()
	deadline := time.Now().Add(vmStartTimeout)
	var lastErr error
	for attempt := 1; attempt <= vmStartTries && time.Now().Before(deadline); attempt++ {
		vm, retry, err := startVMOnce(bin, filepath.Join(base, fmt.Sprintf("try%d", attempt)), deadline)
		if err == nil {
			t.Cleanup(vm.stop)
			return vm
		}
		lastErr = err
		if !retry {
			break
		}
		t.Logf("victoria-metrics start attempt %d: %v; retrying with another port", attempt, err)
	}
	t.Fatalf("cannot start victoria-metrics (%s): %v", bin, lastErr)
	return nil
}

// freePort returns a port that was free on 127.0.0.1 a moment ago (a
// variable so that tests can simulate losing the race for it).
var freePort = func() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startVMOnce starts one process. retry is true when the failure may be fixed
// by trying another port.
func startVMOnce(bin, dir string, deadline time.Time) (vm *VM, retry bool, err error) {
	port, err := freePort()
	if err != nil {
		return nil, false, fmt.Errorf("pick a free port on 127.0.0.1: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	vm = &VM{
		URL:     "http://" + addr,
		Addr:    addr,
		DataDir: filepath.Join(dir, "data"),
		LogFile: filepath.Join(dir, "victoria-metrics.log"),
		exited:  make(chan struct{}),
		client: &http.Client{
			Timeout:   httpTimeout,
			Transport: &http.Transport{Proxy: nil, DisableCompression: false},
		},
	}
	logf, err := os.Create(vm.LogFile)
	if err != nil {
		return nil, false, err
	}
	args := append([]string{"-httpListenAddr=" + addr, "-storageDataPath=" + vm.DataDir}, VMArgs...)
	vm.cmd = exec.Command(bin, args...)
	vm.cmd.Stdout = logf
	vm.cmd.Stderr = logf
	vm.cmd.Dir = dir
	vm.cmd.Env = os.Environ()
	setProcAttr(vm.cmd)
	if err := vm.cmd.Start(); err != nil {
		logf.Close()
		return nil, false, fmt.Errorf("start %s: %w", bin, err)
	}
	logf.Close() // the child has its own copy
	go func() {
		_ = vm.cmd.Wait()
		close(vm.exited)
	}()

	for {
		select {
		case <-vm.exited:
			log := vm.Log()
			if strings.Contains(log, "address already in use") {
				return nil, true, fmt.Errorf("port %d taken meanwhile: %s", port, strings.Join(logProblems(log, 0), "; "))
			}
			return nil, false, fmt.Errorf("victoria-metrics exited during start-up (%v); log:\n%s", vm.cmd.ProcessState, tail(log, 30))
		default:
		}
		if ok := vm.healthy(); ok {
			return vm, false, nil
		}
		if time.Now().After(deadline) {
			vm.stop()
			return nil, false, fmt.Errorf("%s/health not OK after %v; log:\n%s", vm.URL, vmStartTimeout, tail(vm.Log(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (vm *VM) healthy() bool {
	c := http.Client{Timeout: 2 * time.Second, Transport: vm.client.Transport}
	resp, err := c.Get(vm.URL + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "OK"
}

// stop terminates the process: SIGTERM, then SIGKILL after vmStopTimeout.
func (vm *VM) stop() {
	select {
	case <-vm.exited:
		return
	default:
	}
	_ = vm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-vm.exited:
		return
	case <-time.After(vmStopTimeout):
	}
	_ = vm.cmd.Process.Kill()
	select {
	case <-vm.exited:
	case <-time.After(vmStopTimeout):
	}
}

// Log returns everything the process has logged so far.
func (vm *VM) Log() string {
	b, _ := os.ReadFile(vm.LogFile)
	return string(b)
}

func (vm *VM) logSize() int64 {
	fi, err := os.Stat(vm.LogFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Import POSTs the file at path to /api/v1/import/prometheus (which reads both
// OpenMetrics and Prometheus text, and auto-detects seconds vs milliseconds
// timestamps), requires HTTP 204, flushes so the data is queryable at once, and
// fails if VictoriaMetrics logged a warning or error while importing (it
// answers 204 even when it drops unparsable lines or rows with timestamps too
// far in the future).
func (vm *VM) Import(t testing.TB, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("import into VictoriaMetrics: %v", err)
	}
	vm.importData(t, path, data)
}

// ImportBytes is Import for data held in memory.
func (vm *VM) ImportBytes(t testing.TB, data []byte) {
	t.Helper()
	vm.importData(t, "<bytes>", data)
}

func (vm *VM) importData(t testing.TB, what string, data []byte) {
	t.Helper()
	off := vm.logSize()
	req, err := http.NewRequest(http.MethodPost, vm.URL+"/api/v1/import/prometheus", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("import %s: %v", what, err)
	}
	req.Header.Set("Content-Type", "text/plain")
	resp, err := vm.client.Do(req)
	if err != nil {
		t.Fatalf("import %s into VictoriaMetrics: %v", what, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("import %s into VictoriaMetrics: HTTP %d (want 204): %s", what, resp.StatusCode, body)
	}
	vm.Flush(t)
	if problems := logProblems(vm.Log(), off); len(problems) > 0 {
		t.Fatalf("VictoriaMetrics accepted %s (HTTP 204) but logged problems (the rows concerned are dropped):\n%s",
			what, strings.Join(problems, "\n"))
	}
}

// Flush makes recently imported data visible to queries
// (/internal/force_flush; if the version lacks it, waits 2s for the periodic
// flush of pending rows).
func (vm *VM) Flush(t testing.TB) {
	t.Helper()
	resp, err := vm.client.Get(vm.URL + "/internal/force_flush")
	if err != nil {
		t.Fatalf("VictoriaMetrics force_flush: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent:
	case http.StatusNotFound, http.StatusBadRequest:
		time.Sleep(2 * time.Second)
	default:
		t.Fatalf("VictoriaMetrics force_flush: HTTP %d: %s", resp.StatusCode, body)
	}
}

// logProblems returns the warn/error lines logged after byte offset off,
// except harmless ones.
func logProblems(log string, off int64) []string {
	if off > int64(len(log)) {
		off = 0
	}
	var out []string
	for _, line := range strings.Split(log[off:], "\n") {
		f := strings.SplitN(line, "\t", 4)
		if len(f) < 4 {
			continue
		}
		switch f[1] {
		case "warn", "error", "fatal", "panic":
		default:
			continue
		}
		// Harmless: importing old samples resets the (disabled) rollup cache.
		if strings.Contains(f[3], "rollup result cache") {
			continue
		}
		out = append(out, line)
	}
	return out
}

// Export reads every sample of the series matching the series selector match
// (e.g. `statexec_cpu_seconds_total{mode="user"}` or `{__name__!=""}`) over
// all time (start=0 to now+3 days) through /api/v1/export. Series are sorted
// by their labels. NaN samples are not returned by VictoriaMetrics 1.79.
func (vm *VM) Export(t testing.TB, match string) []Series {
	t.Helper()
	q := url.Values{}
	q.Set("match[]", match)
	q.Set("start", "0")
	q.Set("end", strconv.FormatInt(time.Now().Add(72*time.Hour).Unix(), 10))
	resp, err := vm.client.Get(vm.URL + "/api/v1/export?" + q.Encode())
	if err != nil {
		t.Fatalf("VictoriaMetrics export %s: %v", match, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		t.Fatalf("VictoriaMetrics export %s: HTTP %d: %s", match, resp.StatusCode, body)
	}
	series, err := parseExport(resp.Body)
	if err != nil {
		t.Fatalf("VictoriaMetrics export %s: %v", match, err)
	}
	return series
}

// CountSamples returns the number of samples stored in all series.
func (vm *VM) CountSamples(t testing.TB) int {
	t.Helper()
	n := 0
	for _, s := range vm.Export(t, `{__name__!=""}`) {
		n += len(s.Values)
	}
	return n
}

// parseExport reads /api/v1/export JSON lines. VictoriaMetrics writes the
// non-JSON tokens Inf, -Inf and NaN as bare values, so they are quoted first.
func parseExport(r io.Reader) ([]Series, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var out []Series
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var row struct {
				Metric     map[string]string `json:"metric"`
				Values     []exportFloat     `json:"values"`
				Timestamps []int64           `json:"timestamps"`
			}
			if jerr := json.Unmarshal(quoteNonFinite(line), &row); jerr != nil {
				return nil, fmt.Errorf("export line %d: %v: %.200s", lineNo, jerr, line)
			}
			if len(row.Values) != len(row.Timestamps) {
				return nil, fmt.Errorf("export line %d: %d values but %d timestamps", lineNo, len(row.Values), len(row.Timestamps))
			}
			s := Series{Labels: row.Metric, Values: make([]float64, len(row.Values)), TimestampsMs: row.Timestamps}
			if s.Labels == nil {
				s.Labels = map[string]string{}
			}
			for i, v := range row.Values {
				s.Values[i] = float64(v)
			}
			out = append(out, s)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return seriesKey("", out[i].Labels) < seriesKey("", out[j].Labels) })
	return out, nil
}

type exportFloat float64

func (f *exportFloat) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' {
		s = s[1 : len(s)-1]
	}
	switch s {
	case "NaN":
		*f = exportFloat(math.NaN())
		return nil
	case "Inf", "+Inf":
		*f = exportFloat(math.Inf(1))
		return nil
	case "-Inf":
		*f = exportFloat(math.Inf(-1))
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("value %q: %w", s, err)
	}
	*f = exportFloat(v)
	return nil
}

// quoteNonFinite wraps bare Inf/+Inf/-Inf/NaN tokens outside JSON strings in
// quotes.
func quoteNonFinite(line []byte) []byte {
	out := make([]byte, 0, len(line)+16)
	inStr, esc := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		if inStr {
			out = append(out, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		if c == '"' {
			inStr = true
			out = append(out, c)
			continue
		}
		for _, tok := range []string{"-Inf", "+Inf", "Inf", "NaN"} {
			if bytes.HasPrefix(line[i:], []byte(tok)) {
				out = append(out, '"')
				out = append(out, tok...)
				out = append(out, '"')
				i += len(tok) - 1
				c = 0
				break
			}
		}
		if c != 0 {
			out = append(out, c)
		}
	}
	return out
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
