package syncctl

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// dropDelayHeader hides the server's SyncDelayHeader, as an older server
// would.
type dropDelayHeader struct{ http.ResponseWriter }

func (w dropDelayHeader) WriteHeader(code int) {
	w.Header().Del(SyncDelayHeader)
	w.ResponseWriter.WriteHeader(code)
}

// syncErrors runs n starts against a server whose Start takes startTook
// (as starting a command does) and returns |client's sync instant -
// server's| of each, sorted. Both sides share this process's monotonic
// clock, so the error is measured exactly.
func syncErrors(t *testing.T, n int, startTook time.Duration, withHeader bool) []time.Duration {
	var errs []time.Duration
	for range n {
		var serverAt time.Time
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0", Start: func() error {
			serverAt = time.Now()
			time.Sleep(startTook)
			return nil
		}})
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		var h http.Handler = s
		if !withHeader {
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.ServeHTTP(dropDelayHeader{w}, r) })
		}
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		hs := &http.Server{Handler: h}
		go hs.Serve(ln)
		clientAt, err := SendStart(context.Background(), "http://"+ln.Addr().String(), ClientOptions{Timeout: 5 * time.Second})
		hs.Close()
		s.Shutdown(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		errs = append(errs, clientAt.Sub(serverAt).Abs())
	}
	slices.Sort(errs)
	return errs
}

// TestSendStartSyncInstant: the client's sync instant is the server's
// within 3 ms (median of 9) although the server takes 20 ms to answer;
// the middle of the round trip would be 10 ms off.
func TestSendStartSyncInstant(t *testing.T) {
	const took = 20 * time.Millisecond
	with := syncErrors(t, 9, took, true)
	without := syncErrors(t, 9, took, false)
	t.Logf("|client - server| sync instant, server answering after %v: with the delay header %v, middle of the round trip %v", took, with, without)
	if med := with[len(with)/2]; med > 3*time.Millisecond {
		t.Fatalf("median sync error %v with the delay header, want <= 3ms", med)
	}
}

// TestRefuseAfterSignal: once Refuse was called, /start gets 503 and
// Start is never called; Refuse reports whether a start came first.
func TestRefuseAfterSignal(t *testing.T) {
	var starts counter
	s, base := serve(t, ServerOptions{Start: starts.start})
	if s.Refuse() {
		t.Fatal("Refuse says started before any /start")
	}
	err := Send(context.Background(), base, "start", ClientOptions{Timeout: 2 * time.Second})
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("start after Refuse: %v", err)
	}
	if starts.get() != 0 || closed(s.Started()) {
		t.Fatalf("Start called %d times after Refuse", starts.get())
	}
	// Start won the race: Refuse says so, and the state is unchanged.
	var starts2 counter
	s2, base2 := serve(t, ServerOptions{Start: starts2.start})
	if err := Send(context.Background(), base2, "start", ClientOptions{Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if !s2.Refuse() || starts2.get() != 1 || s2.Status().State != "running" {
		t.Fatalf("after a start: Refuse false or state %q", s2.Status().State)
	}
	// A Start callback that returns ErrEnding gets 503, not "failed".
	s3, base3 := serve(t, ServerOptions{Start: func() error { return ErrEnding }})
	err = Send(context.Background(), base3, "start", ClientOptions{Timeout: 2 * time.Second})
	if se, ok := errors.AsType[*StatusError](err); !ok || se.StatusCode != http.StatusServiceUnavailable || s3.Status().State != "waiting" {
		t.Fatalf("ErrEnding: %v, state %q", err, s3.Status().State)
	}
}

// TestSendIgnoresProxyEnvironment: with HTTP_PROXY pointing at a listener
// of the test, Send connects directly and the listener gets nothing. It
// runs in a child process because net/http reads the proxy variables once
// per process.
func TestSendIgnoresProxyEnvironment(t *testing.T) {
	if os.Getenv("SYNCCTL_PROXY_CHILD") == "1" {
		// A name that is not loopback (net/http never proxies those) and
		// cannot resolve: only a proxy could answer.
		err := Send(context.Background(), "http://statexec-sync.invalid:8080", "start", ClientOptions{Timeout: time.Second, AttemptTimeout: time.Second})
		if err == nil {
			t.Fatal("start succeeded: it went through the proxy")
		}
		t.Logf("direct connection failed as expected: %v", err)
		return
	}
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	var hits atomic.Int32
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			// Answer as a proxy that forwarded a successful /start.
			c.SetDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 4096)
			c.Read(buf)
			c.Write([]byte("HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nstarted\n"))
			c.Close()
		}
	}()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSendIgnoresProxyEnvironment$", "-test.v")
	cmd.Env = append(os.Environ(), "SYNCCTL_PROXY_CHILD=1",
		"HTTP_PROXY=http://"+proxy.Addr().String(), "http_proxy=http://"+proxy.Addr().String(), "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "direct connection failed") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the proxy got %d connections", n)
	}
}
