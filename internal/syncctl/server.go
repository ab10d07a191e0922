package syncctl

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server defaults and limits.
const (
	DefaultListen            = ":8080"
	DefaultReadHeaderTimeout = 5 * time.Second

	readTimeout    = 10 * time.Second
	writeTimeout   = 30 * time.Second
	idleTimeout    = 60 * time.Second
	maxHeaderBytes = 8 << 10 // net/http adds 4 KiB of slack
	maxBodyBytes   = 1 << 10
)

// SyncDelayHeader is the header of a 201 that says how long, in
// nanoseconds, the server took from accepting /start (its sync instant)
// to answering. The client subtracts it from the round trip to place the
// sync instant on its own clock (see SendStart).
const SyncDelayHeader = "Statexec-Sync-Delay-Ns"

// ErrEnding is what a Start callback returns to refuse a /start because
// the run is ending (a signal came first): the client gets 503.
var ErrEnding = errors.New("the run is ending")

// ServerOptions configure the server.
type ServerOptions struct {
	Listen    string // address:port, default ":8080" (all interfaces); a bare port "9000" means ":9000"
	Token     string // if set, requests need "Authorization: Bearer <Token>"
	AllowStop bool   // waitStartAndStop: POST /stop is honoured
	Command   string // shown by GET /status
	// Start is called at most once successfully, on the first authorised
	// POST /start, from that request's handler goroutine, while holding the
	// start lock: concurrent /start requests wait for it and then get 409.
	// The 201 is sent only after Start has returned nil, so Start should
	// return once the command has really started (and not wait for it to
	// end). An error (or a panic) -> 500 with the message, the state becomes
	// "failed" and Start is never called again. nil Start counts as success.
	Start func() error
	// Stop is called once, on the first authorised POST /stop while running,
	// from that request's handler goroutine and without any lock held; the
	// 202 is sent after it returns, so it should only send the signal and
	// not wait for the command to end. nil Stop is allowed (watch
	// StopRequested instead).
	Stop func()

	// N-party sync (parties.go). Parties is how many clients must post
	// /start before anything starts (SE_SYNC_PARTIES); 0 or 1: the
	// first /start starts the command, as in the table above.
	Parties int
	// StopLast (SE_SYNC_STOP=last): with Parties > 1, Stop is called when
	// every party that started has posted /stop, not at the first.
	StopLast bool
	// PartyTimeout bounds the wait for all parties, from the first
	// arrival (SE_SYNC_TIMEOUT); default DefaultTimeout.
	PartyTimeout time.Duration
	// StartAt, if set, is called instead of Start with the sync instant:
	// the moment /start was accepted, or with Parties > 1 the common
	// start instant a few milliseconds ahead, at which the caller starts
	// its command (the 201s are sent after StartAt returned, before that
	// instant).
	StartAt func(at time.Time) error

	// ReadHeaderTimeout bounds the time to read request headers (slow
	// clients); default 5s.
	ReadHeaderTimeout time.Duration
	// ErrorLog receives net/http's connection errors; default: discarded.
	ErrorLog *log.Logger
}

type state int

const (
	stateWaiting state = iota
	stateRunning
	stateFinished
	stateFailed
)

func (st state) String() string {
	switch st {
	case stateWaiting:
		return "waiting"
	case stateRunning:
		return "running"
	case stateFinished:
		return "finished"
	case stateFailed:
		return "failed"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}

// Status is what GET /status returns as JSON.
type Status struct {
	State   string `json:"state"` // "waiting", "running", "finished" or "failed"
	Command string `json:"command"`
	// StartedAt is the sync instant, the moment the server accepted
	// /start: the origin of the run's time axis. RFC 3339 (nanoseconds,
	// UTC), "" before start.
	StartedAt string `json:"started_at"`
	ExitCode  *int   `json:"exit_code"` // null until Finished
	Error     string `json:"error,omitempty"`
	// Parties is there on an N-party server only.
	Parties *PartyStatus `json:"parties,omitempty"`
}

// Server is the waiting side. Create it with NewServer.
type Server struct {
	opts      ServerOptions
	tokenHash [sha256.Size]byte
	srv       *http.Server

	startSem chan struct{} // capacity 1: serialises POST /start (and the Start call)
	started  chan struct{} // closed once Start succeeded
	stopReq  chan struct{} // closed once Stop was called

	mu        sync.Mutex // guards the fields below; never held during callbacks
	ln        net.Listener
	closed    bool // Shutdown called
	st        state
	startErr  error
	startedAt time.Time
	exitCode  *int
	stopping  bool
	refusing  bool // Refuse called: /start gets 503
	party     partyState
}

// NewServer returns a server that is not listening yet.
func NewServer(opts ServerOptions) *Server {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	} else if _, err := strconv.ParseUint(opts.Listen, 10, 16); err == nil {
		opts.Listen = ":" + opts.Listen // a bare port: all interfaces
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	errLog := opts.ErrorLog
	if errLog == nil {
		errLog = log.New(io.Discard, "", 0)
	}
	s := &Server{
		opts:     opts,
		startSem: make(chan struct{}, 1),
		started:  make(chan struct{}),
		stopReq:  make(chan struct{}),
		party:    partyState{done: make(chan struct{}), abandoned: make(chan struct{})},
	}
	if s.opts.PartyTimeout <= 0 {
		s.opts.PartyTimeout = DefaultTimeout
	}
	if opts.Token != "" {
		s.tokenHash = sha256.Sum256([]byte(opts.Token))
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       max(readTimeout, opts.ReadHeaderTimeout),
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errLog,
		ConnContext:       withConn,
	}
	return s
}

// Listen binds the address; errors (port in use) are returned at once, e.g.
// "syncctl: listen on :8080: address already in use" (errors.Is works with
// syscall.EADDRINUSE).
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("syncctl: listen: server is shut down")
	}
	if s.ln != nil {
		return fmt.Errorf("syncctl: listen on %s: already listening on %s", s.opts.Listen, s.ln.Addr())
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("syncctl: listen on %s: %w", s.opts.Listen, listenCause(err))
	}
	s.ln = ln
	return nil
}

