// Package report turns statexec files into one self-contained HTML page
// (uPlot charts, data and styles inline, no request) or a text summary.
package report

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
)

// MaxPoints bounds the x positions of one chart: above it a chart keeps the
// minimum and maximum of each of MaxPoints/2 time buckets (about one per
// pixel column of a wide chart).
const MaxPoints = 2400

// Report is what the page and the text summary show.
type Report struct {
	Runs    []*Run
	Panels  []Panel
	Summary []Row
	// SyncPair is true when the runs are the server and client of one sync
	// run, shown on their real common time axis; otherwise each run's axis
	// starts at its command's start.
	SyncPair bool
	offsets  []int64 // per run: the ms that is 0 s on the page's axis
}

// Build computes the panels and the summary of runs.
func Build(runs []*Run, maxPoints int) *Report {
	uniqueNames(runs)
	rep := &Report{Runs: runs, SyncPair: isSyncPair(runs)}
	rep.offsets = axisOffsets(runs, rep.SyncPair)
	rep.Summary = summarize(runs)
	for _, sp := range specs {
		if p, ok := rep.panel(sp.id, sp.section, sp.title, "", sp.unit, maxPoints, sp.lines); ok {
			rep.Panels = append(rep.Panels, p)
		}
	}
	rep.addOtherPanels(maxPoints)
	return rep
}

// uniqueNames names runs by file name, or by path when names clash (or by
// position when even paths do).
func uniqueNames(runs []*Run) {
	count := map[string]int{}
	for _, r := range runs {
		count[r.Name]++
	}
	for i, r := range runs {
		if count[r.Name] > 1 {
			r.Name = r.Path
		}
		for j := range i {
			if runs[j].Name == r.Name {
				r.Name = fmt.Sprintf("%s (#%d)", r.Name, i+1)
			}
		}
	}
}

// isSyncPair: a server file and a client file whose time ranges overlap
// are the two sides of one sync run (same SE_TIME_RELATIVE).
func isSyncPair(runs []*Run) bool {
	if len(runs) < 2 {
		return false
	}
	roles := map[string]bool{}
	for _, r := range runs {
		roles[r.Role] = true
	}
	if !roles["server"] || !roles["client"] {
		return false
	}
	for _, a := range runs {
		for _, b := range runs {
			if a.First > b.Last || b.First > a.Last {
				return false
			}
		}
	}
	return true
}

func (r *Run) origin() int64 {
	if r.HasStart {
		return r.Start
	}
	return r.First
}

func axisOffsets(runs []*Run, common bool) []int64 {
	offs := make([]int64, len(runs))
	for i, r := range runs {
		offs[i] = r.origin()
	}
	if common {
		m := slices.Min(offs)
		for i := range offs {
			offs[i] = m
		}
	}
	return offs
}

// panel builds one panel from every run's lines; false when no run has data
// for it (a panel without data is left out).
func (rep *Report) panel(id, section, title, help, unit string, maxPoints int, lines func(*Run) []namedLine) (Panel, bool) {
	var all []line
	var series []PanelSeries
	for ri, r := range rep.Runs {
		for style, nl := range lines(r) {
			if len(nl.line.ts) == 0 {
				continue
			}
			shifted := line{ts: make([]int64, len(nl.line.ts)), v: nl.line.v}
			for i, t := range nl.line.ts {
				shifted.ts[i] = t - rep.offsets[ri]
			}
			all = append(all, shifted)
			label := nl.label
			if len(rep.Runs) > 1 {
				label = r.Name + ": " + label
			}
			series = append(series, PanelSeries{Label: label, Run: ri, Style: style, Show: !nl.hide})
		}
	}
	if len(all) == 0 {
		return Panel{}, false
	}
	// Every chart spans its runs' whole files: a rate has no point at the
	// first sample, and the charts share one zoom, so without this frame
	// (points with no value) the first chart's narrower range would hide
	// the other charts' first samples.
	for ri, r := range rep.Runs {
		off := rep.offsets[ri]
		all = append(all, line{ts: []int64{r.First - off, r.Last - off}, v: []float64{math.NaN(), math.NaN()}})
	}
	xs, cols := align(all, maxPoints)
	p := Panel{ID: id, Section: section, Title: title, Help: help, Unit: unit, X: make([]float64, len(xs))}
	for i, x := range xs {
		p.X[i] = float64(x) / 1000
	}
	for i := range series {
		series[i].Values, series[i].Points, series[i].Decimated = cols[i].values, cols[i].points, cols[i].decimated
	}
	p.Series = series
	return p, true
}

// addOtherPanels charts every family that no known panel took, so that
// every series of every file appears somewhere.
func (rep *Report) addOtherPanels(maxPoints int) {
	var names []string
	fams := map[string]bool{}
	for _, r := range rep.Runs {
		for _, f := range r.file.Families {
			if !fams[f.Name] {
				fams[f.Name] = true
				names = append(names, f.Name)
			}
		}
	}
	for i, name := range names {
		help, typ := "", ""
		for _, r := range rep.Runs {
			if f := r.byFam[name]; f != nil {
				help, typ = f.Help, f.Type
				break
			}
		}
		lines := func(r *Run) []namedLine {
			if f := r.byFam[name]; f != nil {
				return otherLines(r, f)
			}
			return nil
		}
		title := fmt.Sprintf("%s (%s)", name, typ)
		if p, ok := rep.panel(fmt.Sprintf("other-%d", i), "other", title, help, "", maxPoints, lines); ok {
			rep.Panels = append(rep.Panels, p)
		}
	}
}

// Title names the report after its files.
func (rep *Report) Title() string {
	names := make([]string, len(rep.Runs))
	for i, r := range rep.Runs {
		names[i] = filepath.Base(r.Path)
	}
	s := "statexec report: " + names[0]
	if len(names) > 1 {
		s += fmt.Sprintf(" and %d more", len(names)-1)
	}
	return s
}
