package store

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/statexec/statexec/internal/config"
	"github.com/statexec/statexec/internal/testenv"
)

func lp(k, v string) *dto.LabelPair { return &dto.LabelPair{Name: ptr(k), Value: ptr(v)} }

func counterFam(name string, v float64, labels ...*dto.LabelPair) *dto.MetricFamily {
	return &dto.MetricFamily{Name: ptr(name), Help: ptr("help of " + name), Type: dto.MetricType_COUNTER.Enum(),
		Metric: []*dto.Metric{{Label: labels, Counter: &dto.Counter{Value: ptr(v)}}}}
}

func gaugeFam(name string, vals map[string]float64) *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: ptr(name), Help: ptr("help of " + name), Type: dto.MetricType_GAUGE.Enum()}
	for _, k := range []string{"a", "b", "c"} {
		if v, ok := vals[k]; ok {
			mf.Metric = append(mf.Metric, &dto.Metric{Label: []*dto.LabelPair{lp("k", k)}, Gauge: &dto.Gauge{Value: ptr(v)}})
		}
	}
	return mf
}

func histFam(count uint64, sum float64, cum ...uint64) *dto.MetricFamily {
	h := &dto.Histogram{SampleCount: ptr(count), SampleSum: ptr(sum)}
	for i, c := range cum {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: ptr(math.Pow(10, float64(i-3))), CumulativeCount: ptr(c)})
	}
	return &dto.MetricFamily{Name: ptr("lat_seconds"), Help: ptr("latency"), Type: dto.MetricType_HISTOGRAM.Enum(),
		Metric: []*dto.Metric{{Histogram: h}}}
}

