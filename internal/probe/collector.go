//go:build linux

package probe

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// Exposed bucket bounds of the run-queue latency histogram: the BPF slots
// are [2^k, 2^(k+1)) ns, so "le" bounds at powers of two are exact. Slots
// below 2^minLeLog2 ns fold into the first bucket, slots from 2^maxLeLog2
// ns on into +Inf: 1.024 us .. 1.07 s.
const (
	minLeLog2 = 10
	maxLeLog2 = 30
)

// collector exports a Session's samples. The metric set is fixed when the
// session starts: the eBPF families exist only with the eBPF backend.
type collector struct {
	s *Session

	info, success *prometheus.Desc

	cpu, rss, rssPeak, diskRead, diskWrite, cs *prometheus.Desc
	processes, threads                         *prometheus.Desc

	netSentBytes, netRecvBytes, netSentPkts, netRecvPkts *prometheus.Desc
	schedCPU, schedCS, runqWait, runqLatency, forks      *prometheus.Desc
}

func newCollector(s *Session) *collector {
	l := s.opts.ConstLabels
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, l)
	}
	c := &collector{
		s:    s,
		info: d("statexec_probe_info", "Which probe backend measured the command's process tree (ebpf or plain).", "backend"),
		// The host collectors emit the same family, each with its own
		// collector label as a constant label: name, help and label
		// kind must match theirs, or the registry refuses the pair.
		success: prometheus.NewDesc("statexec_collector_success", "Whether the collector's last collection succeeded (1) or failed (0).", nil, withLabel(l, "collector", "probe")),

		cpu:       d("statexec_process_cpu_seconds_total", "CPU time of the command's process tree, exited processes included, by mode (cgroup cpu.stat or /proc).", "mode"),
		rss:       d("statexec_process_memory_rss_bytes", "Resident set size summed over the live processes of the command's tree."),
		rssPeak:   d("statexec_process_memory_rss_peak_bytes", "Highest resident set size of the command's tree seen so far (sampled sum, a single process's VmHWM, its peak at exit with eBPF, or the command's maxrss when above statexec's own)."),
		diskRead:  d("statexec_process_disk_read_bytes_total", "Bytes the command's tree caused to be read from storage (cgroup io.stat where the io controller is on, else /proc/PID/io read_bytes)."),
		diskWrite: d("statexec_process_disk_write_bytes_total", "Bytes the command's tree caused to be written to storage (cgroup io.stat where the io controller is on, else /proc/PID/io write_bytes)."),
		cs:        d("statexec_process_context_switches_total", "Context switches of the command's tree from /proc/PID/status, by kind (voluntary or involuntary).", "kind"),
		processes: d("statexec_process_processes", "Live processes in the command's tree."),
		threads:   d("statexec_process_threads", "Live threads in the command's tree."),
	}
	if s.bpf != nil {
		c.netSentBytes = d("statexec_process_network_sent_bytes_total", "Bytes sent by sockets of the command's tree, IP and transport headers included (cgroup_skb egress).")
		c.netRecvBytes = d("statexec_process_network_received_bytes_total", "Bytes received by sockets of the command's tree, IP and transport headers included (cgroup_skb ingress).")
		c.netSentPkts = d("statexec_process_network_sent_packets_total", "Packets sent by sockets of the command's tree (GSO segments counted).")
		c.netRecvPkts = d("statexec_process_network_received_packets_total", "Packets received by sockets of the command's tree (GRO segments counted).")
		c.schedCPU = d("statexec_process_sched_cpu_seconds_total", "On-CPU time of the command's tree from the scheduler's sum_exec_runtime (eBPF sched_switch).")
		c.schedCS = d("statexec_process_sched_context_switches_total", "Context switches of the command's tree seen by the scheduler, by kind (voluntary or involuntary).", "kind")
		c.runqWait = d("statexec_process_sched_runqueue_wait_seconds_total", "Time tasks of the command's tree spent runnable but waiting for a CPU (wakeup, creation or preemption to switch-in; the kernel's sched_info run_delay).")
		c.runqLatency = d("statexec_process_sched_runqueue_latency_seconds", "Run-queue latency of the command's tree: each wait from becoming runnable (wakeup, creation or preemption) to running.")
		c.forks = d("statexec_process_forks_total", "Tasks (processes and threads) created in the command's tree, the command itself included.")
	}
	return c
}

// withLabel returns l plus one more label, leaving l as it is.
func withLabel(l prometheus.Labels, name, value string) prometheus.Labels {
	out := prometheus.Labels{name: value}
	for k, v := range l {
		out[k] = v
	}
	return out
}

func (c *collector) descs() []*prometheus.Desc {
	all := []*prometheus.Desc{c.info, c.success, c.cpu, c.rss, c.rssPeak, c.diskRead, c.diskWrite, c.cs, c.processes, c.threads}
	if c.s.bpf != nil {
		all = append(all, c.netSentBytes, c.netRecvBytes, c.netSentPkts, c.netRecvPkts,
			c.schedCPU, c.schedCS, c.forks)
		if c.s.bpf.runq {
			all = append(all, c.runqWait, c.runqLatency)
		}
	}
	return all
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It samples once per call: a few
// small /proc and cgroup files per process and one per-CPU map lookup.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.sample()
	p := snap.plain
	counter := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}

	gauge(c.info, 1, c.s.backend)
	success := 1.0
	if snap.err != nil {
		success = 0
	}
	gauge(c.success, success)
	counter(c.cpu, p.userSec, "user")
	counter(c.cpu, p.sysSec, "system")
	gauge(c.rss, float64(p.rss))
	gauge(c.rssPeak, float64(snap.rssPeak()))
	counter(c.diskRead, float64(p.readBytes))
	counter(c.diskWrite, float64(p.writeBytes))
	counter(c.cs, float64(p.vcs), "voluntary")
	counter(c.cs, float64(p.ivcs), "involuntary")

	// One source in both backends: cgroup.procs/cgroup.threads (exact)
	// or the /proc walk.
	gauge(c.processes, float64(p.procs))
	gauge(c.threads, float64(p.threads))
	if c.s.bpf == nil {
		return
	}
	b := snap.bpf
	counter(c.netSentBytes, float64(b.TxBytes))
	counter(c.netRecvBytes, float64(b.RxBytes))
	counter(c.netSentPkts, float64(b.TxPackets))
	counter(c.netRecvPkts, float64(b.RxPackets))
	counter(c.schedCPU, float64(b.CpuNs)/1e9)
	counter(c.schedCS, float64(b.VoluntarySwitches), "voluntary")
	counter(c.schedCS, float64(b.InvoluntarySwitches), "involuntary")
	counter(c.forks, float64(b.TasksCreated))
	if !c.s.bpf.runq {
		return
	}
	counter(c.runqWait, float64(b.RunqWaitNs)/1e9)
	count, buckets := runqBuckets(&b.RunqHist)
	ch <- prometheus.MustNewConstHistogram(c.runqLatency, count, float64(b.RunqWaitNs)/1e9, buckets)
}

// runqBuckets turns the log2 slots into cumulative Prometheus buckets.
func runqBuckets(h *[histSlots]uint64) (uint64, map[float64]uint64) {
	buckets := make(map[float64]uint64, maxLeLog2-minLeLog2+1)
	var cum uint64
	for k, n := range h {
		cum += n
		// Slot k ends at 2^(k+1) ns.
		if e := k + 1; e >= minLeLog2 && e <= maxLeLog2 {
			buckets[math.Ldexp(1, e)/1e9] = cum
		}
	}
	return cum, buckets
}
