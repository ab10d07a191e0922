package testenv

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/statexec/statexec/internal/metricsfile"
)

// File is a parsed statexec output file.
type File struct {
	// OpenMetrics is true for OpenMetrics 1.0 text (ends with `# EOF`,
	// timestamps in seconds) and false for Prometheus 0.0.4 text (integer
	// millisecond timestamps, no `# EOF`).
	OpenMetrics bool
	Families    []Family // in file order
	Samples     []Sample // in file order
}

// Family is the metadata of one metric family. For OpenMetrics counters Name
// is the name on the TYPE line, without the `_total` of the samples.
type Family struct {
	Name, Type, Help string
	Unit             string // OpenMetrics `# UNIT`, if any
}

// Sample is one sample line.
type Sample struct {
	Name        string            // full sample name, e.g. foo_total, foo_bucket
	Labels      map[string]string // unescaped; never nil; no __name__
	Value       float64
	TimestampMs int64
}

// ParseFile strictly parses a statexec output file with metricsfile.Parse,
// independently of the prometheus/common code that writes it, and fails the
// test on the first problem. The format is OpenMetrics text if the file has a
// `# EOF` line, Prometheus 0.0.4 text otherwise. Checked (see metricsfile):
//   - OpenMetrics: the last line is `# EOF` (trailing newline optional) and
//     nothing follows; timestamps are seconds as plain decimals with only
//     the digits needed (1704067200.12, not 1.70406720012e+09, which
//     Python's prometheus_client misreads, nor 1704067200.120: checked here,
//     on top of metricsfile, which reads both for older files), at most
//     millisecond precision, below 1e11 so they are not milliseconds); no
//     comment lines other than HELP/TYPE/UNIT (promtool rejects them); no
//     exemplars.
//   - 0.0.4: every line ends with a newline; timestamps are integer
//     milliseconds >= 2^31 (VictoriaMetrics reads smaller ones as seconds);
//     plain comment lines are allowed (the format allows them).
//   - both: no empty lines; `# HELP` and `# TYPE` exactly once per family,
//     before its samples; a family's lines are contiguous (no interleaving,
//     no family twice); each sample belongs to the current family according
//     to its type (OpenMetrics counter `# TYPE foo counter` + `foo_total` /
//     `foo_created`; histogram `_bucket` with `le`, `_sum`, `_count`,
//     OpenMetrics `_created`; summary with `quantile`...); every sample has a
//     timestamp; label values use only the escapes \\ \" \n, are UTF-8
//     and are not empty (readers drop empty labels: empty means absent;
//     checked here, metricsfile accepts them);
//     no duplicate label names; per series (name + labels) timestamps are
//     strictly increasing.
func ParseFile(t testing.TB, path string) *File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ParseFile: %v", err)
		return nil
	}
	f, err := parse(data)
	if err != nil {
		t.Fatalf("ParseFile %s: %v", path, err)
		return nil
	}
	return f
}

// ParseBytes is ParseFile for data held in memory.
func ParseBytes(t testing.TB, data []byte) *File {
	t.Helper()
	f, err := parse(data)
	if err != nil {
		t.Fatalf("ParseBytes: %v", err)
		return nil
	}
	return f
}

// Series returns the samples named name whose labels include all of match,
// sorted by time (stable: samples of several matching series at the same
// time keep file order).
func (f *File) Series(name string, match map[string]string) []Sample {
	var out []Sample
	for _, s := range f.Samples {
		if s.Name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if got, has := s.Labels[k]; !has || got != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].TimestampMs < out[j].TimestampMs })
	return out
}

// SeriesCount returns the number of distinct series (name + labels).
func (f *File) SeriesCount() int {
	seen := map[string]struct{}{}
	for _, s := range f.Samples {
		seen[seriesKey(s.Name, s.Labels)] = struct{}{}
	}
	return len(seen)
}

// Family returns the family named name (as on its TYPE line), or nil.
func (f *File) Family(name string) *Family {
	for i := range f.Families {
		if f.Families[i].Name == name {
			return &f.Families[i]
		}
	}
	return nil
}

// seriesKey is a canonical name{k="v",...} with sorted, escaped labels.
func seriesKey(name string, labels map[string]string) string {
	return metricsfile.Key(name, labels)
}

// parse reads data with the project's strict reader and lists its samples
// in file order.
func parse(data []byte) (*File, error) {
	mf, err := metricsfile.Parse(data)
	if err != nil {
		return nil, err
	}
	if err := checkStatexecForm(data, mf); err != nil {
		return nil, err
	}
	f := &File{OpenMetrics: mf.OpenMetrics, Samples: make([]Sample, 0, len(mf.Order))}
	for _, fam := range mf.Families {
		f.Families = append(f.Families, Family(fam))
	}
	for _, ref := range mf.Order {
		s := mf.Series[ref.Series]
		p := s.Points[ref.Point]
		f.Samples = append(f.Samples, Sample{Name: s.Name, Labels: s.Labels, Value: p.Value, TimestampMs: p.TimestampMs})
	}
	return f, nil
}

// omTimestampRE is a plain decimal without needless digits: no exponent,
// no leading zeros, no trailing zeros in the fraction.
var omTimestampRE = regexp.MustCompile(`^-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?$`)

// checkStatexecForm holds what statexec writes to more than the file
// format asks (metricsfile reads older files too): no empty label value,
// and OpenMetrics timestamps in plain decimal with only the digits needed.
func checkStatexecForm(data []byte, mf *metricsfile.File) error {
	for _, s := range mf.Series {
		for k, v := range s.Labels {
			if v == "" {
				return fmt.Errorf("%s: label %q: empty value (VictoriaMetrics and promtool drop it: empty means absent)", s.Name, k)
			}
		}
	}
	if !mf.OpenMetrics {
		return nil
	}
	for n, l := range strings.Split(string(data), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		f := strings.Fields(l)
		ts := f[len(f)-1]
		if !omTimestampRE.MatchString(ts) || ts == "-0" {
			return fmt.Errorf("line %d: timestamp %q is not a plain decimal with only the digits needed, like 1704067200.12 (Python's prometheus_client reads 1.70406720012e+09 as 1 s and a fraction)", n+1, ts)
		}
	}
	return nil
}
