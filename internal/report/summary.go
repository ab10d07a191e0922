package report

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Row is one line of the summary table: a text per run, or a number per
// run (NaN where the run's file lacks it) with a unit for formatting.
type Row struct {
	Label  string
	Unit   string    // "s", "bytes", "cores", "" (a count)
	Text   []string  // text rows
	Values []float64 // numeric rows
}

// Cells formats the row's values, one per run.
func (row Row) Cells() []string {
	if row.Text != nil {
		return row.Text
	}
	out := make([]string, len(row.Values))
	for i, v := range row.Values {
		out[i] = formatValue(v, row.Unit)
	}
	return out
}

// Ratios formats each run's value divided by the first run's ("" for text
// rows and missing values).
func (row Row) Ratios() []string {
	out := make([]string, len(row.Values))
	if row.Text != nil || len(row.Values) == 0 {
		return make([]string, len(row.Text))
	}
	base := row.Values[0]
	for i, v := range row.Values {
		switch {
		case math.IsNaN(v) || math.IsNaN(base):
			out[i] = "—"
		case base == 0 && v == 0:
			out[i] = "1.00×"
		case base == 0:
			out[i] = "—"
		default:
			out[i] = fmt.Sprintf("%.2f×", v/base)
		}
	}
	return out
}

// summarize computes the summary rows; a numeric row no run has is left out.
func summarize(runs []*Run) []Row {
	text := func(label string, f func(r *Run) string) Row {
		row := Row{Label: label, Text: make([]string, len(runs))}
		for i, r := range runs {
			row.Text[i] = f(r)
		}
		return row
	}
	rows := []Row{
		text("file", func(r *Run) string { return r.Name }),
		text("instance / role", func(r *Run) string { return r.Instance + " / " + r.Role }),
		text("probes", func(r *Run) string {
			if s := r.series("statexec_probe_info", nil); len(s) > 0 {
				return s[0].Labels["backend"]
			}
			return "—"
		}),
	}
	if anyRun(runs, func(r *Run) bool { return r.Command != nil }) {
		rows = append(rows, text("command", func(r *Run) string { return strings.Join(r.Command, " ") }))
	}
	if anyRun(runs, func(r *Run) bool { return r.ExitCode != nil }) {
		rows = append(rows, text("exit code", func(r *Run) string {
			if r.ExitCode == nil {
				return "—"
			}
			return strconv.Itoa(*r.ExitCode)
		}))
	}
	num := func(label, unit string, f func(r *Run) (float64, bool)) {
		row := Row{Label: label, Unit: unit, Values: make([]float64, len(runs))}
		have := false
		for i, r := range runs {
			v, ok := f(r)
			if !ok {
				v = math.NaN()
			}
			have = have || ok
			row.Values[i] = v
		}
		if have {
			rows = append(rows, row)
		}
	}
	counter := func(name string, match map[string]string) func(r *Run) (float64, bool) {
		return func(r *Run) (float64, bool) { return r.delta(name, match) }
	}
	num("wall time", "s", func(r *Run) (float64, bool) {
		return float64(r.End-r.Start) / 1000, r.HasStart && r.HasEnd
	})
	num("CPU user", "s", counter("statexec_process_cpu_seconds_total", map[string]string{"mode": "user"}))
	num("CPU system", "s", counter("statexec_process_cpu_seconds_total", map[string]string{"mode": "system"}))
	num("CPU average", "cores", func(r *Run) (float64, bool) {
		cpu, ok := r.delta("statexec_process_cpu_seconds_total", nil)
		if !ok || !r.HasStart || !r.HasEnd || r.End == r.Start {
			return 0, false
		}
		return cpu / (float64(r.End-r.Start) / 1000), true
	})
	num("peak RSS", "bytes", func(r *Run) (float64, bool) {
		return r.max("statexec_process_memory_rss_peak_bytes", "statexec_process_memory_rss_bytes")
	})
	num("disk read", "bytes", counter("statexec_process_disk_read_bytes_total", nil))
	num("disk written", "bytes", counter("statexec_process_disk_write_bytes_total", nil))
	num("network sent", "bytes", counter("statexec_process_network_sent_bytes_total", nil))
	num("network received", "bytes", counter("statexec_process_network_received_bytes_total", nil))
	num("context switches, voluntary", "", counter("statexec_process_context_switches_total", map[string]string{"kind": "voluntary"}))
	num("context switches, involuntary", "", counter("statexec_process_context_switches_total", map[string]string{"kind": "involuntary"}))
	for _, q := range []struct {
		label string
		q     float64
	}{{"run-queue latency p50", 0.5}, {"run-queue latency p99", 0.99}} {
		num(q.label, "s", func(r *Run) (float64, bool) {
			b := r.series(runQueueHistogram+"_bucket", nil)
			if len(b) == 0 {
				return 0, false
			}
			_, _, whole := histogramQuantiles(b, []float64{q.q})
			return whole[0], true
		})
	}
	num("forks", "", counter("statexec_process_forks_total", nil))
	// Network health: what the file has of it.
	num("host network errors", "", func(r *Run) (float64, bool) {
		s, ok1 := r.delta("statexec_network_sent_errors_total", nil)
		v, ok2 := r.delta("statexec_network_received_errors_total", nil)
		return s + v, ok1 || ok2
	})
	num("host network drops", "", func(r *Run) (float64, bool) {
		s, ok1 := r.delta("statexec_network_sent_drops_total", nil)
		v, ok2 := r.delta("statexec_network_received_drops_total", nil)
		return s + v, ok1 || ok2
	})
	return rows
}

func anyRun(runs []*Run, f func(*Run) bool) bool {
	for _, r := range runs {
		if f(r) {
			return true
		}
	}
	return false
}

// max is the highest value of the first of names that the file has.
func (r *Run) max(names ...string) (float64, bool) {
	for _, name := range names {
		ss := r.series(name, nil)
		if len(ss) == 0 {
			continue
		}
		m := math.Inf(-1)
		for _, s := range ss {
			for _, p := range s.Points {
				m = math.Max(m, p.Value)
			}
		}
		return m, !math.IsInf(m, -1)
	}
	return 0, false
}

// formatValue prints a value with its unit: bytes in KiB/MiB/GiB, seconds
// in s/ms/µs.
func formatValue(v float64, unit string) string {
	if math.IsNaN(v) {
		return "—"
	}
	switch unit {
	case "bytes":
		abs := math.Abs(v)
		for _, u := range []struct {
			name string
			size float64
		}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
			if abs >= u.size {
				return fmt.Sprintf("%.2f %s", v/u.size, u.name)
			}
		}
		return fmt.Sprintf("%.0f B", v)
	case "s":
		abs := math.Abs(v)
		switch {
		case abs == 0 || abs >= 1:
			return fmt.Sprintf("%.3f s", v)
		case abs >= 1e-3:
			return fmt.Sprintf("%.3g ms", v*1e3)
		default:
			return fmt.Sprintf("%.3g µs", v*1e6)
		}
	case "cores":
		return fmt.Sprintf("%.2f cores", v)
	}
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// WriteText prints the summary as a table: one column per run, then the
// ratio of each later run to the first.
func (rep *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := []string{""}
	for i := range rep.Runs {
		header = append(header, fmt.Sprintf("run %d", i+1))
	}
	for i := 1; i < len(rep.Runs); i++ {
		header = append(header, fmt.Sprintf("run %d / run 1", i+1))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rep.Summary {
		cells := append([]string{row.Label}, row.Cells()...)
		if len(rep.Runs) > 1 {
			cells = append(cells, row.Ratios()[1:]...)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
