package report

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/statexec/statexec/internal/metricsfile"
)

var nan = math.NaN()

func parseLe(s string) (float64, error) { return strconv.ParseFloat(s, 64) }

// Panel is one chart of the page.
type Panel struct {
	ID      string
	Section string // "command", "host" or "other"
	Title   string
	Help    string
	Unit    string // "cores", "bytes", "bytes/s", "/s", "s" or ""
	X       []float64
	Series  []PanelSeries
}

// PanelSeries is one line of a panel.
type PanelSeries struct {
	Label     string
	Run       int // index in the report's runs
	Style     int // index among the run's lines in this panel (dash pattern)
	Show      bool
	Values    []float64 // at Panel.X; NaN where none
	Points    int       // before decimation
	Decimated bool
}

// namedLine is a line of one run, before alignment.
type namedLine struct {
	label string
	line  line
	hide  bool
}

// spec describes a known panel: lines picks the run's series for it.
type spec struct {
	id, section, title, unit string
	lines                    func(r *Run) []namedLine
}

// take returns the series of a sample name matching match and marks them
// drawn.
func (r *Run) take(name string, match map[string]string) []*metricsfile.Series {
	ss := r.series(name, match)
	for _, s := range ss {
		r.drawn[s] = true
	}
	return ss
}

// counterRate is the per-second rate of the sum of the matching series.
func (r *Run) counterRate(label, name string, match map[string]string) []namedLine {
	ss := r.take(name, match)
	if len(ss) == 0 {
		return nil
	}
	l := sum(ss)
	t, v := rate(l.ts, l.v)
	return []namedLine{{label: label, line: line{t, v}}}
}

// gauge is the sum of the matching series.
func (r *Run) gauge(label, name string, match map[string]string) []namedLine {
	ss := r.take(name, match)
	if len(ss) == 0 {
		return nil
	}
	return []namedLine{{label: label, line: sum(ss)}}
}

// ratesBy is one rate line per value of a label.
func (r *Run) ratesBy(name, key, prefix string) []namedLine {
	var out []namedLine
	for _, v := range labelValues(r.series(name, nil), key) {
		out = append(out, r.counterRate(prefix+v, name, map[string]string{key: v})...)
	}
	return out
}

