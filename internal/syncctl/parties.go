package syncctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// N-party sync (ServerOptions.Parties > 1): the server starts its command
// only once Parties clients have posted /start. Each /start waits (a long
// poll: a 102 Processing with PartiesHeader at once, then the final
// answer) until the last party has arrived; then every party gets a 201
// with StartInHeader, the time left until a common start instant a little
// ahead, and every side (the server too) starts its command at that
// instant. The start instant is the sync instant of all of them.

// Headers of the N-party protocol.
const (
	// PartiesHeader is on the 102 answered to a party that has to wait:
	// "arrived/expected", e.g. "2/4".
	PartiesHeader = "Statexec-Sync-Parties"
	// StartInHeader is on the 201 of an N-party start: the nanoseconds
	// from the moment the answer was written to the common start
	// instant (may be negative if the answer was late).
	StartInHeader = "Statexec-Sync-Start-In-Ns"
	// RTTHeader is on the 201 of an N-party start: the round trip of the
	// connection in nanoseconds as the server's kernel measured it
	// (TCP_INFO), 0 if unknown. Half of it is the answer's way.
	RTTHeader = "Statexec-Sync-Rtt-Ns"
	// StopPolicyHeader is on the 201 of an N-party start: "first" or
	// "last" (ServerOptions.StopLast). With "first" the server may have
	// ended when a party posts its /stop.
	StopPolicyHeader = "Statexec-Sync-Stop"
)

// startMargin is added to the largest round trip of the parties to set the
// start instant ahead of the decision: time to write N answers, and for
// every party to read its answer and fork and exec its command (held until
// the instant). With 10 ms, some parties of the tests came after the
// instant on a loaded 2-vCPU machine (fork and exec alone took up to
// 20 ms there); a start 50 ms later costs nothing.
const startMargin = 50 * time.Millisecond

// maxPartyRTT caps a round trip taken into the start lead: a kernel
// estimate far off (a congested handshake) must not delay the start.
const maxPartyRTT = time.Second

// party is one client that posted /start.
type party struct {
	remote    string
	arrivedAt time.Time
	rtt       time.Duration // the server kernel's estimate for the connection, 0 if unknown
}

// partyState is the barrier; guarded by Server.mu.
type partyState struct {
	arrived []*party
	started int // parties answered 201
	stopped int // /stop posts counted
	timer   *time.Timer
	// done is closed once the barrier is decided: started (err nil) or
	// not (err says why).
	done    chan struct{}
	decided bool
	err     error
	// abandoned is closed when not all parties came in time.
	abandoned chan struct{}
}

// PartyStatus is the "parties" object of GET /status (N-party servers only).
type PartyStatus struct {
	Expected   int         `json:"expected"`
	Arrived    int         `json:"arrived"`
	Started    int         `json:"started"`
	Stopped    int         `json:"stopped"`
	StopPolicy string      `json:"stop_policy"` // "first" or "last"
	List       []PartyInfo `json:"list"`
}

// PartyInfo is one party that arrived (and has not left).
type PartyInfo struct {
	Remote    string `json:"remote"`     // address:port of its connection
	ArrivedAt string `json:"arrived_at"` // RFC 3339, nanoseconds, UTC
	RTTNs     int64  `json:"rtt_ns"`     // round trip measured by the server's kernel, 0 if unknown
}

// errPartyTimeout is the cause of an abandoned barrier.
type errPartyTimeout struct {
	arrived, expected int
	after             time.Duration
}

func (e *errPartyTimeout) Error() string {
	return fmt.Sprintf("only %d of %d parties arrived within %s (SE_SYNC_TIMEOUT), nothing started", e.arrived, e.expected, e.after)
}

var errShuttingDown = errors.New("the server is shutting down")

func (s *Server) multiParty() bool { return s.opts.Parties > 1 }

func (s *Server) stopPolicy() string {
	if s.opts.StopLast {
		return "last"
	}
	return "first"
}

// Abandoned is closed when an N-party barrier gave up because not all
// parties arrived within PartyTimeout: nothing was started; Status().Error
// says why. It is never closed on a one-party server.
func (s *Server) Abandoned() <-chan struct{} { return s.party.abandoned }

// partyStatusLocked is the "parties" object of Status.
func (s *Server) partyStatusLocked() *PartyStatus {
	if !s.multiParty() {
		return nil
	}
	ps := &PartyStatus{
		Expected:   s.opts.Parties,
		Arrived:    len(s.party.arrived),
		Started:    s.party.started,
		Stopped:    s.party.stopped,
		StopPolicy: s.stopPolicy(),
		List:       []PartyInfo{},
	}
	for _, p := range s.party.arrived {
		ps.List = append(ps.List, PartyInfo{
			Remote:    p.remote,
			ArrivedAt: p.arrivedAt.UTC().Format(time.RFC3339Nano),
			RTTNs:     int64(p.rtt),
		})
	}
	return ps
}

// decideLocked closes the barrier; only the first call counts.
func (s *Server) decideLocked(err error) {
	if s.party.decided {
		return
	}
	s.party.decided = true
	s.party.err = err
	if s.party.timer != nil {
		s.party.timer.Stop()
	}
	close(s.party.done)
}

