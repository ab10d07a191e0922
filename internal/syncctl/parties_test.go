package syncctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startResult is what one party's SendStartInfo returned.
type startResult struct {
	info StartInfo
	err  error
}

// startParty posts /start in the background.
func startParty(ctx context.Context, base string, opts ClientOptions) <-chan startResult {
	ch := make(chan startResult, 1)
	go func() {
		info, err := SendStartInfo(ctx, base, opts)
		ch <- startResult{info, err}
	}()
	return ch
}

// waitArrived polls s.Status until n parties have arrived (at most 5 s).
func waitArrived(t *testing.T, s *Server, n int) Status {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if st := s.Status(); st.Parties != nil && st.Parties.Arrived == n {
			return st
		}
	}
	t.Fatalf("never %d parties arrived: %+v", n, s.Status().Parties)
	return Status{}
}

// TestPartyBarrier: with 3 parties nobody starts before the third /start;
// then Start is called once with an instant ahead, and every party's
// start instant is the server's (both on this process's clock) within
// 2 ms.
func TestPartyBarrier(t *testing.T) {
	var calls atomic.Int32
	var mu sync.Mutex
	var serverAt, decided time.Time
	s, base := serve(t, ServerOptions{Parties: 3, StartAt: func(at time.Time) error {
		calls.Add(1)
		mu.Lock()
		serverAt, decided = at, time.Now()
		mu.Unlock()
		return nil
	}})
	opts := ClientOptions{Timeout: 5 * time.Second}
	first := []<-chan startResult{startParty(context.Background(), base, opts), startParty(context.Background(), base, opts)}
	st := waitArrived(t, s, 2)
	if st.State != "waiting" || st.Parties.Expected != 3 || st.Parties.Started != 0 || len(st.Parties.List) != 2 || st.Parties.StopPolicy != "first" {
		t.Fatalf("2 of 3 arrived: %+v %+v", st, st.Parties)
	}
	for _, p := range st.Parties.List {
		if !strings.HasPrefix(p.Remote, "127.0.0.1:") || p.ArrivedAt == "" {
			t.Errorf("party %+v", p)
		}
	}
	for _, ch := range first {
		select {
		case r := <-ch:
			t.Fatalf("a party returned before the third arrived: %+v", r)
		default:
		}
	}
	if calls.Load() != 0 || closed(s.Started()) {
		t.Fatal("started with 2 of 3 parties")
	}
	all := append(first, startParty(context.Background(), base, opts))
	for i, ch := range all {
		r := <-ch
		if r.err != nil {
			t.Fatalf("party %d: %v", i, r.err)
		}
		if !r.info.Party || !r.info.StopFirst {
			t.Errorf("party %d: %+v, want an N-party start with policy first", i, r.info)
		}
		mu.Lock()
		d := r.info.At.Sub(serverAt)
		mu.Unlock()
		t.Logf("party %d: start instant %v from the server's", i, d)
		if d.Abs() > 2*time.Millisecond {
			t.Errorf("party %d: start instant %v from the server's, want within 2 ms", i, d)
		}
	}
	if calls.Load() != 1 || !closed(s.Started()) {
		t.Fatalf("Start called %d times", calls.Load())
	}
	if lead := serverAt.Sub(decided); lead < startMargin/2 || lead > startMargin+maxPartyRTT {
		t.Errorf("start instant %v ahead of the decision, want about %v", lead, startMargin)
	}
	st = s.Status()
	if st.State != "running" || st.Parties.Started != 3 || st.StartedAt != serverAt.UTC().Format(time.RFC3339Nano) {
		t.Errorf("after the start: %+v %+v", st, st.Parties)
	}
	// A late party: 409, nothing called again.
	expect(t, request(t, newClient(t), "POST", base+"/start", ""), 409, "already started\n")
	_, err := SendStartInfo(context.Background(), base, opts)
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != 409 {
		t.Errorf("late party: %v, want a 409", err)
	}
	if calls.Load() != 1 {
		t.Errorf("Start called %d times", calls.Load())
	}
}