func join(parts ...[]namedLine) []namedLine {
	var out []namedLine
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// specs are the known panels, in the order a person debugging a run reads
// them: the command first, then the host.
var specs = []spec{
	{"cmd-cpu", "command", "CPU of the command (cores)", "cores", func(r *Run) []namedLine {
		return join(r.ratesBy("statexec_process_cpu_seconds_total", "mode", ""),
			r.counterRate("on-CPU (scheduler)", "statexec_process_sched_cpu_seconds_total", nil))
	}},
	{"cmd-rss", "command", "Memory of the command (RSS, bytes)", "bytes", func(r *Run) []namedLine {
		return join(r.gauge("RSS", "statexec_process_memory_rss_bytes", nil),
			r.gauge("peak RSS", "statexec_process_memory_rss_peak_bytes", nil))
	}},
	{"cmd-disk", "command", "Disk I/O of the command (bytes/s)", "bytes/s", func(r *Run) []namedLine {
		return join(r.counterRate("read", "statexec_process_disk_read_bytes_total", nil),
			r.counterRate("written", "statexec_process_disk_write_bytes_total", nil))
	}},
	{"cmd-net", "command", "Network of the command (bytes/s)", "bytes/s", func(r *Run) []namedLine {
		return join(r.counterRate("sent", "statexec_process_network_sent_bytes_total", nil),
			r.counterRate("received", "statexec_process_network_received_bytes_total", nil))
	}},
	{"cmd-cs", "command", "Context switches of the command (/s)", "/s", func(r *Run) []namedLine {
		return join(r.ratesBy("statexec_process_context_switches_total", "kind", ""),
			r.ratesBy("statexec_process_sched_context_switches_total", "kind", "scheduler "))
	}},
	{"cmd-runq", "command", "Run-queue latency of the command (seconds, quantiles of each interval)", "s", runQueueLines},
	{"cmd-forks", "command", "Forks of the command (tasks created /s)", "/s", func(r *Run) []namedLine {
		return r.counterRate("forks", "statexec_process_forks_total", nil)
	}},
	{"cmd-tasks", "command", "Processes and threads of the command", "", func(r *Run) []namedLine {
		return join(r.gauge("processes", "statexec_process_processes", nil),
			r.gauge("threads", "statexec_process_threads", nil))
	}},
	{"host-cpu", "host", "Host CPU by mode (cores, all CPUs)", "cores", func(r *Run) []namedLine {
		lines := r.ratesBy("statexec_cpu_seconds_total", "mode", "")
		for i := range lines {
			// Idle dwarfs the rest; a click on the legend shows it.
			lines[i].hide = lines[i].label == "idle"
		}
		return lines
	}},
	{"host-mem", "host", "Host memory (bytes)", "bytes", func(r *Run) []namedLine {
		var out []namedLine
		for _, k := range []string{"used", "available", "cached", "buffers", "free", "total"} {
			out = append(out, r.gauge(k, "statexec_memory_"+k+"_bytes", nil)...)
		}
		return out
	}},
	{"host-net", "host", "Host network per interface (bytes/s)", "bytes/s", func(r *Run) []namedLine {
		var out []namedLine
		for _, ifc := range labelValues(r.series("statexec_network_sent_bytes_total", nil), "interface") {
			out = append(out, r.counterRate(ifc+" sent", "statexec_network_sent_bytes_total", map[string]string{"interface": ifc})...)
			out = append(out, r.counterRate(ifc+" received", "statexec_network_received_bytes_total", map[string]string{"interface": ifc})...)
		}
		return out
	}},
	{"host-net-errors", "host", "Host network errors and drops (/s)", "/s", func(r *Run) []namedLine {
		var out []namedLine
		for _, k := range []string{"sent_errors", "received_errors", "sent_drops", "received_drops"} {
			out = append(out, r.ratesBy("statexec_network_"+k+"_total", "interface", strings.Replace(k, "_", " ", 1)+" ")...)
		}
		return out
	}},
	{"host-disk", "host", "Host disks (bytes/s)", "bytes/s", func(r *Run) []namedLine {
		var out []namedLine
		for _, d := range labelValues(r.series("statexec_disk_read_bytes_total", nil), "disk") {
			out = append(out, r.counterRate(d+" read", "statexec_disk_read_bytes_total", map[string]string{"disk": d})...)
			out = append(out, r.counterRate(d+" written", "statexec_disk_write_bytes_total", map[string]string{"disk": d})...)
		}
		return out
	}},
}

const runQueueHistogram = "statexec_process_sched_runqueue_latency_seconds"

func runQueueLines(r *Run) []namedLine {
	buckets := r.take(runQueueHistogram+"_bucket", nil)
	if len(buckets) == 0 {
		return nil
	}
	r.take(runQueueHistogram+"_sum", nil)
	r.take(runQueueHistogram+"_count", nil)
	ts, per, _ := histogramQuantiles(buckets, []float64{0.5, 0.99})
	return []namedLine{{label: "p50", line: line{ts, per[0]}}, {label: "p99", line: line{ts, per[1]}}}
}

// otherLines charts what no known panel took, one panel per family:
// counters (and histogram buckets, sums and counts) as rates, the rest as
// they are.
func otherLines(r *Run, fam *metricsfile.Family) []namedLine {
	var out []namedLine
	for _, s := range r.file.Series {
		if r.drawn[s] || r.file.Families[s.Family].Name != fam.Name {
			continue
		}
		r.drawn[s] = true
		l := pointsLine(s.Points)
		label := s.Name + seriesLabels(s.Labels)
		if isCumulative(fam.Type, s.Name) {
			l.ts, l.v = rate(l.ts, l.v)
			label += " /s"
		}
		out = append(out, namedLine{label: label, line: l})
	}
	return out
}

func isCumulative(typ, name string) bool {
	switch typ {
	case "counter":
		return !strings.HasSuffix(name, "_created")
	case "histogram", "summary":
		return strings.HasSuffix(name, "_bucket") || strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count")
	}
	return false
}

// seriesLabels formats the labels that tell series apart, leaving out the
// ones every statexec sample carries.
func seriesLabels(labels map[string]string) string {
	var keys []string
	for k := range labels {
		if k != "instance" && k != "job" && k != "role" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}
