package syncctl

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// counter counts callback calls.
type counter struct{ n atomic.Int32 }

func (c *counter) start() error { c.n.Add(1); return nil }
func (c *counter) stop()        { c.n.Add(1) }
func (c *counter) get() int     { return int(c.n.Load()) }

// serve starts s on 127.0.0.1:0 and returns its base URL. Cleanup shuts it
// down and checks that Serve returned nil promptly.
func serve(t *testing.T, opts ServerOptions) (*Server, string) {
	t.Helper()
	opts.Listen = "127.0.0.1:0"
	s := NewServer(opts)
	if err := s.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v, want nil after Shutdown", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return s, "http://" + s.Addr().String()
}

// newClient returns an HTTP client whose connections are closed at cleanup.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 200}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type answer struct {
	code   int
	body   string
	header http.Header
}

func request(t *testing.T, c *http.Client, method, url, token string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return answer{resp.StatusCode, string(b), resp.Header}
}

func expect(t *testing.T, a answer, code int, body string) {
	t.Helper()
	if a.code != code || a.body != body {
		t.Fatalf("got %d %q, want %d %q", a.code, a.body, code, body)
	}
}

func getStatus(t *testing.T, c *http.Client, base, token string) Status {
	t.Helper()
	a := request(t, c, "GET", base+"/status", token)
	if a.code != 200 {
		t.Fatalf("GET /status: %d %q", a.code, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /status Content-Type %q", ct)
	}
	// Check the exact JSON keys scripts rely on.
	var raw map[string]any
	if err := json.Unmarshal([]byte(a.body), &raw); err != nil {
		t.Fatalf("GET /status: %v in %q", err, a.body)
	}
	for _, k := range []string{"state", "command", "started_at", "exit_code"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("GET /status: no %q in %s", k, a.body)
		}
	}
	var st Status
	if err := json.Unmarshal([]byte(a.body), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestStateMachine(t *testing.T) {
	var starts, stops counter
	s, base := serve(t, ServerOptions{
		AllowStop: true, Command: "iperf3 -s", Start: starts.start, Stop: stops.stop,
	})
	c := newClient(t)

	st := getStatus(t, c, base, "")
	if st.State != "waiting" || st.Command != "iperf3 -s" || st.StartedAt != "" || st.ExitCode != nil {
		t.Fatalf("initial status %+v", st)
	}

	expect(t, request(t, c, "POST", base+"/stop", ""), 412, "not started: POST /start first\n")
	a := request(t, c, "GET", base+"/start", "")
	expect(t, a, 405, "method GET not allowed: use POST\n")
	if got := a.header.Get("Allow"); got != "POST" {
		t.Errorf("GET /start Allow %q, want POST", got)
	}
	a = request(t, c, "DELETE", base+"/stop", "")
	if a.code != 405 || a.header.Get("Allow") != "POST" {
		t.Errorf("DELETE /stop: %d Allow %q", a.code, a.header.Get("Allow"))
	}
	a = request(t, c, "POST", base+"/status", "")
	if a.code != 405 || a.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /status: %d Allow %q", a.code, a.header.Get("Allow"))
	}
	for _, p := range []string{"/", "/nope", "/start/", "/START"} {
		if a := request(t, c, "POST", base+p, ""); a.code != 404 {
			t.Errorf("POST %s: %d, want 404", p, a.code)
		}
	}
	if starts.get() != 0 || closed(s.Started()) {
		t.Fatalf("started before POST /start")
	}

	before := time.Now()
	expect(t, request(t, c, "POST", base+"/start", ""), 201, "started\n")
	if starts.get() != 1 || !closed(s.Started()) {
		t.Fatalf("after /start: %d Start calls, Started closed %v", starts.get(), closed(s.Started()))
	}
	st = getStatus(t, c, base, "")
	if st.State != "running" || st.ExitCode != nil {
		t.Fatalf("status after start %+v", st)
	}
	at, err := time.Parse(time.RFC3339Nano, st.StartedAt)
	if err != nil || at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("started_at %q (%v), want about %v", st.StartedAt, err, before)
	}

	expect(t, request(t, c, "POST", base+"/start", ""), 409, "already started\n")
	if starts.get() != 1 {
		t.Fatalf("second /start called Start again")
	}

	expect(t, request(t, c, "POST", base+"/stop", ""), 202, "stopping\n")
	if stops.get() != 1 || !closed(s.StopRequested()) {
		t.Fatalf("after /stop: %d Stop calls, StopRequested closed %v", stops.get(), closed(s.StopRequested()))
	}
	expect(t, request(t, c, "POST", base+"/stop", ""), 409, "already stopping\n")
	if stops.get() != 1 {
		t.Fatalf("second /stop called Stop again")
	}
	if st := getStatus(t, c, base, ""); st.State != "running" {
		t.Fatalf("status while stopping %+v", st)
	}

	s.Finished(3)
	s.Finished(7) // ignored
	st = getStatus(t, c, base, "")
	if st.State != "finished" || st.ExitCode == nil || *st.ExitCode != 3 || st.StartedAt == "" {
		t.Fatalf("status after Finished %+v", st)
	}
	expect(t, request(t, c, "POST", base+"/stop", ""), 204, "")
	expect(t, request(t, c, "POST", base+"/start", ""), 409, "already started (command finished)\n")
	if a := request(t, c, "HEAD", base+"/status", ""); a.code != 200 {
		t.Errorf("HEAD /status: %d", a.code)
	}
	if starts.get() != 1 || stops.get() != 1 {
		t.Fatalf("Start called %d times, Stop %d times; want 1, 1", starts.get(), stops.get())
	}
}

