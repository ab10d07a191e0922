package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/statexec/statexec/internal/testenv"
)

// readerSeries are the timestamps of TestEveryReaderReadsTimestampsExactly,
// by series: 2,000 consecutive milliseconds in 2024, 2,000 in 1972 (where
// seconds*1000 is not always exact in float64), and 2,000 from the first
// seconds after 1970 (a run with SE_TIME_RELATIVE=0) for which truncating
// float seconds times 1000 gives ms-1.
func readerSeries() map[string][]int64 {
	out := map[string][]int64{}
	for i := range int64(2000) {
		out["y2024"] = append(out["y2024"], 1704067200000+i)
		out["y1972"] = append(out["y1972"], 68177924000+i)
	}
	for ms := int64(1000); ms < 10_000_000 && len(out["truncates"]) < 2000; ms++ {
		f, _ := strconv.ParseFloat(string(AppendTimestamp(nil, ms)), 64)
		if int64(f*1000) != ms {
			out["truncates"] = append(out["truncates"], ms)
		}
	}
	return out
}

// truncatingRead is how VictoriaMetrics and promtool turn a timestamp in
// seconds into milliseconds: a correctly rounded parse (VictoriaMetrics'
// fast parser divides the whole decimal mantissa by a power of ten once,
// which rounds the same) times 1000, truncated.
func truncatingRead(ms int64) int64 {
	f, _ := strconv.ParseFloat(string(AppendTimestamp(nil, ms)), 64)
	return int64(f * 1000)
}

// TestEveryReaderReadsTimestampsExactly writes 6,000 timestamps as they
// are, without the sampler's adjustment (sampler.ExactMs), and reads them
// back with VictoriaMetrics, promtool and Python's prometheus_client.
// Python reads every one exactly; the other two read exactly what
// truncatingRead predicts (which ExactMs relies on), which is every
// millisecond exactly from 2004 to 2039.
func TestEveryReaderReadsTimestampsExactly(t *testing.T) {
	testenv.Require(t, "victoria-metrics", "promtool")
	s := newTestStore(t)
	series := readerSeries()
	names := []string{"y2024", "y1972", "truncates"}
	want := map[string]int64{} // "set@i" -> ms
	for i := range 2000 {
		for _, name := range names {
			ms := series[name][i]
			g := &dto.MetricFamily{Name: ptr("ts_check"), Help: ptr("h"), Type: dto.MetricType_GAUGE.Enum(),
				Metric: []*dto.Metric{{Label: []*dto.LabelPair{lp("set", name), lp("i", strconv.Itoa(i))}, Gauge: &dto.Gauge{Value: ptr(float64(i))}}}}
			if err := s.Append(ms, []*dto.MetricFamily{g}); err != nil {
				t.Fatal(err)
			}
			want[fmt.Sprintf("%s@%d", name, i)] = ms
		}
	}
	path := filepath.Join(t.TempDir(), "ts.txt")
	if err := s.WriteFile(path, OpenMetrics); err != nil {
		t.Fatal(err)
	}
	// check compares what a reader got with read(ms) and logs how many
	// timestamps it read back other than exactly, per set.
	check := func(reader string, got map[string]int64, read func(int64) int64) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%s: %d samples, want %d", reader, len(got), len(want))
		}
		mismatches, inexact := 0, map[string]int{}
		for k, ms := range want {
			g, ok := got[k]
			if !ok || g != read(ms) {
				mismatches++
				if mismatches <= 5 {
					t.Errorf("%s: %s read as %d (present %v), want %d", reader, k, g, ok, read(ms))
				}
			}
			if g != ms {
				inexact[k[:strings.IndexByte(k, '@')]]++
			}
		}
		if inexact["y2024"] != 0 {
			t.Errorf("%s: %d of 2,000 timestamps of 2024 read back wrong", reader, inexact["y2024"])
		}
		t.Logf("%s: timestamps read back other than written, per set of 2,000: %v", reader, inexact)
	}

	vm := testenv.StartVictoriaMetrics(t)
	vm.Import(t, path)
	got := map[string]int64{}
	for _, se := range vm.Export(t, "ts_check") {
		got[se.Labels["set"]+"@"+se.Labels["i"]] = se.TimestampsMs[0]
	}
	check("VictoriaMetrics", got, truncatingRead)

	got = map[string]int64{}
	for _, se := range testenv.PromtoolSamples(t, path) {
		got[se.Labels["set"]+"@"+se.Labels["i"]] = se.TimestampMs
	}
	check("promtool", got, truncatingRead)

	got = map[string]int64{}
	for _, se := range testenv.PythonParse(t, path) {
		if !se.Exact {
			t.Errorf("python: %s@%s timestamp %s", se.Labels["set"], se.Labels["i"], se.Raw)
			continue
		}
		got[se.Labels["set"]+"@"+se.Labels["i"]] = se.TimestampMs
	}
	check("python prometheus_client", got, func(ms int64) int64 { return ms })
	if t.Failed() {
		b, _ := os.ReadFile(path)
		t.Logf("file head:\n%s", b[:min(len(b), 600)])
	}
}