// listenCause strips the "listen tcp :8080: bind:" wrapping of net errors.
func listenCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
		var se *os.SyscallError
		if errors.As(err, &se) && se.Err != nil {
			err = se.Err
		}
	}
	return err
}

// Addr is the bound address (after Listen), or nil.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve serves until Shutdown; run it in a goroutine. It calls Listen first
// if that has not been done. It returns nil after Shutdown (unlike
// net/http, which returns http.ErrServerClosed), or the error that stopped
// it.
func (s *Server) Serve() error {
	s.mu.Lock()
	ln, closed := s.ln, s.closed
	s.mu.Unlock()
	if closed {
		return nil
	}
	if ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
		s.mu.Lock()
		ln = s.ln
		s.mu.Unlock()
	}
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("syncctl: serve: %w", err)
}

// Started is closed once Start succeeded (before the 201 is sent).
func (s *Server) Started() <-chan struct{} { return s.started }

// StopRequested is closed once an accepted POST /stop called Stop (after
// Stop returned, before the 202 is sent).
func (s *Server) StopRequested() <-chan struct{} { return s.stopReq }

// Finished tells the server that the command has ended (later /start -> 409,
// /stop -> 204; /status state "finished" with exit_code). Only the first
// call counts. After a failed Start the state stays "failed".
func (s *Server) Finished(exitCode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exitCode != nil {
		return
	}
	s.exitCode = &exitCode
	if s.st != stateFailed {
		s.st = stateFinished
	}
}

// Refuse makes every later /start fail with 503 (the run is ending) and
// reports whether a /start succeeded before. It waits for a /start in
// progress, so that after it returns either the start happened or it
// never will.
func (s *Server) Refuse() (started bool) {
	s.startSem <- struct{}{}
	defer func() { <-s.startSem }()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refusing = true
	if s.multiParty() && s.startedAt.IsZero() {
		s.decideLocked(ErrEnding) // the waiting parties get 503
	}
	return !s.startedAt.IsZero()
}

// Status returns what GET /status reports.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{State: s.st.String(), Command: s.opts.Command}
	if !s.startedAt.IsZero() {
		st.StartedAt = s.startedAt.UTC().Format(time.RFC3339Nano)
	}
	if s.exitCode != nil {
		code := *s.exitCode
		st.ExitCode = &code
	}
	if s.startErr != nil {
		st.Error = oneLine(s.startErr.Error())
	}
	st.Parties = s.partyStatusLocked()
	return st
}

// Shutdown stops serving: it closes the listener, lets in-flight requests
// finish until ctx is done, then closes the remaining connections and
// returns ctx's error. It may be called before or without Serve.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	if s.multiParty() {
		s.decideLocked(errShuttingDown) // answer the waiting parties now
	}
	s.mu.Unlock()
	err := s.srv.Shutdown(ctx)
	if ln != nil {
		ln.Close() // in case Serve never ran; a second Close is harmless
	}
	if err != nil {
		s.srv.Close()
		return fmt.Errorf("syncctl: shutdown: %w", err)
	}
	return nil
}

// ServeHTTP implements the protocol described in the package documentation.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")

	var allow string
	switch r.URL.Path {
	case "/start":
		allow = "POST"
	case "/stop":
		if !s.opts.AllowStop {
			reply(w, http.StatusNotFound, "stop not enabled: this server only waits for /start (use waitStartAndStop to allow /stop)")
			return
		}
		allow = "POST"
	case "/status":
		allow = "GET, HEAD"
	default:
		reply(w, http.StatusNotFound, "not found: use POST /start, POST /stop or GET /status")
		return
	}
	if !methodAllowed(allow, r.Method) {
		h.Set("Allow", allow)
		reply(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use "+allow)
		return
	}
	if !s.drainBody(w, r) {
		return
	}
	if !s.authorized(r) {
		h.Set("WWW-Authenticate", `Bearer realm="statexec"`)
		reply(w, http.StatusUnauthorized, "unauthorized: missing or wrong bearer token")
		return
	}
	switch r.URL.Path {
	case "/start":
		s.handleStart(w, r)
	case "/stop":
		s.handleStop(w)
	case "/status":
		s.handleStatus(w)
	}
}