func TestStopNotEnabledOnWaitStart(t *testing.T) {
	var starts, stops counter
	_, base := serve(t, ServerOptions{Start: starts.start, Stop: stops.stop})
	c := newClient(t)
	stopMsg := "stop not enabled: this server only waits for /start (use waitStartAndStop to allow /stop)\n"
	expect(t, request(t, c, "POST", base+"/stop", ""), 404, stopMsg)
	expect(t, request(t, c, "POST", base+"/start", ""), 201, "started\n")
	expect(t, request(t, c, "POST", base+"/stop", ""), 404, stopMsg)
	if stops.get() != 0 || starts.get() != 1 {
		t.Fatalf("Start %d, Stop %d calls; want 1, 0", starts.get(), stops.get())
	}
}

func TestFinishedBeforeStart(t *testing.T) {
	var starts counter
	s, base := serve(t, ServerOptions{AllowStop: true, Start: starts.start})
	c := newClient(t)
	s.Finished(130) // e.g. the runner was interrupted while waiting
	expect(t, request(t, c, "POST", base+"/start", ""), 409, "command already finished\n")
	expect(t, request(t, c, "POST", base+"/stop", ""), 204, "")
	if st := getStatus(t, c, base, ""); st.State != "finished" || st.StartedAt != "" || st.ExitCode == nil || *st.ExitCode != 130 {
		t.Fatalf("status %+v", st)
	}
	if starts.get() != 0 {
		t.Fatalf("Start called")
	}
}

func TestToken(t *testing.T) {
	const token = "s3cret-token"
	var starts, stops counter
	_, base := serve(t, ServerOptions{Token: token, AllowStop: true, Start: starts.start, Stop: stops.stop})
	c := newClient(t)

	for _, tc := range []struct {
		name, auth string
	}{
		{"missing", ""},
		{"wrong", "Bearer nope"},
		{"prefix", "Bearer s3cret"},
		{"longer", "Bearer s3cret-token-x"},
		{"basic scheme", "Basic s3cret-token"},
		{"no scheme", token},
	} {
		for _, ep := range []struct{ method, path string }{{"POST", "/start"}, {"POST", "/stop"}, {"GET", "/status"}} {
			req, _ := http.NewRequest(ep.method, base+ep.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || string(b) != "unauthorized: missing or wrong bearer token\n" {
				t.Errorf("%s: %s %s: %d %q, want 401", tc.name, ep.method, ep.path, resp.StatusCode, b)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s: %s %s: no WWW-Authenticate", tc.name, ep.method, ep.path)
			}
		}
	}
	if starts.get() != 0 || stops.get() != 0 {
		t.Fatalf("Start/Stop called on 401: %d, %d", starts.get(), stops.get())
	}
	if st := getStatus(t, c, base, token); st.State != "waiting" {
		t.Fatalf("state %q after 401s", st.State)
	}
	expect(t, request(t, c, "POST", base+"/start", token), 201, "started\n")
	expect(t, request(t, c, "POST", base+"/stop", token), 202, "stopping\n")
	if starts.get() != 1 || stops.get() != 1 {
		t.Fatalf("Start/Stop calls %d, %d; want 1, 1", starts.get(), stops.get())
	}
	// The scheme is case-insensitive (RFC 9110).
	req, _ := http.NewRequest("GET", base+"/status", nil)
	req.Header.Set("Authorization", "bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("lower-case bearer: %d", resp.StatusCode)
	}
}

func TestConcurrentStartExactlyOnce(t *testing.T) {
	var calls atomic.Int32
	var running atomic.Bool
	_, base := serve(t, ServerOptions{Start: func() error {
		calls.Add(1)
		time.Sleep(50 * time.Millisecond) // widen the race window
		running.Store(true)
		return nil
	}})
	c := newClient(t)

	const n = 100
	codes := make(chan int, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-gate
			resp, err := c.Post(base+"/start", "", nil)
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 201 && !running.Load() {
				t.Error("201 sent before Start returned")
			}
			codes <- resp.StatusCode
		})
	}
	close(gate)
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for code := range codes {
		count[code]++
	}
	if count[201] != 1 || count[409] != n-1 || len(count) != 2 {
		t.Fatalf("status counts %v, want one 201 and %d 409", count, n-1)
	}
	if calls.Load() != 1 {
		t.Fatalf("Start called %d times", calls.Load())
	}
}

