package report

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/statexec/statexec/internal/metricsfile"
)

// Run is one statexec file.
type Run struct {
	Name  string // how the page names it: the file name, or its path if two files share a name
	Path  string
	file  *metricsfile.File
	byFam map[string]*metricsfile.Family
	// bySample lists the series of each sample name, in file order.
	bySample map[string][]*metricsfile.Series
	drawn    map[*metricsfile.Series]bool

	First, Last int64 // first and last timestamp in the file, ms
	// Start and End are when the command started and ended (ms), from
	// statexec_command_status; HasStart/HasEnd say whether the file saw it.
	Start, End       int64
	HasStart, HasEnd bool
	Instance, Role   string
	// Command and ExitCode are known when the report is written at the end
	// of a run; the file itself does not record them.
	Command  []string
	ExitCode *int
}

// LoadFile reads and parses one statexec file.
func LoadFile(path string) (*Run, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := metricsfile.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r, err := newRun(path, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ErrNoStatexecSeries is returned for a valid file without statexec series.
var ErrNoStatexecSeries = errors.New("no statexec series (statexec_*) in the file")

func newRun(path string, f *metricsfile.File) (*Run, error) {
	r := &Run{Name: filepath.Base(path), Path: path, file: f,
		byFam: map[string]*metricsfile.Family{}, bySample: map[string][]*metricsfile.Series{},
		drawn: map[*metricsfile.Series]bool{}}
	for i := range f.Families {
		r.byFam[f.Families[i].Name] = &f.Families[i]
	}
	statexec := false
	for _, s := range f.Series {
		r.bySample[s.Name] = append(r.bySample[s.Name], s)
		if strings.HasPrefix(s.Name, "statexec_") && len(s.Points) > 0 {
			statexec = true
			first, last := s.Points[0].TimestampMs, s.Points[len(s.Points)-1].TimestampMs
			if r.Instance == "" && r.Role == "" {
				r.Instance, r.Role = s.Labels["instance"], s.Labels["role"]
				r.First, r.Last = first, last
			}
			r.First, r.Last = min(r.First, first), max(r.Last, last)
		}
	}
	if !statexec {
		return nil, ErrNoStatexecSeries
	}
	if st := r.bySample["statexec_command_status"]; len(st) > 0 {
		for _, p := range st[0].Points {
			if !r.HasStart && p.Value >= 1 {
				r.Start, r.HasStart = p.TimestampMs, true
			}
			if !r.HasEnd && p.Value >= 2 {
				r.End, r.HasEnd = p.TimestampMs, true
			}
		}
	}
	return r, nil
}

// series returns the series of a sample name whose labels include match.
func (r *Run) series(name string, match map[string]string) []*metricsfile.Series {
	var out []*metricsfile.Series
	for _, s := range r.bySample[name] {
		ok := true
		for k, v := range match {
			if s.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// labelValues lists the distinct values of label key among series, sorted.
func labelValues(series []*metricsfile.Series, key string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range series {
		if v := s.Labels[key]; !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

// sum adds up series sampled at the same instants (one run's ticks) into
// one line; an instant missing from some series counts what the others have.
func sum(series []*metricsfile.Series) line {
	if len(series) == 1 {
		return pointsLine(series[0].Points)
	}
	acc := map[int64]float64{}
	for _, s := range series {
		for _, p := range s.Points {
			acc[p.TimestampMs] += p.Value
		}
	}
	l := line{ts: make([]int64, 0, len(acc))}
	for t := range acc {
		l.ts = append(l.ts, t)
	}
	sort.Slice(l.ts, func(i, j int) bool { return l.ts[i] < l.ts[j] })
	l.v = make([]float64, len(l.ts))
	for i, t := range l.ts {
		l.v[i] = acc[t]
	}
	return l
}

func pointsLine(points []metricsfile.Point) line {
	l := line{ts: make([]int64, len(points)), v: make([]float64, len(points))}
	for i, p := range points {
		l.ts[i], l.v[i] = p.TimestampMs, p.Value
	}
	return l
}

// delta is the increase of a counter over the file (last minus first
// point, summed over series), and false when there is no such series.
func (r *Run) delta(name string, match map[string]string) (float64, bool) {
	ss := r.series(name, match)
	if len(ss) == 0 {
		return 0, false
	}
	total := 0.0
	for _, s := range ss {
		if len(s.Points) == 0 {
			continue
		}
		total += s.Points[len(s.Points)-1].Value - s.Points[0].Value
	}
	return total, true
}

// histogramQuantiles computes, per interval, the q-quantiles of the
// observations made in it (the buckets' increases), and over the whole
// file. The series are the _bucket series of one histogram.
func histogramQuantiles(buckets []*metricsfile.Series, qs []float64) (ts []int64, perInterval [][]float64, whole []float64) {
	type bs struct {
		upper  float64
		points []metricsfile.Point
	}
	var bl []bs
	for _, s := range buckets {
		upper, err := parseLe(s.Labels["le"])
		if err != nil {
			continue
		}
		bl = append(bl, bs{upper, s.Points})
	}
	whole = make([]float64, len(qs))
	perInterval = make([][]float64, len(qs))
	if len(bl) == 0 {
		for i := range whole {
			whole[i] = nan
		}
		return nil, perInterval, whole
	}
	// Each bucket's values at the first bucket's instants (the bucket series
	// of one histogram share their instants; a missing instant counts 0).
	times := bl[0].points
	at := make([][]float64, len(bl))
	for i, b := range bl {
		at[i] = valuesAt(times, b.points)
	}
	cur := make([]bucket, len(bl))
	for k := 1; k < len(times); k++ {
		for i, b := range bl {
			inc := at[i][k] - at[i][k-1]
			if inc < 0 {
				inc = at[i][k]
			}
			cur[i] = bucket{b.upper, inc}
		}
		ts = append(ts, times[k].TimestampMs)
		for j, q := range qs {
			perInterval[j] = append(perInterval[j], quantile(q, cur))
		}
	}
	for i, b := range bl {
		cur[i] = bucket{b.upper, at[i][len(times)-1] - at[i][0]}
	}
	for j, q := range qs {
		whole[j] = quantile(q, cur)
	}
	return ts, perInterval, whole
}

// valuesAt returns the values of points at the given instants, 0 where
// points has none.
func valuesAt(times, points []metricsfile.Point) []float64 {
	out := make([]float64, len(times))
	aligned := len(points) == len(times)
	for k := 0; aligned && k < len(times); k++ {
		aligned = points[k].TimestampMs == times[k].TimestampMs
	}
	if aligned {
		for k, p := range points {
			out[k] = p.Value
		}
		return out
	}
	byTime := make(map[int64]float64, len(points))
	for _, p := range points {
		byTime[p.TimestampMs] = p.Value
	}
	for k, t := range times {
		out[k] = byTime[t.TimestampMs]
	}
	return out
}
