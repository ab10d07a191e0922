package remotewrite

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang/snappy"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/statexec/statexec/internal/metricsfile"
	"github.com/statexec/statexec/internal/store"
)

// decodeRequest reads a remote-write 1.0 body independently of encode:
// snappy block, then WriteRequest field by field.
func decodeRequest(t testing.TB, body []byte) []timeSeries {
	t.Helper()
	raw, err := snappy.Decode(nil, body)
	if err != nil {
		t.Fatalf("snappy: %v", err)
	}
	var out []timeSeries
	fields := func(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64)) {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				t.Fatalf("bad tag")
			}
			b = b[n:]
			switch typ {
			case protowire.BytesType:
				v, n := protowire.ConsumeBytes(b)
				if n < 0 {
					t.Fatal("bad bytes")
				}
				fn(num, typ, v, 0)
				b = b[n:]
			case protowire.Fixed64Type:
				x, n := protowire.ConsumeFixed64(b)
				fn(num, typ, nil, x)
				b = b[n:]
			case protowire.VarintType:
				x, n := protowire.ConsumeVarint(b)
				fn(num, typ, nil, x)
				b = b[n:]
			default:
				t.Fatalf("unexpected wire type %v", typ)
			}
		}
	}
	fields(raw, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
		if num != 1 {
			t.Fatalf("WriteRequest field %d", num)
		}
		var ts timeSeries
		fields(v, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
			switch num {
			case 1:
				var l label
				fields(v, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
					if num == 1 {
						l.name = string(v)
					} else {
						l.value = string(v)
					}
				})
				ts.labels = append(ts.labels, l)
			case 2:
				var s sample
				fields(v, func(num protowire.Number, _ protowire.Type, _ []byte, x uint64) {
					if num == 1 {
						s.value = math.Float64frombits(x)
					} else {
						s.tsMs = int64(x)
					}
				})
				ts.samples = append(ts.samples, s)
			}
		})
		out = append(out, ts)
	})
	return out
}

// receiver is a fake TSDB: it decodes what it gets and can be told to
// fail the next requests.
type receiver struct {
	t        testing.TB
	mu       sync.Mutex
	got      map[string][]sample // by series key
	requests int
	headers  []http.Header
	fail     func(n int) (int, string) // status and body for request n (from 1); 0 = accept
}

func newReceiver(t testing.TB) (*receiver, *httptest.Server) {
	rc := &receiver{t: t, got: map[string][]sample{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.requests++
		rc.headers = append(rc.headers, r.Header.Clone())
		if rc.fail != nil {
			if code, msg := rc.fail(rc.requests); code != 0 {
				http.Error(w, msg, code)
				return
			}
		}
		for _, ts := range decodeRequest(t, body) {
			if !sort.SliceIsSorted(ts.labels, func(i, j int) bool { return ts.labels[i].name < ts.labels[j].name }) {
				t.Errorf("labels not sorted: %v", ts.labels)
			}
			k := key(ts.labels)
			rc.got[k] = append(rc.got[k], ts.samples...)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return rc, srv
}

func key(ls []label) string {
	var name string
	m := map[string]string{}
	for _, l := range ls {
		if l.name == "__name__" {
			name = l.value
		} else {
			m[l.name] = l.value
		}
	}
	return metricsfile.Key(name, m)
}

func ptr[T any](v T) *T { return &v }

// tick is one sampling tick of a small run: gauges with labels, a
// counter, a histogram without +Inf bound.
func tick(i int) []*dto.MetricFamily {
	lp := func(k, v string) *dto.LabelPair { return &dto.LabelPair{Name: ptr(k), Value: ptr(v)} }
	h := &dto.Histogram{SampleCount: ptr(uint64(i)), SampleSum: ptr(float64(i) * 0.25)}
	for j, ub := range []float64{0.001, 1, 10} {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: ptr(ub), CumulativeCount: ptr(uint64(i * j / 2))})
	}
	return []*dto.MetricFamily{
		{Name: ptr("rw_gauge"), Help: ptr("g"), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{lp("job", "statexec"), lp("cpu", "0")}, Gauge: &dto.Gauge{Value: ptr(float64(i) / 7)}},
			{Label: []*dto.LabelPair{lp("job", "statexec"), lp("cpu", "1")}, Gauge: &dto.Gauge{Value: ptr(-float64(i))}},
		}},
		{Name: ptr("rw_events_total"), Help: ptr("c"), Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{lp("job", "statexec")}, Counter: &dto.Counter{Value: ptr(float64(i * 3))}},
		}},
		{Name: ptr("rw_latency_seconds"), Help: ptr("h"), Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{lp("job", "statexec")}, Histogram: h},
		}},
	}
}

