package syncctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// rawExchange sends raw bytes over TCP and returns the status line of the
// answer.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading answer to %q: %v", raw, err)
	}
	return strings.TrimSpace(line)
}

func TestMalformedRequests(t *testing.T) {
	var starts counter
	s, base := serve(t, ServerOptions{AllowStop: true, Start: starts.start})
	addr := s.Addr().String()
	for _, tc := range []struct{ raw, want string }{
		{"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"\x00\x01\x02\xff /start HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /start HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /start HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"}, // HTTP/1.1 needs Host
		{"POST /start HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /start HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /start HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /start HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
		{"POST http://evil/%zz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"BREW /start HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
		{"POST /start HTTP/3.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"},
	} {
		if got := rawExchange(t, addr, tc.raw); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%.40q: got %q, want %q", tc.raw, got, tc.want)
		}
	}
	if starts.get() != 0 {
		t.Fatalf("a malformed request started the command")
	}
	// Still serving.
	expect(t, request(t, newClient(t), "POST", base+"/start", ""), 201, "started\n")
}

func TestHugeBody(t *testing.T) {
	var starts counter
	s, base := serve(t, ServerOptions{Start: starts.start})
	addr := s.Addr().String()
	const size = 10 << 20

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	wrote := make(chan int64, 1)
	go func() { // stream the body from one small buffer until the server hangs up
		var n int64
		if _, err := fmt.Fprintf(c, "POST /start HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size); err == nil {
			buf := make([]byte, 32<<10)
			for n < size {
				m, err := c.Write(buf)
				n += int64(m)
				if err != nil {
					break
				}
			}
		}
		wrote <- n
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "request body too large: send an empty body\n" || !resp.Close {
		t.Fatalf("got %d %q (close %v), want 413 and Connection: close", resp.StatusCode, b, resp.Close)
	}
	c.Close()
	<-wrote

	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.TotalAlloc - before.TotalAlloc); grew > 4<<20 {
		t.Errorf("allocated %d bytes while receiving a %d-byte body", grew, size)
	}
	if starts.get() != 0 {
		t.Fatal("Start called for an oversized request")
	}

	// A small body is ignored and the request honoured.
	resp, err = http.Post(base+"/start", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || string(b) != "started\n" || starts.get() != 1 {
		t.Fatalf("small body: %d %q, %d Start calls", resp.StatusCode, b, starts.get())
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}

func TestSlowHeadersCutOff(t *testing.T) {
	var starts counter
	s, _ := serve(t, ServerOptions{Start: starts.start, ReadHeaderTimeout: 300 * time.Millisecond})
	c, err := net.DialTimeout("tcp", s.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	go func() { // one byte every 50ms, for at most 5s
		defer close(writerDone)
		msg := "POST /start HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Slow: y\r\n", 20)
		for i := 0; i < len(msg) && time.Since(t0) < 5*time.Second; i++ {
			select {
			case <-stopWriting:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := c.Write([]byte{msg[i]}); err != nil {
				return
			}
		}
	}()
	defer func() { close(stopWriting); <-writerDone }()

	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	d := time.Since(t0)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", d)
	}
	if strings.Contains(string(b), "201") || starts.get() != 0 {
		t.Fatalf("slow request started the command: %q", b)
	}
	if d < 250*time.Millisecond || d > 2*time.Second {
		t.Fatalf("connection closed after %v, want about 300ms", d)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	func() {
		var starts, stops counter
		s := NewServer(ServerOptions{Listen: "127.0.0.1:0", AllowStop: true, Start: starts.start, Stop: stops.stop})
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve() }()
		base := "http://" + s.Addr().String()

		keep := &http.Transport{}
		noKeep := &http.Transport{DisableKeepAlives: true}
		defer keep.CloseIdleConnections()
		clients := []*http.Client{{Transport: keep, Timeout: 5 * time.Second}, {Transport: noKeep, Timeout: 5 * time.Second}}
		paths := []struct{ method, path string }{{"GET", "/status"}, {"POST", "/start"}, {"POST", "/stop"}, {"GET", "/nope"}, {"PUT", "/start"}}
		deadline := time.Now().Add(30 * time.Second)
		for i := range 1000 {
			if time.Now().After(deadline) {
				t.Fatalf("only %d requests in 30s", i)
			}
			p := paths[i%len(paths)]
			req, _ := http.NewRequest(p.method, base+p.path, strings.NewReader("x"))
			resp, err := clients[i%2].Do(req)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		s.Finished(0)
		for range 5 { // 204 after Finished
			if err := Send(context.Background(), base, "stop", ClientOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if starts.get() != 1 || stops.get() != 1 {
			t.Fatalf("Start %d, Stop %d calls", starts.get(), stops.get())
		}
		keep.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	}()

	var n int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n = runtime.NumGoroutine(); n <= baseline+2 {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Fatalf("%d goroutines, baseline %d:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
}
