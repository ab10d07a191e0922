package syncctl

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// freeAddr returns a 127.0.0.1 address with nothing listening on it.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// sendAsync runs Send in a goroutine.
func sendAsync(ctx context.Context, base, action string, opts ClientOptions) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- Send(ctx, base, action, opts) }()
	return ch
}

func wait(t *testing.T, ch <-chan error, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(limit):
		t.Fatalf("Send did not return within %v", limit)
		return nil
	}
}

// hangUp listens on addr and closes every connection at once, without an
// answer, as a port forwarder with nothing behind it does: Send retries.
// Each connection is reported on the returned channel, so that a test can
// wait for the client's attempts instead of sleeping.
func hangUp(t *testing.T, addr string) (attempts <-chan struct{}, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	ch := make(chan struct{}, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	stop = func() {
		ln.Close()
		<-done
	}
	t.Cleanup(stop)
	return ch, stop
}

// waitAttempts waits for n connections reported by hangUp.
func waitAttempts(t *testing.T, attempts <-chan struct{}, n int) {
	t.Helper()
	limit := time.After(10 * time.Second)
	for i := range n {
		select {
		case <-attempts:
		case <-limit:
			t.Fatalf("%d of %d attempts within 10s", i, n)
		}
	}
}

func TestSendStatuses(t *testing.T) {
	var starts, stops counter
	s, base := serve(t, ServerOptions{AllowStop: true, Start: starts.start, Stop: stops.stop})
	ctx := context.Background()
	opts := ClientOptions{Timeout: 2 * time.Second}

	err := Send(ctx, base, "stop", opts)
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != 412 ||
		err.Error() != "syncctl: POST "+base+"/stop: 412 Precondition Failed: not started: POST /start first" {
		t.Fatalf("stop before start: %v", err)
	}
	if err := Send(ctx, base+"/", "start", opts); err != nil { // trailing slash
		t.Fatalf("start: %v", err)
	}
	err = Send(ctx, base, "start", opts)
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != 409 || se.Message != "already started" ||
		err.Error() != "syncctl: POST "+base+"/start: 409 Conflict: already started" {
		t.Fatalf("second start: %v", err)
	}
	if err := Send(ctx, base, "stop", opts); err != nil { // 202
		t.Fatalf("stop: %v", err)
	}
	s.Finished(0)
	if err := Send(ctx, base, "stop", opts); err != nil { // 204
		t.Fatalf("stop after finish: %v", err)
	}
	if starts.get() != 1 || stops.get() != 1 {
		t.Fatalf("Start %d, Stop %d calls", starts.get(), stops.get())
	}
}

func TestSendToken(t *testing.T) {
	var starts counter
	_, base := serve(t, ServerOptions{Token: "tok", Start: starts.start})
	ctx := context.Background()
	for _, tok := range []string{"", "bad"} {
		err := Send(ctx, base, "start", ClientOptions{Token: tok, Timeout: time.Second})
		if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != 401 || !strings.Contains(err.Error(), "401 Unauthorized: unauthorized") {
			t.Fatalf("token %q: %v", tok, err)
		}
	}
	if starts.get() != 0 {
		t.Fatal("Start called without the token")
	}
	if err := Send(ctx, base, "start", ClientOptions{Token: "tok", Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if starts.get() != 1 {
		t.Fatal("Start not called with the token")
	}
}

func TestSendServerLate(t *testing.T) {
	addr := freeAddr(t)
	var starts counter
	t0 := time.Now()
	attempts, stopHangingUp := hangUp(t, addr)
	done := sendAsync(context.Background(), "http://"+addr, "start", ClientOptions{Timeout: 10 * time.Second})

	// Three attempts without an answer: Send is retrying with backoff.
	waitAttempts(t, attempts, 3)
	select {
	case err := <-done:
		t.Fatalf("Send returned before the server existed: %v", err)
	default:
	}
	stopHangingUp()
	up := time.Now()
	s := NewServer(ServerOptions{Listen: addr, Start: starts.start})
	if err := s.Listen(); err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())

	if err := wait(t, done, 5*time.Second); err != nil {
		t.Fatalf("Send: %v", err)
	}
	// Backoff is at most 1s, so success comes soon after the server is up.
	if d := time.Since(up); d > 1500*time.Millisecond {
		t.Errorf("Send took %v after the server was up (%v in all)", d, time.Since(t0))
	}
	if starts.get() != 1 || !closed(s.Started()) {
		t.Fatalf("Start calls %d", starts.get())
	}
}

func TestSendNotReachable(t *testing.T) {
	base := "http://" + freeAddr(t)
	t0 := time.Now()
	err := wait(t, sendAsync(context.Background(), base, "start", ClientOptions{Timeout: 500 * time.Millisecond}), 3*time.Second)
	d := time.Since(t0)
	prefix := "syncctl: POST " + base + "/start: server not reachable after 500ms ("
	if err == nil || !strings.HasPrefix(err.Error(), prefix) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("got %v, want %q... wrapping ECONNREFUSED", err, prefix)
	}
	if d < 450*time.Millisecond || d > 1200*time.Millisecond {
		t.Fatalf("gave up after %v, want about 500ms", d)
	}
}

func TestSendCancel(t *testing.T) {
	addr := freeAddr(t)
	base := "http://" + addr
	attempts, _ := hangUp(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := sendAsync(ctx, base, "start", ClientOptions{Timeout: 10 * time.Second})
	waitAttempts(t, attempts, 2) // cancelled while retrying
	t0 := time.Now()
	cancel()
	err := wait(t, done, 2*time.Second)
	if d := time.Since(t0); d > 200*time.Millisecond {
		t.Errorf("Send returned %v after cancel", d)
	}
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "syncctl: POST "+base+"/start: ") {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	// Already cancelled: no attempt at all.
	if err := Send(ctx, base, "stop", ClientOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

func TestSendBadInput(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{
		"", "127.0.0.1:8080", "localhost:8080", "host", "//host:8080", "http://", "http://:8080",
		"ftp://host/", "http://host:99999", "http://host:x", "http://user:pw@host:8080", "http://[::1",
	} {
		t0 := time.Now()
		err := Send(ctx, u, "start", ClientOptions{Timeout: 5 * time.Second})
		if err == nil || !strings.HasPrefix(err.Error(), "syncctl: invalid URL ") || !strings.Contains(err.Error(), "want e.g. http://host:8080") {
			t.Errorf("Send(%q): %v", u, err)
		}
		if time.Since(t0) > 100*time.Millisecond {
			t.Errorf("Send(%q) retried a bad URL", u)
		}
	}
	if err := Send(ctx, "http://127.0.0.1:1", "restart", ClientOptions{}); err == nil || !strings.Contains(err.Error(), `unknown action "restart"`) {
		t.Errorf("bad action: %v", err)
	}
}

func TestActionURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:8080":              "http://h:8080/start",
		"http://h:8080/":             "http://h:8080/start",
		" http://h:8080// ":          "http://h:8080/start",
		"https://h/sync":             "https://h/sync/start",
		"https://h/sync/#x":          "https://h/sync/start",
		"http://[::1]:8080":          "http://[::1]:8080/start",
		"HTTP://H:8080":              "http://H:8080/start",
		"http://h:8080/a%2Fb/?q=1":   "http://h:8080/a%2Fb/start?q=1",
		"http://h.example.com:8080/": "http://h.example.com:8080/start",
	} {
		got, err := actionURL(in, "start")
		if err != nil || got != want {
			t.Errorf("actionURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// A server that answers must not be asked again, whatever it said.
func TestSendNoRetryAfterAnswer(t *testing.T) {
	var hits atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Method != "POST" || r.ContentLength > 0 || r.Header.Get("Authorization") != "" {
			t.Errorf("got %s %s with %d bytes", r.Method, r.URL.Path, r.ContentLength)
		}
		switch r.URL.Path {
		case "/busy/start":
			http.Error(w, "overloaded\nsecond line", http.StatusServiceUnavailable)
		case "/ok/start", "/ok/stop":
			w.WriteHeader(http.StatusOK)
		case "/redirect/start":
			http.Redirect(w, r, "/ok/start", http.StatusFound)
		default:
			t.Errorf("unexpected path %s", r.URL.Path)
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	opts := ClientOptions{Timeout: 2 * time.Second}
	ctx := context.Background()

	err = Send(ctx, base+"/busy", "start", opts)
	if err == nil || err.Error() != "syncctl: POST "+base+"/busy/start: 503 Service Unavailable: overloaded" {
		t.Fatalf("got %v", err)
	}
	if hits.Load() != 1 {
		t.Fatalf("%d requests, want 1", hits.Load())
	}
	// 200 is a success for stop only: our server answers 201 to a start.
	if err := Send(ctx, base+"/ok", "stop", opts); err != nil {
		t.Fatalf("stop 200: %v", err)
	}
	err = Send(ctx, base+"/ok", "start", opts)
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != 200 || err.Error() != "syncctl: POST "+base+"/ok/start: 200 OK" {
		t.Fatalf("start 200: %v", err)
	}
	// Redirects are not followed (a POST would turn into a GET).
	err = Send(ctx, base+"/redirect", "start", opts)
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != 302 {
		t.Fatalf("redirect: %v", err)
	}
	if hits.Load() != 4 {
		t.Fatalf("%d requests, want 4", hits.Load())
	}
}

// A request that was sent but got no answer is not retried.
func TestSendNoAnswerNotRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { // read the request, never answer
				defer c.Close()
				c.SetDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	base := "http://" + ln.Addr().String()
	t0 := time.Now()
	err = Send(context.Background(), base, "start", ClientOptions{Timeout: 5 * time.Second, AttemptTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "request sent but no answer") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// closeFirst accepts and immediately closes the first n connections, like a
// port forwarder with no server behind it yet.
type closeFirst struct {
	net.Listener
	n atomic.Int32
}

func (l *closeFirst) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.n.Add(-1) < 0 {
			return c, err
		}
		c.Close()
	}
}

func TestSendRetriesClosedWithoutAnswer(t *testing.T) {
	var starts counter
	s := NewServer(ServerOptions{Listen: "127.0.0.1:0", Start: starts.start})
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	l := &closeFirst{Listener: s.ln}
	l.n.Store(3)
	s.ln = l
	go s.Serve()
	defer s.Shutdown(context.Background())

	err := Send(context.Background(), "http://"+s.Addr().String(), "start", ClientOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if starts.get() != 1 || l.n.Load() >= 0 {
		t.Fatalf("Start %d calls, %d closes left", starts.get(), l.n.Load())
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err     error
		written bool
		want    bool
	}{
		{syscall.ECONNREFUSED, false, true},
		{&net.DNSError{Err: "no such host", Name: "h", IsNotFound: true}, false, true},
		{context.DeadlineExceeded, false, true},
		{io.EOF, true, true},
		{syscall.ECONNRESET, true, true},
		{errors.New("http: server closed idle connection"), true, true},
		{context.DeadlineExceeded, true, false},
		{errors.New(`malformed HTTP response "SSH-2.0"`), true, false},
		{&tls.CertificateVerificationError{Err: errors.New("x509: unknown authority")}, false, false},
	} {
		if got := retryable(tc.err, tc.written); got != tc.want {
			t.Errorf("retryable(%v, written %v) = %v", tc.err, tc.written, got)
		}
	}
}