// TestPartyTimeout: 2 of 3 parties come; PartyTimeout after the first,
// both get 503 with the reason, Abandoned is closed, nothing started.
func TestPartyTimeout(t *testing.T) {
	var calls atomic.Int32
	s, base := serve(t, ServerOptions{Parties: 3, PartyTimeout: 300 * time.Millisecond,
		StartAt: func(time.Time) error { calls.Add(1); return nil }})
	opts := ClientOptions{Timeout: 5 * time.Second}
	began := time.Now()
	chs := []<-chan startResult{startParty(context.Background(), base, opts), startParty(context.Background(), base, opts)}
	const why = "503 Service Unavailable: not starting: only 2 of 3 parties arrived within 300ms (SE_SYNC_TIMEOUT), nothing started"
	for i, ch := range chs {
		r := <-ch
		if r.err == nil || !strings.HasSuffix(r.err.Error(), why) {
			t.Errorf("party %d: %v, want ...%s", i, r.err, why)
		}
	}
	if took := time.Since(began); took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("gave up after %v, want 300 ms", took)
	}
	if !closed(s.Abandoned()) || closed(s.Started()) || calls.Load() != 0 {
		t.Fatalf("abandoned %v, started %v, Start calls %d", closed(s.Abandoned()), closed(s.Started()), calls.Load())
	}
	st := s.Status()
	if st.State != "failed" || !strings.Contains(st.Error, "only 2 of 3 parties arrived") {
		t.Errorf("status %+v", st)
	}
	expect(t, request(t, newClient(t), "POST", base+"/start", ""), 503,
		"not starting: only 2 of 3 parties arrived within 300ms (SE_SYNC_TIMEOUT), nothing started\n")
}

// TestPartyLongPollOutlastsAttemptTimeout: a party waits for the others
// longer than its AttemptTimeout: the 102 extends it.
func TestPartyLongPollOutlastsAttemptTimeout(t *testing.T) {
	s, base := serve(t, ServerOptions{Parties: 2})
	opts := ClientOptions{Timeout: 5 * time.Second, AttemptTimeout: 200 * time.Millisecond}
	first := startParty(context.Background(), base, opts)
	waitArrived(t, s, 1)
	time.Sleep(600 * time.Millisecond) // the scenario: the second comes 3 attempt timeouts later
	second := startParty(context.Background(), base, opts)
	for _, ch := range []<-chan startResult{first, second} {
		if r := <-ch; r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// TestPartyClientBoundedWithoutServerTimeout: a server whose own barrier
// timeout is longer than the client's SE_SYNC_TIMEOUT: the client gives up
// at Timeout + AttemptTimeout, saying it waited for the other parties, and
// no longer counts as arrived.
func TestPartyClientBoundedWithoutServerTimeout(t *testing.T) {
	s, base := serve(t, ServerOptions{Parties: 2, PartyTimeout: time.Minute})
	began := time.Now()
	_, err := SendStartInfo(context.Background(), base, ClientOptions{Timeout: 300 * time.Millisecond, AttemptTimeout: 200 * time.Millisecond})
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), "while waiting for the other parties (1/2 had arrived)") {
		t.Fatalf("got %v", err)
	}
	if took < 500*time.Millisecond || took > 3*time.Second {
		t.Errorf("gave up after %v, want 500 ms", took)
	}
	waitArrived(t, s, 0)
}