func methodAllowed(allow, method string) bool {
	for m := range strings.SplitSeq(allow, ", ") {
		if m == method {
			return true
		}
	}
	return false
}

// drainBody reads and discards at most maxBodyBytes of the body; it answers
// 413 (or 400) and returns false for a larger (or unreadable) body.
func (s *Server) drainBody(w http.ResponseWriter, r *http.Request) bool {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	defer body.Close()
	if _, err := io.Copy(io.Discard, body); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			reply(w, http.StatusRequestEntityTooLarge, "request body too large: send an empty body")
		} else {
			w.Header().Set("Connection", "close")
			reply(w, http.StatusBadRequest, "cannot read request body")
		}
		return false
	}
	return true
}

func (s *Server) authorized(r *http.Request) bool {
	if s.opts.Token == "" {
		return true
	}
	const prefix = "bearer "
	auth := r.Header.Get("Authorization")
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return false
	}
	// Compare hashes so that the comparison does not leak the length.
	got := sha256.Sum256([]byte(strings.TrimLeft(auth[len(prefix):], " ")))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	if s.multiParty() {
		s.handlePartyStart(w, r)
		return
	}
	select {
	case s.startSem <- struct{}{}:
	case <-r.Context().Done():
		return // client gone (or server closing) while another /start ran
	}
	defer func() { <-s.startSem }()

	s.mu.Lock()
	st, startErr, everStarted, refusing := s.st, s.startErr, !s.startedAt.IsZero(), s.refusing
	s.mu.Unlock()
	if refusing && st == stateWaiting {
		reply(w, http.StatusServiceUnavailable, "not starting: "+ErrEnding.Error())
		return
	}
	switch st {
	case stateRunning:
		reply(w, http.StatusConflict, "already started")
		return
	case stateFinished:
		if everStarted {
			reply(w, http.StatusConflict, "already started (command finished)")
		} else {
			reply(w, http.StatusConflict, "command already finished")
		}
		return
	case stateFailed:
		reply(w, http.StatusInternalServerError, "start failed: "+oneLine(startErr.Error()))
		return
	}

	at := time.Now()
	if err := s.callStart(at); errors.Is(err, ErrEnding) {
		s.mu.Lock()
		s.refusing = true
		s.mu.Unlock()
		reply(w, http.StatusServiceUnavailable, "not starting: "+ErrEnding.Error())
		return
	} else if err != nil {
		s.mu.Lock()
		s.st, s.startErr = stateFailed, err
		s.mu.Unlock()
		reply(w, http.StatusInternalServerError, "start failed: "+oneLine(err.Error()))
		return
	}
	s.mu.Lock()
	s.startedAt = at
	if s.st == stateWaiting { // Finished may already have been called
		s.st = stateRunning
	}
	s.mu.Unlock()
	close(s.started)
	w.Header().Set(SyncDelayHeader, strconv.FormatInt(int64(time.Since(at)), 10))
	reply(w, http.StatusCreated, "started")
}

func (s *Server) callStart(at time.Time) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in Start: %v", p)
		}
	}()
	if s.opts.StartAt != nil {
		return s.opts.StartAt(at)
	}
	if s.opts.Start == nil {
		return nil
	}
	return s.opts.Start()
}

func (s *Server) handleStop(w http.ResponseWriter) {
	s.mu.Lock()
	switch s.st {
	case stateWaiting:
		s.mu.Unlock()
		reply(w, http.StatusPreconditionFailed, "not started: POST /start first")
		return
	case stateFailed:
		s.mu.Unlock()
		reply(w, http.StatusPreconditionFailed, "not started: start failed")
		return
	case stateFinished:
		if s.multiParty() {
			s.party.stopped++
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent) // nothing left to stop
		return
	}
	if s.multiParty() {
		// Every party posts /stop when its command ends: after the first
		// (policy first) or before the last (policy last) that is no
		// error, only noted.
		s.party.stopped++
		stopped, started := s.party.stopped, s.party.started
		if s.stopping && stopped <= started {
			s.mu.Unlock()
			reply(w, http.StatusAccepted, "already stopping")
			return
		}
		if !s.stopping && s.opts.StopLast && stopped < started {
			s.mu.Unlock()
			reply(w, http.StatusAccepted, fmt.Sprintf("stop noted: %d of %d parties have stopped (policy last)", stopped, started))
			return
		}
	}
	if s.stopping {
		s.mu.Unlock()
		reply(w, http.StatusConflict, "already stopping")
		return
	}
	s.stopping = true
	s.mu.Unlock()

	if s.opts.Stop != nil {
		s.opts.Stop()
	}
	close(s.stopReq)
	reply(w, http.StatusAccepted, "stopping")
}

func (s *Server) handleStatus(w http.ResponseWriter) {
	b, err := json.Marshal(s.Status())
	if err != nil { // cannot happen with these field types
		reply(w, http.StatusInternalServerError, "cannot encode status")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}

// reply writes a one-line plain text response.
func reply(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// oneLine flattens s to a single line of printable text.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return -1
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}
