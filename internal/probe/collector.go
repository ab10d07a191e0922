//go:build linux

package probe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/constmetric"
)

// collector exports a Session's samples: the plain values (both backends)
// and each loaded probe group's. The metric set is fixed when the session
// starts.
type collector struct {
	s *Session

	info, success, groupOn *prometheus.Desc

	cpu, rss, rssPeak, diskRead, diskWrite, cs *prometheus.Desc
	processes, threads                         *prometheus.Desc

	m *plainMetrics // made at the first Collect
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

// seriesSet keeps a group's series by family (internal/constmetric),
// each made at the first sample that sends it: a const metric built anew
// at every sample was most of a group's allocations, and a tick that
// sends the same metrics as the previous one lets the sampler reuse that
// tick's gather (sampler.Registry). The zero value is ready.
type seriesSet map[*prometheus.Desc]*constmetric.Vec

func (s *seriesSet) of(d *prometheus.Desc, typ prometheus.ValueType) *constmetric.Vec {
	if *s == nil {
		*s = seriesSet{}
	}
	v := (*s)[d]
	if v == nil {
		v = constmetric.NewVec(d, typ)
		(*s)[d] = v
	}
	return v
}

// counter and gauge are the series of a counter or gauge family.
func (s *seriesSet) counter(d *prometheus.Desc) *constmetric.Vec {
	return s.of(d, prometheus.CounterValue)
}

func (s *seriesSet) gauge(d *prometheus.Desc) *constmetric.Vec {
	return s.of(d, prometheus.GaugeValue)
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
// comes from the same sample (a registry drains ch concurrently).
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.Emit(func(m prometheus.Metric) { ch <- m })
}

// Emit is Collect without a channel (sampler.Emitter): the sampler calls
// it in its own goroutine.
func (c *collector) Emit(emit func(prometheus.Metric)) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.sampleLocked()
	}
	p := s.snap.plain
	m := c.metrics()

	emit(m.info.With1(s.backend).Set(1))
	success := 1.0
	if s.snap.err != nil {
		success = 0
	}
	emit(m.success.Set(success))
	for _, sp := range groupSpecs() {
		on := 0.0
		if s.group(sp.name) != nil {
			on = 1
		}
		emit(m.groupOn.With1(sp.name).Set(on))
	}
	emit(m.cpuUser.Set(p.userSec))
	emit(m.cpuSystem.Set(p.sysSec))
	emit(m.rss.Set(float64(p.rss)))
	emit(m.rssPeak.Set(float64(s.rssPeakLocked())))
	emit(m.diskRead.Set(float64(p.readBytes)))
	emit(m.diskWrite.Set(float64(p.writeBytes)))
	emit(m.vcs.Set(float64(p.vcs)))
	emit(m.ivcs.Set(float64(p.ivcs)))
	// One source in both backends: cgroup.procs/cgroup.threads (exact)
	// or the /proc walk.
	emit(m.processes.Set(float64(p.procs)))
	emit(m.threads.Set(float64(p.threads)))
	for _, g := range s.groups {
		g.g.collect(emit)
	}
	if s.tcpDiag != nil {
		s.tcpDiag.collect(emit)
	}
}

// plainMetrics are the collector's own series, made once (see
// internal/constmetric): building label pairs anew at every sample was
// most of its allocations.
type plainMetrics struct {
	info, groupOn               *constmetric.Vec
	success, cpuUser, cpuSystem *constmetric.Metric
	rss, rssPeak, diskRead      *constmetric.Metric
	diskWrite, vcs, ivcs        *constmetric.Metric
	processes, threads          *constmetric.Metric
}

// metrics returns the series, making them at the first call (with the
// session's lock held).
func (c *collector) metrics() *plainMetrics {
	if c.m != nil {
		return c.m
	}
	ctr := func(d *prometheus.Desc, lv ...string) *constmetric.Metric {
		return constmetric.New(d, prometheus.CounterValue, lv...)
	}
	g := func(d *prometheus.Desc) *constmetric.Metric { return constmetric.New(d, prometheus.GaugeValue) }
	c.m = &plainMetrics{
		info:      constmetric.NewVec(c.info, prometheus.GaugeValue),
		groupOn:   constmetric.NewVec(c.groupOn, prometheus.GaugeValue),
		success:   g(c.success),
		cpuUser:   ctr(c.cpu, "user"),
		cpuSystem: ctr(c.cpu, "system"),
		rss:       g(c.rss),
		rssPeak:   g(c.rssPeak),
		diskRead:  ctr(c.diskRead),
		diskWrite: ctr(c.diskWrite),
		vcs:       ctr(c.cs, "voluntary"),
		ivcs:      ctr(c.cs, "involuntary"),
		processes: g(c.processes),
		threads:   g(c.threads),
	}
	return c.m
}