// TestPartyLeaverNotCounted: a party that gives up before the start no
// longer counts: two more are needed.
func TestPartyLeaverNotCounted(t *testing.T) {
	var calls atomic.Int32
	s, base := serve(t, ServerOptions{Parties: 2, StartAt: func(time.Time) error { calls.Add(1); return nil }})
	opts := ClientOptions{Timeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	leaver := startParty(ctx, base, opts)
	waitArrived(t, s, 1)
	cancel()
	if r := <-leaver; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("leaver: %v", r.err)
	}
	waitArrived(t, s, 0)
	a := startParty(context.Background(), base, opts)
	waitArrived(t, s, 1)
	if calls.Load() != 0 {
		t.Fatal("started with one party after one left")
	}
	b := startParty(context.Background(), base, opts)
	for _, ch := range []<-chan startResult{a, b} {
		if r := <-ch; r.err != nil {
			t.Fatal(r.err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("Start called %d times", calls.Load())
	}
}

// startAll makes n parties start and waits for them.
func startAll(t *testing.T, base string, n int) {
	t.Helper()
	var chs []<-chan startResult
	for range n {
		chs = append(chs, startParty(context.Background(), base, ClientOptions{Timeout: 5 * time.Second}))
	}
	for _, ch := range chs {
		if r := <-ch; r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// TestPartyStopFirst: the first /stop stops; the others are answered 202
// (no failure for them) and 204 once finished.
func TestPartyStopFirst(t *testing.T) {
	var stops counter
	s, base := serve(t, ServerOptions{Parties: 3, AllowStop: true, Stop: stops.stop})
	startAll(t, base, 3)
	c := newClient(t)
	expect(t, request(t, c, "POST", base+"/stop", ""), 202, "stopping\n")
	if stops.get() != 1 || !closed(s.StopRequested()) {
		t.Fatal("first /stop did not stop")
	}
	expect(t, request(t, c, "POST", base+"/stop", ""), 202, "already stopping\n")
	s.Finished(0)
	a := request(t, c, "POST", base+"/stop", "")
	if a.code != 204 {
		t.Fatalf("/stop after the end: %d %q", a.code, a.body)
	}
	if st := s.Status(); st.Parties.Stopped != 3 || stops.get() != 1 {
		t.Errorf("stopped %d, Stop calls %d", st.Parties.Stopped, stops.get())
	}
}

// TestPartyStopLast: only the last party's /stop stops; a /stop beyond
// the parties is a conflict.
func TestPartyStopLast(t *testing.T) {
	var stops counter
	s, base := serve(t, ServerOptions{Parties: 3, AllowStop: true, StopLast: true, Stop: stops.stop})
	startAll(t, base, 3)
	if st := s.Status(); st.Parties.StopPolicy != "last" {
		t.Errorf("stop_policy %q", st.Parties.StopPolicy)
	}
	c := newClient(t)
	for i := 1; i < 3; i++ {
		expect(t, request(t, c, "POST", base+"/stop", ""), 202, fmt.Sprintf("stop noted: %d of 3 parties have stopped (policy last)\n", i))
		if stops.get() != 0 || closed(s.StopRequested()) {
			t.Fatalf("stopped after %d of 3", i)
		}
	}
	expect(t, request(t, c, "POST", base+"/stop", ""), 202, "stopping\n")
	if stops.get() != 1 || !closed(s.StopRequested()) {
		t.Fatal("the last /stop did not stop")
	}
	expect(t, request(t, c, "POST", base+"/stop", ""), 409, "already stopping\n")
}

// TestPartyRefuse: a signal on the server (Refuse) answers the waiting
// parties 503 at once.
func TestPartyRefuse(t *testing.T) {
	s, base := serve(t, ServerOptions{Parties: 2})
	ch := startParty(context.Background(), base, ClientOptions{Timeout: 5 * time.Second})
	waitArrived(t, s, 1)
	if s.Refuse() {
		t.Fatal("Refuse says started")
	}
	r := <-ch
	if r.err == nil || !strings.HasSuffix(r.err.Error(), "503 Service Unavailable: not starting: the run is ending") {
		t.Fatalf("got %v", r.err)
	}
}

// TestPartyStatusJSON: "parties" is in GET /status of an N-party server
// only.
func TestPartyStatusJSON(t *testing.T) {
	for _, n := range []int{1, 2} {
		_, base := serve(t, ServerOptions{Parties: n})
		a := request(t, newClient(t), "GET", base+"/status", "")
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(a.body), &raw); err != nil {
			t.Fatal(err)
		}
		p, ok := raw["parties"]
		if ok != (n > 1) {
			t.Fatalf("parties=%d: %s", n, a.body)
		}
		if n > 1 && string(p) != `{"expected":2,"arrived":0,"started":0,"stopped":0,"stop_policy":"first","list":[]}` {
			t.Errorf("parties: %s", p)
		}
	}
}

// TestPartyRTTMeasured: the server takes each party's round trip from its
// kernel (TCP_INFO): a real value, not 0, on loopback.
func TestPartyRTTMeasured(t *testing.T) {
	s, base := serve(t, ServerOptions{Parties: 2})
	startParty(context.Background(), base, ClientOptions{Timeout: 5 * time.Second})
	st := waitArrived(t, s, 1)
	if rtt := st.Parties.List[0].RTTNs; rtt <= 0 || rtt > int64(time.Second) {
		t.Errorf("rtt_ns %d", rtt)
	}
}