// run appends ticks to a fresh spool while a Follower sends them, and
// returns the store (for the file) and what Finish said.
func run(t *testing.T, o Options, ticks int, every time.Duration) (*store.Store, string, error) {
	t.Helper()
	st, err := store.Create(filepath.Join(t.TempDir(), "m.txt.spool"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Remove() })
	var stderr bytes.Buffer
	o.Stderr = &stderr
	if o.Interval == 0 {
		o.Interval = 10 * time.Millisecond
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	f, err := Follow(st.Path(), o)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().UnixMilli()
	for i := range ticks {
		if err := st.Append(base+int64(i)*10, tick(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(every)
	}
	err = f.Finish()
	return st, stderr.String(), err
}

// fileSamples is what the metrics file of st holds, by series key.
func fileSamples(t *testing.T, st *store.Store, format ...store.Format) (map[string][]sample, int) {
	t.Helper()
	var buf bytes.Buffer
	ft := store.OpenMetrics
	if len(format) > 0 {
		ft = format[0]
	}
	if err := st.Export(&buf, ft); err != nil {
		t.Fatal(err)
	}
	f, err := metricsfile.Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]sample{}
	n := 0
	for _, s := range f.Series {
		k := metricsfile.Key(s.Name, s.Labels)
		for _, p := range s.Points {
			out[k] = append(out[k], sample{value: p.Value, tsMs: p.TimestampMs})
			n++
		}
	}
	return out, n
}

// sameSamples compares exactly, every sample of every series.
func sameSamples(t *testing.T, got, want map[string][]sample) {
	t.Helper()
	for k, w := range want {
		g := got[k]
		if len(g) != len(w) {
			t.Errorf("%s: got %d samples, want %d", k, len(g), len(w))
			continue
		}
		for i := range w {
			if g[i] != w[i] {
				t.Errorf("%s sample %d: got %v@%d, want %v@%d", k, i, g[i].value, g[i].tsMs, w[i].value, w[i].tsMs)
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("series %s sent but not in the file", k)
		}
	}
}

func TestFollowSendsEveryFileSampleWithHeaders(t *testing.T) {
	rc, srv := newReceiver(t)
	h := http.Header{}
	h.Set("X-Scope-OrgID", "tenant-7")
	st, stderr, err := run(t, Options{URL: srv.URL + "/api/v1/write", BearerToken: "s3cret", Header: h, OpenMetrics: true}, 130, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("Finish: %v\n%s", err, stderr)
	}
	want, n := fileSamples(t, st)
	// 2 gauges + 1 counter + histogram count, sum, 3 buckets and +Inf.
	if n != 130*9 {
		t.Fatalf("file has %d samples, want %d", n, 130*9)
	}
	sameSamples(t, rc.got, want)
	if !strings.Contains(stderr, fmt.Sprintf("%d samples sent", n)) || !strings.Contains(stderr, ", 0 failed") {
		t.Errorf("final line: %q", stderr)
	}
	if strings.Count(stderr, "\n") != 1 {
		t.Errorf("want only the final line, got %q", stderr)
	}
	for _, hd := range rc.headers {
		for k, v := range map[string]string{"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
			"X-Prometheus-Remote-Write-Version": "0.1.0", "Authorization": "Bearer s3cret", "X-Scope-Orgid": "tenant-7"} {
			if hd.Get(k) != v {
				t.Fatalf("header %s = %q, want %q", k, hd.Get(k), v)
			}
		}
	}
	// Sent during the run, not all at the end: several requests.
	if rc.requests < 2 {
		t.Errorf("%d requests; want batches during the run", rc.requests)
	}
}

func TestBasicAuthFromURL(t *testing.T) {
	rc, srv := newReceiver(t)
	u := strings.Replace(srv.URL, "http://", "http://alice:pa%20ss@", 1)
	_, stderr, err := run(t, Options{URL: u, OpenMetrics: true}, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stderr, "pa%20ss") || strings.Contains(stderr, "alice") {
		t.Errorf("credentials in messages: %q", stderr)
	}
	r, _ := http.NewRequest("GET", "/", nil)
	r.Header = rc.headers[0]
	if user, pass, ok := r.BasicAuth(); !ok || user != "alice" || pass != "pa ss" {
		t.Fatalf("basic auth %q %q %v", user, pass, ok)
	}
}

// 5xx, 429 and a closed connection are retried: nothing lost, one warning.
func TestRetriesServerErrorsWithoutLoss(t *testing.T) {
	rc, srv := newReceiver(t)
	rc.fail = func(n int) (int, string) {
		switch n {
		case 1, 2:
			return http.StatusServiceUnavailable, "storage busy"
		case 3:
			return http.StatusTooManyRequests, "slow down"
		}
		return 0, ""
	}
	st, stderr, err := run(t, Options{URL: srv.URL, OpenMetrics: true}, 150, time.Millisecond)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want, _ := fileSamples(t, st)
	sameSamples(t, rc.got, want)
	if strings.Count(stderr, "retrying") != 1 || !strings.Contains(stderr, "storage busy") {
		t.Errorf("want one warning with the server's message, got %q", stderr)
	}
}

// A 4xx is shown once, with the server's message and the hint about old
// timestamps, and every refused sample is counted failed.
func TestRefusalShownOnceAndCounted(t *testing.T) {
	rc, srv := newReceiver(t)
	rc.fail = func(int) (int, string) { return http.StatusBadRequest, "out of bounds: sample too old" }
	st, stderr, err := run(t, Options{URL: srv.URL, OpenMetrics: true}, 50, 2*time.Millisecond)
	if err == nil {
		t.Fatal("Finish: no error although every sample was refused")
	}
	_, n := fileSamples(t, st)
	if c := strings.Count(stderr, "refused"); c != 1 {
		t.Errorf("refusal shown %d times: %q", c, stderr)
	}
	for _, s := range []string{"HTTP 400 Bad Request: out of bounds: sample too old", "SE_TIME_RELATIVE", fmt.Sprintf("0 samples sent to %s, %d failed", srv.URL, n)} {
		if !strings.Contains(stderr, s) {
			t.Errorf("stderr lacks %q: %q", s, stderr)
		}
	}
}

// An unreachable server: one warning, the final flush bounded by the
// timeout, every sample counted failed.
func TestUnreachableBoundedByTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	st, stderr, err := run(t, Options{URL: "http://" + addr + "/api/v1/write", Timeout: 300 * time.Millisecond, OpenMetrics: true}, 30, 2*time.Millisecond)
	took := time.Since(start)
	if err == nil {
		t.Fatal("no error")
	}
	_, n := fileSamples(t, st)
	if !strings.Contains(stderr, fmt.Sprintf("0 samples sent to http://%s/api/v1/write, %d failed", addr, n)) {
		t.Errorf("final line: %q", stderr)
	}
	if strings.Count(stderr, "\n") != 2 || strings.Count(stderr, "retrying") != 1 {
		t.Errorf("want one warning and the final line: %q", stderr)
	}
	if took > 30*2*time.Millisecond+300*time.Millisecond+maxBackoff+time.Second {
		t.Errorf("took %v: the flush is not bounded by the timeout", took)
	}
}

func TestFormatLeAsTheFile(t *testing.T) {
	for _, c := range []struct {
		f      float64
		om, pr string
	}{{1, "1.0", "1"}, {0, "0.0", "0"}, {1.024e-06, "1.024e-06", "1.024e-06"}, {0.005, "0.005", "0.005"},
		{math.Inf(1), "+Inf", "+Inf"}, {100, "100.0", "100"}, {2.5, "2.5", "2.5"}} {
		if g := formatLe(c.f, true); g != c.om {
			t.Errorf("OpenMetrics %v: %q, want %q", c.f, g, c.om)
		}
		if g := formatLe(c.f, false); g != c.pr {
			t.Errorf("Prometheus %v: %q, want %q", c.f, g, c.pr)
		}
	}
}

// Push sends a file in either format, and a spool, exactly as the file
// (or the file the spool becomes) holds it.
func TestPushFileAndSpool(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Create(filepath.Join(dir, "m.txt.spool"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 700 { // 6300 samples: more than one batch with the spool's
		if err := st.Append(1795628928000+int64(i)*10, tick(i)); err != nil {
			t.Fatal(err)
		}
	}
	om, prom := filepath.Join(dir, "m.txt"), filepath.Join(dir, "m.prom")
	if err := st.WriteFile(om, store.OpenMetrics); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile(prom, store.Prometheus); err != nil {
		t.Fatal(err)
	}
	st.Close()
	for _, c := range []struct{ path, file string }{{om, om}, {prom, prom}, {st.Path(), om}} {
		rc, srv := newReceiver(t)
		var stderr bytes.Buffer
		if err := Push(c.path, Options{URL: srv.URL, Timeout: 5 * time.Second, Stderr: &stderr}); err != nil {
			t.Fatalf("push %s: %v", c.path, err)
		}
		data, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		f, err := metricsfile.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]sample{}
		n := 0
		for _, s := range f.Series {
			for _, p := range s.Points {
				want[metricsfile.Key(s.Name, s.Labels)] = append(want[metricsfile.Key(s.Name, s.Labels)], sample{p.Value, p.TimestampMs})
				n++
			}
		}
		if n != 700*9 {
			t.Fatalf("%s: %d samples", c.file, n)
		}
		sameSamples(t, rc.got, want)
		if !strings.Contains(stderr.String(), fmt.Sprintf("%d samples sent", n)) {
			t.Errorf("push %s: %q", c.path, stderr.String())
		}
	}
}

// With SE_METRICS_FORMAT=prometheus the series sent are the ones of that
// file: le="1" rather than le="1.0".
func TestFollowPrometheusFormat(t *testing.T) {
	rc, srv := newReceiver(t)
	st, stderr, err := run(t, Options{URL: srv.URL}, 20, time.Millisecond)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want, _ := fileSamples(t, st, store.Prometheus)
	sameSamples(t, rc.got, want)
	if _, ok := rc.got[`rw_latency_seconds_bucket{job="statexec",le="1"}`]; !ok {
		t.Errorf("no le=\"1\" bucket among %d series", len(rc.got))
	}
}

// A server that accepts the connection but never answers: the final
// flush still ends after the timeout, the samples counted failed.
func TestHangingServerBoundedByTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	start := time.Now()
	st, stderr, err := run(t, Options{URL: srv.URL, Timeout: 300 * time.Millisecond, OpenMetrics: true}, 20, time.Millisecond)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v with a 300ms timeout", took)
	}
	if err == nil {
		t.Fatal("no error")
	}
	_, n := fileSamples(t, st)
	if !strings.Contains(stderr, fmt.Sprintf("0 samples sent to %s, %d failed", srv.URL, n)) {
		t.Errorf("final line: %q", stderr)
	}
}
