package syncctl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

// Client defaults.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultAttemptTimeout = 5 * time.Second

	minBackoff   = 100 * time.Millisecond
	maxBackoff   = time.Second
	maxReplyBody = 1 << 10
	maxReplyMsg  = 200 // runes of the server's answer kept in errors
)

// ClientOptions configure Send.
type ClientOptions struct {
	Token string
	// Timeout bounds the retries while the server is not reachable yet
	// (SE_SYNC_TIMEOUT, default 30s).
	Timeout time.Duration
	// AttemptTimeout bounds one attempt (connect, send, read the answer);
	// default 5s. Connecting is also bounded by Timeout.
	AttemptTimeout time.Duration
}

// StatusError is returned by Send when the server answered with a status
// that is not a success for the action.
type StatusError struct {
	URL        string // the full URL posted to
	StatusCode int    // e.g. 409
	Status     string // e.g. "409 Conflict"
	Message    string // first line of the server's answer, may be ""
}

func (e *StatusError) Error() string {
	msg := "syncctl: POST " + e.URL + ": " + e.Status
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Send posts an empty body to baseURL+"/"+action (action is "start" or
// "stop"; baseURL is like "http://host:8080", a trailing slash is fine),
// with "Authorization: Bearer <Token>" if opts.Token is set.
//
// It returns nil for 201 (start) and 200/201/202/204 (stop). Any other
// answer gives a *StatusError such as
// "syncctl: POST http://h:8080/start: 409 Conflict: already started";
// answers are never retried.
//
// Connection errors (refused, reset before an answer, connect timeouts, DNS
// not resolvable yet) are retried with a backoff growing from 100ms to 1s
// until opts.Timeout (default 30s), then Send gives up with
// "syncctl: POST <url>: server not reachable after 30s (N attempts): <last error>".
// A request that was sent but got no answer within opts.AttemptTimeout is not
// retried (the server may have acted on it). Cancelling ctx stops Send
// promptly with an error wrapping ctx.Err().
//
// Send connects directly: it ignores HTTP_PROXY, HTTPS_PROXY and
// NO_PROXY, so that the bearer token never goes to a proxy.
func Send(ctx context.Context, baseURL, action string, opts ClientOptions) error {
	_, err := send(ctx, baseURL, action, opts)
	return err
}

// SendStart is Send(ctx, baseURL, "start", opts) that also returns the
// sync instant on this machine's monotonic clock: the moment the server
// accepted /start. It is estimated as the moment the request was sent
// plus the one-way delay, which is half of the round trip less the time
// the server took to answer (SyncDelayHeader); without that header, the
// middle of the round trip.
//
// An N-party server (see parties.go) answers 102 Processing first: the
// other parties have not all arrived. SendStart then waits for the final
// answer until opts.Timeout after it began plus opts.AttemptTimeout (so
// that the server's own timeout, which says how many parties came,
// answers first). Its 201 carries StartInHeader, and the returned instant
// is the common start instant: the moment the answer was written (its
// arrival less half the round trip in RTTHeader) plus that header; it
// may lie in the future.
func SendStart(ctx context.Context, baseURL string, opts ClientOptions) (time.Time, error) {
	info, err := send(ctx, baseURL, "start", opts)
	return info.At, err
}

// StartInfo is what a successful /start said.
type StartInfo struct {
	At time.Time // the sync instant, as SendStart returns it
	// Party: the server is an N-party one (the 201 had StartInHeader).
	Party bool
	// StopFirst: an N-party server that stops at the first /stop
	// (StopPolicyHeader "first"): it may be gone when this party posts
	// its own /stop.
	StopFirst bool
}

// SendStartInfo is SendStart that also says what kind of server answered.
func SendStartInfo(ctx context.Context, baseURL string, opts ClientOptions) (StartInfo, error) {
	return send(ctx, baseURL, "start", opts)
}

func send(ctx context.Context, baseURL, action string, opts ClientOptions) (StartInfo, error) {
	if action != "start" && action != "stop" {
		return StartInfo{}, fmt.Errorf("syncctl: unknown action %q: want start or stop", action)
	}
	target, err := actionURL(baseURL, action)
	if err != nil {
		return StartInfo{}, err
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	attemptTimeout := opts.AttemptTimeout
	if attemptTimeout <= 0 {
		attemptTimeout = DefaultAttemptTimeout
	}
	deadline := time.Now().Add(timeout)

	dialer := &net.Dialer{Timeout: attemptTimeout}
	tr := &http.Transport{
		Proxy: nil, // never a proxy: it would see the bearer token
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			return dialer.DialContext(ctx, network, addr)
		},
		TLSHandshakeTimeout:   attemptTimeout,
		ResponseHeaderTimeout: attemptTimeout,
		DisableKeepAlives:     true, // one request per connection: nothing left behind
	}
	if action == "start" {
		// post bounds the wait for the answer itself: an N-party server
		// makes it a long poll.
		tr.ResponseHeaderTimeout = 0
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		// Do not follow redirects: a POST would become a GET.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	backoff := minBackoff
	var lastErr error
	for attempt := 1; ; attempt++ {
		done, written, synced, err := post(ctx, client, target, action, opts.Token, attemptTimeout, deadline.Add(attemptTimeout))
		if done {
			return synced, err
		}
		if ctx.Err() != nil {
			return StartInfo{}, fmt.Errorf("syncctl: POST %s: %w", target, context.Cause(ctx))
		}
		if !retryable(err, written) {
			if written {
				return StartInfo{}, fmt.Errorf("syncctl: POST %s: request sent but no answer (the server may have acted on it): %w", target, err)
			}
			return StartInfo{}, fmt.Errorf("syncctl: POST %s: %w", target, err)
		}
		// An attempt cut short by our own deadline says less than the
		// previous error (usually "connection refused").
		if lastErr == nil || time.Now().Before(deadline) {
			lastErr = err
		}
		giveUp := func() error {
			return fmt.Errorf("syncctl: POST %s: server not reachable after %s (%d attempts): %w", target, timeout, attempt, lastErr)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return StartInfo{}, giveUp()
		}
		t := time.NewTimer(min(backoff, remaining))
		select {
		case <-ctx.Done():
			t.Stop()
			return StartInfo{}, fmt.Errorf("syncctl: POST %s: %w", target, context.Cause(ctx))
		case <-t.C:
		}
		if !time.Now().Before(deadline) {
			return StartInfo{}, giveUp()
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// post makes one attempt. done reports that Send must return err (nil on
// success): the server answered, or the request could not even be built.
// Otherwise err is a transport error and written tells whether the request
// had been sent in full. On success, synced is the estimated sync instant.
//
// A 102 Processing with PartiesHeader (an N-party server: the other
// parties are not all there yet) extends the attempt's bound to longPoll.
func post(ctx context.Context, client *http.Client, target, action, token string, timeout time.Duration, longPoll time.Time) (done, written bool, synced StartInfo, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wrote atomic.Bool
	var mu sync.Mutex // the trace hooks run on the transport's goroutines
	noAnswer := &noAnswerError{fmt.Sprintf("no answer within %s", timeout)}
	bound := time.AfterFunc(timeout, func() {
		mu.Lock()
		err := *noAnswer
		mu.Unlock()
		cancel(&err)
	})
	defer bound.Stop()
	var sentAt, answeredAt time.Time
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
			if code != http.StatusProcessing || header.Get(PartiesHeader) == "" {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			waiting := header.Get(PartiesHeader)
			if d := time.Until(longPoll); d > timeout {
				noAnswer.msg = fmt.Sprintf("no start within %s while waiting for the other parties (%s had arrived)",
					(time.Since(sentAt) + d).Round(time.Second), waiting)
				bound.Reset(d)
			}
			return nil
		},
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				now := time.Now()
				mu.Lock()
				sentAt = now
				mu.Unlock()
				wrote.Store(true)
			}
		},
		GotFirstResponseByte: func() {
			now := time.Now()
			mu.Lock()
			answeredAt = now
			mu.Unlock()
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, http.NoBody)
	if err != nil {
		return true, false, StartInfo{}, fmt.Errorf("syncctl: POST %s: %w", target, err)
	}
	req.Header.Set("User-Agent", "statexec-syncctl")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	// The final answer's headers are in: after a 102, GotFirstResponseByte
	// was the interim answer's.
	headersAt := time.Now()
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // drop the `Post "http://...":` prefix; we add our own
		}
		if cause, ok := errors.AsType[*noAnswerError](context.Cause(ctx)); ok {
			err = cause
		}
		return false, wrote.Load(), StartInfo{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxReplyBody))
	if success(action, resp.StatusCode) {
		mu.Lock()
		defer mu.Unlock()
		if in := resp.Header.Get(StartInHeader); in != "" && action == "start" {
			return true, true, StartInfo{
				At:        startInstant(headersAt, resp.Header.Get(RTTHeader), in),
				Party:     true,
				StopFirst: resp.Header.Get(StopPolicyHeader) == "first",
			}, nil
		}
		return true, true, StartInfo{At: syncInstant(sentAt, answeredAt, resp.Header.Get(SyncDelayHeader))}, nil
	}
	status := resp.Status
	if status == "" {
		status = strconv.Itoa(resp.StatusCode)
	}
	return true, true, StartInfo{}, &StatusError{
		URL:        target,
		StatusCode: resp.StatusCode,
		Status:     status,
		Message:    replyMessage(body),
	}
}

// syncInstant estimates when the server accepted the request, on our
// clock: sent + (round trip - server's delay) / 2, assuming the way there
// takes as long as the way back.
func syncInstant(sent, answered time.Time, delayHeader string) time.Time {
	if sent.IsZero() || answered.Before(sent) {
		return time.Now()
	}
	rtt := answered.Sub(sent)
	delay, err := strconv.ParseInt(delayHeader, 10, 64)
	if err != nil || delay < 0 || time.Duration(delay) > rtt {
		delay = 0
	}
	return sent.Add((rtt - time.Duration(delay)) / 2)
}

// noAnswerError is the cause of an attempt cut off by its own bound.
type noAnswerError struct{ msg string }

func (e *noAnswerError) Error() string { return e.msg }

// startInstant places the common start instant of an N-party start on our
// clock: the answer was written one way (half the round trip the server's
// kernel measured for this connection, RTTHeader) before it arrived, and
// the instant was startIn after that.
func startInstant(answered time.Time, rttHeader, startIn string) time.Time {
	in, err := strconv.ParseInt(startIn, 10, 64)
	if err != nil || time.Duration(in) > time.Minute || time.Duration(in) < -time.Minute {
		in = 0 // nonsense: start now
	}
	rtt, err := strconv.ParseInt(rttHeader, 10, 64)
	if err != nil || rtt < 0 || time.Duration(rtt) > maxPartyRTT {
		rtt = 0
	}
	return answered.Add(time.Duration(in - rtt/2))
}

func success(action string, code int) bool {
	switch code {
	case http.StatusCreated:
		return true
	case http.StatusOK, http.StatusAccepted, http.StatusNoContent:
		return action == "stop"
	}
	return false
}

// retryable reports whether a transport error means "no server there yet".
func retryable(err error, written bool) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return false
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return false
	}
	if !written {
		return true // refused, DNS, connect timeout, reset while sending...
	}
	// Sent, then the connection was closed without an answer: a port
	// forwarder (docker-proxy, ssh -L) with nothing behind it yet. A
	// timeout waiting for the answer is not retried.
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		err.Error() == errServerClosedIdle
}

