//go:build linux

package probe

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Session's samples: the plain values (both backends)
// and each loaded probe group's. The metric set is fixed when the session
// starts.
type collector struct {
	s *Session

	info, success, groupOn *prometheus.Desc

	cpu, rss, rssPeak, diskRead, diskWrite, cs *prometheus.Desc
	processes, threads                         *prometheus.Desc
}

func newCollector(s *Session) *collector {
	c := &collector{s: s}
	d := c.desc
	c.info = d("statexec_probe_info", "Which probe backend measured the command's process tree (ebpf or plain).", "backend")
	// The host collectors emit the same family, each with its own
	// collector label as a constant label: name, help and label kind
	// must match theirs, or the registry refuses the pair.
	c.success = prometheus.NewDesc("statexec_collector_success", "Whether the collector's last collection succeeded (1) or failed (0).", nil, withLabel(s.opts.ConstLabels, "collector", "probe"))
	c.groupOn = d("statexec_probe_group_enabled", "Whether an eBPF probe group is loaded (1) or off (0: plain backend, or the kernel lacks its hooks).", "group")

	c.cpu = d("statexec_process_cpu_seconds_total", "CPU time of the command's process tree, exited processes included, by mode (cgroup cpu.stat or /proc).", "mode")
	c.rss = d("statexec_process_memory_rss_bytes", "Resident set size summed over the live processes of the command's tree.")
	c.rssPeak = d("statexec_process_memory_rss_peak_bytes", "Highest resident set size of the command's tree seen so far (sampled sum, a single process's VmHWM, its peak at exit with eBPF, or the command's maxrss when above statexec's own).")
	c.diskRead = d("statexec_process_disk_read_bytes_total", "Bytes the command's tree caused to be read from storage (cgroup io.stat where the io controller is on, else /proc/PID/io read_bytes).")
	c.diskWrite = d("statexec_process_disk_write_bytes_total", "Bytes the command's tree caused to be written to storage (cgroup io.stat where the io controller is on, else /proc/PID/io write_bytes).")
	c.cs = d("statexec_process_context_switches_total", "Context switches of the command's tree from /proc/PID/status, by kind (voluntary or involuntary).", "kind")
	c.processes = d("statexec_process_processes", "Live processes in the command's tree.")
	c.threads = d("statexec_process_threads", "Live threads in the command's tree.")
	return c
}

// desc makes a description carrying the session's const labels (instance,
// job, role and SE_LABEL_ labels).
func (c *collector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, c.s.opts.ConstLabels)
}

// withLabel returns l plus one more label, leaving l as it is.
func withLabel(l prometheus.Labels, name, value string) prometheus.Labels {
	out := prometheus.Labels{name: value}
	for k, v := range l {
		out[k] = v
	}
	return out
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, lv ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, lv ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.success, c.groupOn, c.cpu, c.rss, c.rssPeak, c.diskRead, c.diskWrite, c.cs, c.processes, c.threads} {
		ch <- d
	}
	for _, g := range c.s.groups {
		g.g.describe(ch)
	}
	if c.s.tcpDiag != nil {
		c.s.tcpDiag.describe(ch)
	}
}

// Collect implements prometheus.Collector. It samples once per call: a few
// small /proc and cgroup files per process and one per-CPU map lookup per
// probe group. The session's lock is held throughout, so that every value
// comes from the same sample (the registry drains ch concurrently).
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.sampleLocked()
	}
	p := s.snap.plain

	gauge(ch, c.info, 1, s.backend)
	success := 1.0
	if s.snap.err != nil {
		success = 0
	}
	gauge(ch, c.success, success)
	for _, sp := range groupSpecs() {
		on := 0.0
		if s.group(sp.name) != nil {
			on = 1
		}
		gauge(ch, c.groupOn, on, sp.name)
	}
	counter(ch, c.cpu, p.userSec, "user")
	counter(ch, c.cpu, p.sysSec, "system")
	gauge(ch, c.rss, float64(p.rss))
	gauge(ch, c.rssPeak, float64(s.rssPeakLocked()))
	counter(ch, c.diskRead, float64(p.readBytes))
	counter(ch, c.diskWrite, float64(p.writeBytes))
	counter(ch, c.cs, float64(p.vcs), "voluntary")
	counter(ch, c.cs, float64(p.ivcs), "involuntary")
	// One source in both backends: cgroup.procs/cgroup.threads (exact)
	// or the /proc walk.
	gauge(ch, c.processes, float64(p.procs))
	gauge(ch, c.threads, float64(p.threads))
	for _, g := range s.groups {
		g.g.collect(ch)
	}
	if s.tcpDiag != nil {
		s.tcpDiag.collect(ch)
	}
}