func newTestStore(t testing.TB) *Store {
	t.Helper()
	s, err := Create(filepath.Join(t.TempDir(), "m.txt.spool"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// decode parses an exported file with expfmt's own parser and returns the
// families by name.
func decode(t testing.TB, b []byte, format expfmt.Format) map[string]*dto.MetricFamily {
	t.Helper()
	dec := expfmt.NewDecoder(bytes.NewReader(b), format)
	out := map[string]*dto.MetricFamily{}
	for {
		mf := &dto.MetricFamily{}
		err := dec.Decode(mf)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decode: %v\n%s", err, b)
		}
		if _, dup := out[mf.GetName()]; dup {
			t.Fatalf("family %s appears twice (interleaved)", mf.GetName())
		}
		out[mf.GetName()] = mf
	}
}

func TestRoundTripOpenMetrics(t *testing.T) {
	s := newTestStore(t)
	base := int64(1704067200000)
	for i := range 3 {
		vals := map[string]float64{"a": float64(i), "b": 10 + float64(i)}
		if i == 2 {
			vals["c"] = 99 // a series that appears late
		}
		err := s.Append(base+int64(i)*1001, []*dto.MetricFamily{
			counterFam("bytes_total", float64(100*i), lp("if", "lo")),
			gaugeFam("temp", vals),
			histFam(uint64(i*3), float64(i)*0.5, 0, uint64(i), uint64(i*2), uint64(i*3)),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if s.Points() != 3+7+3 {
		t.Fatalf("points = %d, want 13", s.Points())
	}
	var buf bytes.Buffer
	if err := s.Export(&buf, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	if !strings.HasSuffix(text, "# EOF\n") {
		t.Fatalf("no # EOF at the end:\n%s", text)
	}
	if n := strings.Count(text, "# TYPE temp gauge"); n != 1 {
		t.Fatalf("TYPE of temp written %d times", n)
	}
	if !strings.Contains(text, `bytes_total{if="lo"} 200.0 1704067202.002`) {
		t.Fatalf("missing exact counter line:\n%s", text)
	}
	fams := decode(t, buf.Bytes(), expfmt.NewFormat(expfmt.TypeOpenMetrics))
	temp := fams["temp"]
	if temp == nil || len(temp.Metric) != 7 {
		t.Fatalf("temp: %v", temp)
	}
	// series contiguous and in time order: a, a, a, b, b, b, c
	want := []struct {
		k  string
		v  float64
		ts int64
	}{{"a", 0, base}, {"a", 1, base + 1001}, {"a", 2, base + 2002}, {"b", 10, base}, {"b", 11, base + 1001}, {"b", 12, base + 2002}, {"c", 99, base + 2002}}
	for i, w := range want {
		m := temp.Metric[i]
		if m.Label[0].GetValue() != w.k || m.GetGauge().GetValue() != w.v || m.GetTimestampMs() != w.ts {
			t.Errorf("temp[%d] = %s %v @%d, want %s %v @%d", i, m.Label[0].GetValue(), m.GetGauge().GetValue(), m.GetTimestampMs(), w.k, w.v, w.ts)
		}
	}
	// expfmt's parser merges a histogram's points, so check the lines.
	for _, line := range []string{
		`lat_seconds_bucket{le="0.01"} 2 1704067202.002`,
		`lat_seconds_bucket{le="+Inf"} 6 1704067202.002`,
		`lat_seconds_sum 1.0 1704067202.002`,
		`lat_seconds_count 6 1704067202.002`,
		`lat_seconds_count 3 1704067201.001`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("missing histogram line %q", line)
		}
	}
}

func TestPrometheusFormatMilliseconds(t *testing.T) {
	s := newTestStore(t)
	s.Append(1704067200123, []*dto.MetricFamily{counterFam("c_total", 1)})
	s.Append(1704067201123, []*dto.MetricFamily{counterFam("c_total", 2)})
	var buf bytes.Buffer
	if err := s.Export(&buf, Prometheus); err != nil {
		t.Fatal(err)
	}
	want := "# HELP c_total help of c_total\n# TYPE c_total counter\nc_total 1 1704067200123\nc_total 2 1704067201123\n"
	if buf.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestTimestampsOnlyIncrease(t *testing.T) {
	s := newTestStore(t)
	for _, ts := range []int64{1000, 2000, 2000, 1500, 3000} {
		s.Append(ts, []*dto.MetricFamily{counterFam("c_total", float64(ts))})
	}
	var buf bytes.Buffer
	s.Export(&buf, Prometheus)
	got := strings.Count(buf.String(), "\nc_total ")
	if got != 3 || !strings.Contains(buf.String(), "c_total 3000 3000") || strings.Contains(buf.String(), "1500") {
		t.Fatalf("got %d points:\n%s", got, buf.String())
	}
}

func TestChunksKeepOneHeader(t *testing.T) {
	s := newTestStore(t)
	n := 3*chunkPoints + 7
	for i := range n {
		s.Append(int64(1000+i), []*dto.MetricFamily{gaugeFam("g", map[string]float64{"a": float64(i), "b": float64(-i)})})
	}
	var buf bytes.Buffer
	if err := s.Export(&buf, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	if c := strings.Count(buf.String(), "# TYPE"); c != 1 {
		t.Fatalf("%d TYPE lines", c)
	}
	fams := decode(t, buf.Bytes(), expfmt.NewFormat(expfmt.TypeOpenMetrics))
	ms := fams["g"].Metric
	if len(ms) != 2*n {
		t.Fatalf("%d points, want %d", len(ms), 2*n)
	}
	for i, m := range ms {
		wantV, wantK := float64(i), "a"
		if i >= n {
			wantV, wantK = -float64(i-n), "b"
		}
		if m.GetGauge().GetValue() != wantV || m.Label[0].GetValue() != wantK || m.GetTimestampMs() != int64(1000+i%n) {
			t.Fatalf("point %d = %v", i, m)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	s := newTestStore(t)
	s.Append(1000, []*dto.MetricFamily{counterFam("c_total", 1)})
	dir := t.TempDir()
	out := filepath.Join(dir, "out.txt")
	os.WriteFile(out, []byte("previous"), 0o644)
	// A path whose directory vanished fails and leaves nothing behind.
	if err := s.WriteFile(filepath.Join(dir, "gone", "x.txt"), OpenMetrics); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	if err := s.WriteFile(out, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !strings.HasPrefix(string(b), "# HELP c") || !strings.HasSuffix(string(b), "# EOF\n") {
		t.Fatalf("file = %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}

func TestRecoverTornSpool(t *testing.T) {
	s := newTestStore(t)
	for i := range 10 {
		s.Append(int64(1000*(i+1)), []*dto.MetricFamily{counterFam("c_total", float64(i)), gaugeFam("g", map[string]float64{"a": 1})})
	}
	s.flush()
	b, _ := os.ReadFile(s.Path())
	crashed := filepath.Join(t.TempDir(), "crashed.spool")
	// Cut the last tick in its middle, as a kill during a write would.
	os.WriteFile(crashed, b[:len(b)-5], 0o644)
	r, rec, err := Open(crashed)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Ticks != 9 || rec.Points != 18 || !rec.Torn {
		t.Fatalf("recovered %+v, want 9 ticks, 18 points, torn", rec)
	}
	var buf bytes.Buffer
	if err := r.Export(&buf, Prometheus); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "c_total 8 9000\n") || strings.Contains(buf.String(), "c_total 9 ") {
		t.Fatalf("export:\n%s", buf.String())
	}
	// A whole spool recovers every tick.
	whole := filepath.Join(t.TempDir(), "whole.spool")
	os.WriteFile(whole, b, 0o644)
	if _, rec, _ := Open(whole); rec.Ticks != 10 || rec.Torn {
		t.Fatalf("whole spool: %+v", rec)
	}
	// Garbage is refused.
	junk := filepath.Join(t.TempDir(), "junk.spool")
	os.WriteFile(junk, []byte("hello"), 0o644)
	if _, _, err := Open(junk); err == nil {
		t.Fatal("junk accepted")
	}
}

func TestSpoolLockedWhileInUse(t *testing.T) {
	s := newTestStore(t)
	if _, err := Stale(s.Path()); !errors.Is(err, ErrInUse) {
		t.Fatalf("Stale on a live spool: %v", err)
	}
	if _, err := Create(s.Path()); !errors.Is(err, ErrInUse) {
		t.Fatalf("Create on a live spool: %v", err)
	}
	s.Close()
	if stale, err := Stale(s.Path()); !stale || err != nil {
		t.Fatalf("closed spool: stale=%v err=%v", stale, err)
	}
}

// TestMemoryFlatOverLongRun stores an hour at 10 Hz of 60 series and
// checks that the heap does not grow with the number of points: they live
// in the spool, not in memory.
func TestMemoryFlatOverLongRun(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	s := newTestStore(t)
	mfs := make([]*dto.MetricFamily, 0, 20)
	for f := range 20 {
		mfs = append(mfs, gaugeFam("g"+string(rune('a'+f)), map[string]float64{"a": 1, "b": 2, "c": 3}))
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	const ticks = 36000
	var early uint64
	for i := range ticks {
		if i == 1000 {
			early = heap()
		}
		mfs[0].Metric[0].Gauge.Value = ptr(float64(i))
		if err := s.Append(int64(i*10), mfs); err != nil {
			t.Fatal(err)
		}
	}
	late := heap()
	if s.Points() != ticks*60 {
		t.Fatalf("points %d", s.Points())
	}
	if late > early+512<<10 {
		t.Fatalf("heap grew from %d to %d bytes over %d points", early, late, ticks*60)
	}
	var buf countingWriter
	if err := s.Export(&buf, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	if buf.lines != ticks*60+20*2+1 {
		t.Fatalf("exported %d lines", buf.lines)
	}
	t.Logf("%d points, heap %d -> %d bytes, export %d bytes", ticks*60, early, late, buf.n)
}

type countingWriter struct{ n, lines int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.lines += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

// FuzzLabelValues: any label value survives export and parsing.
func FuzzLabelValues(f *testing.F) {
	for _, s := range []string{"", `a"b`, `back\slash`, "new\nline", "ünï©ødé", "\xff\xfe", strings.Repeat("x", 10000), `\"\n`} {
		f.Add(s)
	}
	// One directory per fuzz worker and one spool name reused: a fresh
	// t.TempDir per input costs more than the rest of the body.
	spool := filepath.Join(f.TempDir(), "m.txt.spool")
	f.Fuzz(func(t *testing.T, v string) {
		v = config.CleanLabelValue(v) // as every label value is
		s, err := Create(spool)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			s.Close()
			os.Remove(spool)
		}()
		s.Append(1704067200000, []*dto.MetricFamily{counterFam("c_total", 1, lp("v", v))})
		var buf bytes.Buffer
		if err := s.Export(&buf, OpenMetrics); err != nil {
			t.Fatal(err)
		}
		// testenv's parser is independent of the encoder under test (and
		// much faster than expfmt's OpenMetrics parser on long values).
		f := testenv.ParseBytes(t, buf.Bytes())
		if got := f.Samples[0].Labels["v"]; len(f.Samples) != 1 || got != v {
			t.Fatalf("label value %q came back as %q", v, got)
		}
		buf.Reset()
		s.Export(&buf, Prometheus)
		f = testenv.ParseBytes(t, buf.Bytes())
		if got := f.Samples[0].Labels["v"]; got != v {
			t.Fatalf("0.0.4: label value %q came back as %q", v, got)
		}
	})
}

// TestShiftMovesEarlierTicksAlsoAfterRecovery: the ticks spooled before a
// Shift move by its delta, later ones do not, in the live store and in a
// spool recovered after a kill; a version 1 spool is still read.
func TestShiftMovesEarlierTicksAlsoAfterRecovery(t *testing.T) {
	s := newTestStore(t)
	// Provisional axis: 10000, 10500; the sync instant is at provisional
	// 10800, which becomes 5000 (delta -5800).
	s.Append(10000, []*dto.MetricFamily{counterFam("c_total", 1)})
	s.Append(10500, []*dto.MetricFamily{counterFam("c_total", 2)})
	if err := s.Shift(-5800); err != nil {
		t.Fatal(err)
	}
	if err := s.Shift(1); err == nil {
		t.Fatal("second shift accepted")
	}
	// After the shift the last point is at 4700: a point at 4700 is
	// refused (timestamps only increase), 5000 is kept.
	s.Append(4700, []*dto.MetricFamily{counterFam("c_total", 9)})
	s.Append(5000, []*dto.MetricFamily{counterFam("c_total", 3)})
	s.Append(5250, []*dto.MetricFamily{counterFam("c_total", 4)})
	want := "# HELP c_total help of c_total\n# TYPE c_total counter\n" +
		"c_total 1 4200\nc_total 2 4700\nc_total 3 5000\nc_total 4 5250\n"
	var buf bytes.Buffer
	if err := s.Export(&buf, Prometheus); err != nil {
		t.Fatal(err)
	}
	if buf.String() != want {
		t.Fatalf("live export:\n%s\nwant:\n%s", buf.String(), want)
	}
	s.flush()
	b, _ := os.ReadFile(s.Path())
	if !strings.HasPrefix(string(b), spoolMagic) {
		t.Fatalf("spool starts with %q", b[:20])
	}
	killed := filepath.Join(t.TempDir(), "killed.spool")
	os.WriteFile(killed, b, 0o644)
	r, rec, err := Open(killed)
	if err != nil || rec.Torn || rec.Ticks != 5 {
		t.Fatalf("recovered %+v, %v", rec, err)
	}
	buf.Reset()
	if err := r.Export(&buf, Prometheus); err != nil {
		t.Fatal(err)
	}
	if buf.String() != want {
		t.Fatalf("recovered export:\n%s\nwant:\n%s", buf.String(), want)
	}
	// Killed before the shift: the provisional axis, still a valid file.
	cut := filepath.Join(t.TempDir(), "cut.spool")
	unshifted := newTestStore(t)
	unshifted.Append(10000, []*dto.MetricFamily{counterFam("c_total", 1)})
	unshifted.flush()
	ub, _ := os.ReadFile(unshifted.Path())
	// A version 1 spool (same records, old magic) is still read.
	os.WriteFile(cut, append([]byte(spoolMagicV1), ub[len(spoolMagic):]...), 0o644)
	r, rec, err = Open(cut)
	if err != nil || rec.Ticks != 1 {
		t.Fatalf("version 1 spool: %+v, %v", rec, err)
	}
	buf.Reset()
	r.Export(&buf, Prometheus)
	if !strings.HasSuffix(buf.String(), "c_total 1 10000\n") {
		t.Fatalf("version 1 export:\n%s", buf.String())
	}
}

// TestTimestampsPlainDecimal: OpenMetrics timestamps are plain decimals
// with only the digits needed (Python's prometheus_client 0.16 reads the
// exponent form 1.704067200607e+09 as 1 s and a fraction), for any
// millisecond value, negative ones included.
func TestTimestampsPlainDecimal(t *testing.T) {
	for ms, want := range map[int64]string{
		1795619801704: "1795619801.704", 1795619801700: "1795619801.7", 1795619801000: "1795619801",
		1795619801010: "1795619801.01", 1795619801001: "1795619801.001", 0: "0", 1: "0.001", 999: "0.999",
		-1: "-0.001", -5: "-0.005", -1500: "-1.5", -1000: "-1", -1704067200123: "-1704067200.123",
		math.MaxInt64: "9223372036854775.807", math.MinInt64: "-9223372036854775.808",
	} {
		if got := string(AppendTimestamp([]byte("x "), ms)); got != "x "+want {
			t.Errorf("AppendTimestamp(%d) = %q, want %q", ms, got, "x "+want)
		}
	}
	// Through the exporter: every sample line of every type.
	s := newTestStore(t)
	for _, ts := range []int64{-1500, -5, 0, 1704067200000, 1704067200120, 1704067200607} {
		if err := s.Append(ts, []*dto.MetricFamily{counterFam("c_total", 1), gaugeFam("g", map[string]float64{"a": 2}), histFam(1, 1, 0, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := s.Export(&buf, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	wantTs := []string{"-1.5", "-0.005", "0", "1704067200", "1704067200.12", "1704067200.607"}
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		seen[fields[len(fields)-1]]++
	}
	// c_total, g and the histogram's 2 buckets, +Inf, _sum and _count: 7
	// lines an instant.
	for _, ts := range wantTs {
		if seen[ts] != 7 {
			t.Errorf("%d lines with timestamp %s, want 7:\n%s", seen[ts], ts, buf.String())
		}
	}
	if len(seen) != len(wantTs) {
		t.Errorf("timestamps %v, want %v", seen, wantTs)
	}
}

// TestEmptyLabelsOmitted: a label with an empty value is absent
// (Prometheus semantics; VictoriaMetrics and promtool drop it), so the
// file does not carry it, and the series with and without it are one.
func TestEmptyLabelsOmitted(t *testing.T) {
	s := newTestStore(t)
	for i, labels := range [][]*dto.LabelPair{
		{lp("empty", ""), lp("if", "lo"), lp("z", "")},
		{lp("if", "lo")},
		{lp("empty", ""), lp("if", "lo")},
	} {
		if err := s.Append(1704067200000+int64(i), []*dto.MetricFamily{counterFam("c_total", float64(i), labels...)}); err != nil {
			t.Fatal(err)
		}
	}
	if s.Series() != 1 || s.Points() != 3 {
		t.Fatalf("%d series, %d points; want 1 series of 3 points", s.Series(), s.Points())
	}
	for _, format := range []Format{OpenMetrics, Prometheus} {
		var buf bytes.Buffer
		if err := s.Export(&buf, format); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), `""`) || strings.Count(buf.String(), `c_total{if="lo"} `) != 3 {
			t.Errorf("format %d: want 3 samples of c_total{if=\"lo\"} and no empty label:\n%s", format, buf.String())
		}
	}
	// Recovery reads the spool the same way.
	r, _, err := Open(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if r.Series() != 1 || r.Points() != 3 {
		t.Errorf("recovered %d series, %d points", r.Series(), r.Points())
	}
}

// TestRejectedFamilyLeavesNoPhantom: a family the store cannot take (here
// a gauge that turns into a counter) is left out of its tick, and only it:
// no other series gets a point counted but never written, which the export
// used to show as a "… 0 0" sample at timestamp 0.
func TestRejectedFamilyLeavesNoPhantom(t *testing.T) {
	s := newTestStore(t)
	if err := s.Append(1704067200000, []*dto.MetricFamily{counterFam("a_total", 1), gaugeFam("g", map[string]float64{"a": 1})}); err != nil {
		t.Fatal(err)
	}
	err := s.Append(1704067201000, []*dto.MetricFamily{counterFam("a_total", 2), counterFam("g", 5), gaugeFam("h", map[string]float64{"a": 3})})
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "metric g changed type from GAUGE to COUNTER") {
		t.Errorf("Append with a changed type: %v, want ErrRejected naming g", err)
	}
	if err := s.Append(1704067202000, []*dto.MetricFamily{counterFam("a_total", 3), gaugeFam("g", map[string]float64{"a": 4})}); err != nil {
		t.Fatalf("the tick after: %v", err)
	}
	want := map[string][]string{
		"a_total":  {"1.0 1704067200", "2.0 1704067201", "3.0 1704067202"},
		`g{k="a"}`: {"1.0 1704067200", "4.0 1704067202"},
		`h{k="a"}`: {"3.0 1704067201"},
	}
	check := func(what string, st *Store) {
		t.Helper()
		if st.Points() != 6 || st.Ticks() != 3 {
			t.Errorf("%s: %d points in %d ticks, want 6 in 3", what, st.Points(), st.Ticks())
		}
		var buf bytes.Buffer
		if err := st.Export(&buf, OpenMetrics); err != nil {
			t.Fatal(err)
		}
		got := map[string][]string{}
		for _, line := range strings.Split(buf.String(), "\n") {
			if line == "" || line[0] == '#' {
				continue
			}
			series, point, _ := strings.Cut(line, " ")
			got[series] = append(got[series], point)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: exported %v, want %v:\n%s", what, got, want, buf.String())
		}
	}
	check("store", s)
	r, rec, err := Open(s.Path())
	if err != nil || rec.Torn {
		t.Fatalf("Open: %v, %+v", err, rec)
	}
	check("recovered", r)
}