func TestStartError(t *testing.T) {
	var calls atomic.Int32
	s, base := serve(t, ServerOptions{AllowStop: true, Start: func() error {
		calls.Add(1)
		return errors.New(`exec: "nosuchcmd": executable file not found in $PATH`)
	}})
	c := newClient(t)
	const msg = "start failed: exec: \"nosuchcmd\": executable file not found in $PATH\n"
	expect(t, request(t, c, "POST", base+"/start", ""), 500, msg)
	if closed(s.Started()) {
		t.Fatal("Started closed after a failed Start")
	}
	st := getStatus(t, c, base, "")
	if st.State != "failed" || st.StartedAt != "" || !strings.Contains(st.Error, "nosuchcmd") {
		t.Fatalf("status %+v", st)
	}
	// Later requests: Start is not called again.
	expect(t, request(t, c, "POST", base+"/start", ""), 500, msg)
	expect(t, request(t, c, "POST", base+"/stop", ""), 412, "not started: start failed\n")

	err := Send(context.Background(), base, "start", ClientOptions{Timeout: 2 * time.Second})
	se, ok := errors.AsType[*StatusError](err)
	if !ok || se.StatusCode != 500 || !strings.Contains(err.Error(), `exec: "nosuchcmd": executable file not found`) {
		t.Fatalf("Send: %v", err)
	}
	want := "syncctl: POST " + base + "/start: 500 Internal Server Error: " + strings.TrimSuffix(msg, "\n")
	if err.Error() != want {
		t.Fatalf("Send error\n got %q\nwant %q", err, want)
	}
	if calls.Load() != 1 {
		t.Fatalf("Start called %d times, want 1", calls.Load())
	}
	s.Finished(1)
	if st := getStatus(t, c, base, ""); st.State != "failed" {
		t.Fatalf("state %q after Finished, want failed", st.State)
	}
}

func TestStartPanicIsFailure(t *testing.T) {
	_, base := serve(t, ServerOptions{Start: func() error { panic("boom") }})
	c := newClient(t)
	expect(t, request(t, c, "POST", base+"/start", ""), 500, "start failed: panic in Start: boom\n")
	expect(t, request(t, c, "POST", base+"/start", ""), 500, "start failed: panic in Start: boom\n")
}

func TestListenErrors(t *testing.T) {
	s := NewServer(ServerOptions{Listen: "127.0.0.1:0"})
	if s.Addr() != nil {
		t.Fatalf("Addr before Listen: %v", s.Addr())
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	addr := s.Addr().String()
	if err := s.Listen(); err == nil {
		t.Fatal("second Listen succeeded")
	}

	s2 := NewServer(ServerOptions{Listen: addr})
	err := s2.Listen()
	want := "syncctl: listen on " + addr + ": address already in use"
	if err == nil || err.Error() != want || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Listen on a used port: %v, want %q", err, want)
	}
	// A bare port means all interfaces.
	port := addr[strings.LastIndex(addr, ":")+1:]
	if err := NewServer(ServerOptions{Listen: port}).Listen(); err == nil || err.Error() != "syncctl: listen on :"+port+": address already in use" {
		t.Fatalf("bare port %s: %v", port, err)
	}
	if err := NewServer(ServerOptions{Listen: "127.0.0.1:99999"}).Listen(); err == nil || !strings.HasPrefix(err.Error(), "syncctl: listen on 127.0.0.1:99999: ") {
		t.Fatalf("bad port: %v", err)
	}
}

func TestShutdown(t *testing.T) {
	t.Run("with idle keep-alive connection", func(t *testing.T) {
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0"})
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve() }()
		c := newClient(t)
		request(t, c, "GET", "http://"+s.Addr().String()+"/status", "") // leaves an idle connection

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		t0 := time.Now()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Fatalf("Serve: %v, want nil", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Serve did not return")
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("Shutdown took %v", d)
		}
		if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
			t.Fatal("still accepting after Shutdown")
		}
	})
	t.Run("slow client forced off at ctx deadline", func(t *testing.T) {
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0"})
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve() }()
		c, err := net.DialTimeout("tcp", s.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("POST /start HTTP/1.1\r\nHo")) // an active request, unfinished
		time.Sleep(100 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		err = s.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want DeadlineExceeded", err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("Shutdown took %v", d)
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection not closed: %v", err)
		}
	})
	t.Run("before Serve", func(t *testing.T) {
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0"})
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
			t.Fatal("listener still open after Shutdown")
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Serve after Shutdown: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Serve after Shutdown blocked")
		}
		if err := s.Listen(); err == nil {
			t.Fatal("Listen after Shutdown succeeded")
		}
	})
	t.Run("Serve without Listen", func(t *testing.T) {
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0"})
		done := make(chan error, 1)
		go func() { done <- s.Serve() }()
		deadline := time.Now().Add(2 * time.Second)
		for s.Addr() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if s.Addr() == nil {
			t.Fatal("Serve did not listen")
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Serve: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Serve did not return")
		}
	})
}