// refusePartyLocked says why a /start cannot join the barrier (code 0: it can).
func (s *Server) refusePartyLocked() (int, string) {
	switch {
	case s.party.decided && s.party.err != nil:
		return partyErrorReply(s.party.err)
	case !s.startedAt.IsZero() || s.st == stateRunning:
		if s.st == stateFinished {
			return http.StatusConflict, "already started (command finished)"
		}
		return http.StatusConflict, "already started"
	case s.st == stateFinished:
		return http.StatusConflict, "command already finished"
	case s.st == stateFailed && s.startErr != nil:
		return http.StatusInternalServerError, "start failed: " + oneLine(s.startErr.Error())
	case s.refusing:
		return http.StatusServiceUnavailable, "not starting: " + ErrEnding.Error()
	case len(s.party.arrived) >= s.opts.Parties:
		return http.StatusConflict, "already started: all " + strconv.Itoa(s.opts.Parties) + " parties have arrived"
	}
	return 0, ""
}

func partyErrorReply(err error) (int, string) {
	var pt *errPartyTimeout
	switch {
	case errors.Is(err, ErrEnding), errors.Is(err, errShuttingDown), errors.As(err, &pt):
		return http.StatusServiceUnavailable, "not starting: " + oneLine(err.Error())
	}
	return http.StatusInternalServerError, "start failed: " + oneLine(err.Error())
}

func (s *Server) handlePartyStart(w http.ResponseWriter, r *http.Request) {
	p := &party{remote: r.RemoteAddr, arrivedAt: time.Now(), rtt: min(connRTT(r.Context()), maxPartyRTT)}
	s.mu.Lock()
	if code, msg := s.refusePartyLocked(); code != 0 {
		s.mu.Unlock()
		reply(w, code, msg)
		return
	}
	s.party.arrived = append(s.party.arrived, p)
	n := len(s.party.arrived)
	if s.party.timer == nil {
		s.party.timer = time.AfterFunc(s.opts.PartyTimeout, s.partyTimeout)
	}
	done := s.party.done
	s.mu.Unlock()

	if n < s.opts.Parties || !s.decideStart() {
		// The answer may take up to PartyTimeout: let the write deadline
		// cover the wait, and tell the client to wait (it extends its
		// own bound on seeing this; no 1xx to HTTP/1.0 clients).
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.opts.PartyTimeout + writeTimeout))
		if r.ProtoAtLeast(1, 1) {
			w.Header().Set(PartiesHeader, strconv.Itoa(n)+"/"+strconv.Itoa(s.opts.Parties))
			w.WriteHeader(http.StatusProcessing)
			w.Header().Del(PartiesHeader)
		}
	}
	select {
	case <-done:
	case <-r.Context().Done():
		s.mu.Lock()
		if !s.party.decided { // gone before the start: it no longer counts
			for i, q := range s.party.arrived {
				if q == p {
					s.party.arrived = append(s.party.arrived[:i], s.party.arrived[i+1:]...)
					break
				}
			}
		}
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	err, at := s.party.err, s.startedAt
	if err == nil {
		s.party.started++
	}
	s.mu.Unlock()
	if err != nil {
		code, msg := partyErrorReply(err)
		reply(w, code, msg)
		return
	}
	w.Header().Set(RTTHeader, strconv.FormatInt(int64(p.rtt), 10))
	w.Header().Set(StopPolicyHeader, s.stopPolicy())
	w.Header().Set(StartInHeader, strconv.FormatInt(int64(time.Until(at)), 10))
	reply(w, http.StatusCreated, "started")
}

// decideStart is run by the party that completed the barrier: it sets the
// start instant, calls the Start callback and releases all parties. It
// reports false if the barrier is not complete after all (a party left
// meanwhile): the caller waits like the others.
func (s *Server) decideStart() bool {
	s.startSem <- struct{}{}
	defer func() { <-s.startSem }()
	s.mu.Lock()
	if s.party.decided {
		s.mu.Unlock()
		return true
	}
	if len(s.party.arrived) < s.opts.Parties {
		s.mu.Unlock()
		return false
	}
	if s.refusing {
		s.decideLocked(ErrEnding)
		s.mu.Unlock()
		return true
	}
	// Ahead by the slowest party's round trip (its answer must get there
	// before the instant) plus a margin for writing the answers.
	var lead time.Duration
	for _, q := range s.party.arrived {
		lead = max(lead, q.rtt)
	}
	s.mu.Unlock()

	at := time.Now().Add(lead + startMargin)
	err := s.callStart(at)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case errors.Is(err, ErrEnding):
		s.refusing = true
	case err != nil:
		s.st, s.startErr = stateFailed, err
	default:
		s.startedAt = at
		if s.st == stateWaiting {
			s.st = stateRunning
		}
		close(s.started)
	}
	s.decideLocked(err)
	return true
}

// partyTimeout abandons a barrier still incomplete PartyTimeout after the
// first arrival.
func (s *Server) partyTimeout() {
	s.startSem <- struct{}{}
	defer func() { <-s.startSem }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.party.decided {
		return
	}
	err := &errPartyTimeout{arrived: len(s.party.arrived), expected: s.opts.Parties, after: s.opts.PartyTimeout}
	s.st, s.startErr = stateFailed, err
	s.decideLocked(err)
	close(s.party.abandoned)
}

// connKey is the context key of the request's connection.
type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}
