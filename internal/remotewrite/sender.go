package remotewrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Options configure where and how samples are sent.
type Options struct {
	URL         string // http(s)://[user:password@]host:port/api/v1/write
	BearerToken string
	Header      http.Header // extra headers (tenants: X-Scope-OrgID)
	// Timeout bounds the final flush of a run (and each batch of a push)
	// when the server does not take the samples.
	Timeout time.Duration
	// Interval is how often a Follower reads the spool.
	Interval time.Duration
	// OpenMetrics: the run's file is OpenMetrics (counters end in _total,
	// bounds like 1.0), not the Prometheus text format.
	OpenMetrics bool
	// Hold: the run's time axis moves at the sync instant (the wait*
	// and sync* modes), so a Follower sends nothing before Release.
	Hold   bool
	Stderr io.Writer
}

// maxBatch is the most values sent in one request (about 1 MiB of
// protobuf with statexec's labels, before compression).
const maxBatch = 10000

// Backoff between retries: doubling from minBackoff up to maxBackoff.
// The maximum stays short so that a database back after a restart gets
// the backlog within seconds.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
	// requestTimeout bounds one HTTP request.
	requestTimeout = 15 * time.Second
)

// batch gathers samples by series until it is sent.
type batch struct {
	series  []*timeSeries
	byID    map[int]*timeSeries
	samples int
}

func newBatch() *batch { return &batch{byID: map[int]*timeSeries{}} }

// add appends a sample to the series id (labels are those of id).
func (b *batch) add(id int, labels []label, tsMs int64, v float64) {
	ts := b.byID[id]
	if ts == nil {
		ts = &timeSeries{labels: labels}
		b.byID[id] = ts
		b.series = append(b.series, ts)
	}
	ts.samples = append(ts.samples, sample{value: v, tsMs: tsMs})
	b.samples++
}

func (b *batch) reset() {
	b.series = b.series[:0]
	clear(b.byID)
	b.samples = 0
}

// sender posts batches and counts what happened to their samples.
type sender struct {
	o        Options
	url      string // without userinfo, for messages
	client   *http.Client
	sent     int
	failed   int
	warned   bool // a warning about an unreachable or failing server was shown
	refused  bool // a 4xx was shown
	lastErr  error
	buf      []byte // protobuf scratch
	out      []byte // compressed body scratch
	username string
	password string
	hasAuth  bool
}

func newSender(o Options) (*sender, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("remote write: invalid URL %q: want http(s)://host:port/path", o.URL)
	}
	s := &sender{o: o, client: &http.Client{Timeout: requestTimeout}}
	if u.User != nil {
		s.username = u.User.Username()
		s.password, _ = u.User.Password()
		s.hasAuth = true
		u.User = nil
	}
	s.url = u.String()
	return s, nil
}

func (s *sender) warnf(format string, a ...any) {
	fmt.Fprintf(s.o.Stderr, "statexec: remote write: "+format+"\n", a...)
}

// refusedError is a 4xx answer: resending the same samples cannot help.
type refusedError struct {
	status int
	msg    string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

// send posts b until the server takes it, refuses it (its samples are
// counted failed, the first refusal shown with the server's message) or
// ctx ends (an error; b is kept for the caller to count).
func (s *sender) send(ctx context.Context, b *batch) error {
	if b.samples == 0 {
		return nil
	}
	var body []byte
	body, s.buf = encode(b.series, s.buf, s.out)
	s.out = body
	backoff := minBackoff
	for {
		err := s.post(ctx, body)
		if err == nil {
			s.sent += b.samples
			b.reset()
			return nil
		}
		var re *refusedError
		if errors.As(err, &re) {
			if !s.refused {
				s.refused = true
				s.warnf("%s refused %d samples: %v%s; further refusals are only counted", s.url, b.samples, err, hint(re.msg))
			}
			s.lastErr = err
			s.failed += b.samples
			b.reset()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.lastErr = err
		if !s.warned {
			s.warned = true
			s.warnf("%v; retrying, the samples are kept until sent", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// hint explains the refusals whose cause is the samples' age.
func hint(msg string) string {
	m := strings.ToLower(msg)
	if strings.Contains(m, "out of bounds") || strings.Contains(m, "too old") || strings.Contains(m, "retention") {
		return " (the samples' timestamps are outside what the database accepts: an old SE_TIME_RELATIVE does this; choose a recent origin)"
	}
	return ""
}

// post sends one request; a *refusedError means 4xx (but 429).
func (s *sender) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range s.o.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	req.Header.Set("User-Agent", "statexec")
	if s.o.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+s.o.BearerToken)
	} else if s.hasAuth {
		req.SetBasicAuth(s.username, s.password)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", s.url, unwrapURL(err))
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	text := strings.Join(strings.Fields(string(msg)), " ")
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5:
		return fmt.Errorf("%s answered HTTP %d %s: %s", s.url, resp.StatusCode, http.StatusText(resp.StatusCode), text)
	default:
		return &refusedError{status: resp.StatusCode, msg: text}
	}
}

// unwrapURL drops the *url.Error wrapping, which repeats method and URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// summary is the final line: samples sent / failed.
func (s *sender) summary() error {
	line := fmt.Sprintf("%d samples sent to %s, %d failed", s.sent, s.url, s.failed)
	if s.failed > 0 && s.lastErr != nil {
		line += fmt.Sprintf(" (last error: %v)", s.lastErr)
	}
	s.warnf("%s", line)
	if s.failed > 0 {
		return fmt.Errorf("remote write: %d samples not sent", s.failed)
	}
	return nil
}