// errServerClosedIdle is the text of net/http's unexported error for a
// connection closed by the peer before any byte of an answer.
const errServerClosedIdle = "http: server closed idle connection"

// actionURL checks baseURL and appends "/"+action to its path.
func actionURL(baseURL, action string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("syncctl: invalid URL %q: %s (want e.g. http://host:8080)", baseURL, why)
	}
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return "", bad(err.Error())
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		if u.Scheme == "" {
			return "", bad("no scheme")
		}
		return "", bad("scheme must be http or https")
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", bad("no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", bad("bad port")
		}
	}
	if u.User != nil {
		return "", bad("user info is not supported (use SE_SYNC_TOKEN)")
	}
	raw := strings.TrimRight(u.EscapedPath(), "/") + "/" + action
	if u.Path, err = url.PathUnescape(raw); err != nil {
		return "", bad(err.Error())
	}
	u.RawPath = raw
	u.Fragment, u.RawFragment = "", ""
	return u.String(), nil
}

// replyMessage is the first line of a server answer, made safe for an error
// message.
func replyMessage(body []byte) string {
	if !utf8.Valid(body) {
		body = []byte(strings.ToValidUTF8(string(body), "?"))
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	line = oneLine(line)
	if utf8.RuneCountInString(line) > maxReplyMsg {
		line = string([]rune(line)[:maxReplyMsg]) + "..."
	}
	return line
}
