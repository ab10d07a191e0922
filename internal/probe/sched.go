//go:build linux

package probe

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/prometheus/client_golang/prometheus"
)

// The BPF objects are generated and committed so that building statexec
// needs no clang. CI regenerates them and fails on a diff.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type sched_counters sched ../../bpf/sched.bpf.c -- -I../../bpf

// histSlots mirrors HIST_SLOTS in bpf/sched.bpf.c.
const histSlots = len(schedSchedCounters{}.RunqHist)

// Exposed bucket bounds of the run-queue latency histogram: the BPF slots
// are [2^k, 2^(k+1)) ns, so "le" bounds at powers of two are exact. Slots
// below 2^minLeLog2 ns fold into the first bucket, slots from 2^maxLeLog2
// ns on into +Inf: 1.024 us .. 1.07 s.
const (
	minLeLog2 = 10
	maxLeLog2 = 30
)

// schedGroup: on-CPU time, context switches, run-queue waits, task
// creations and memory peaks at exit, from raw tracepoints.
type schedGroup struct {
	objs  schedObjects
	links links
	// runq: the kernel has sched_info, so run-queue waits are counted.
	runq bool
	cpus []schedSchedCounters // reused per-CPU read buffer
	last schedSchedCounters

	cpu, cs, runqWait, runqLatency, forks *prometheus.Desc
}

func loadSchedGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadSched()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	vars := commonVariables(env.cg, l)
	for name, v := range map[string]any{
		"off_sum_exec_runtime": l.SumExecRuntime,
		"off_nvcsw":            l.Nvcsw,
		"off_nivcsw":           l.Nivcsw,
		"off_state":            l.State,
		"off_pid":              l.Pid,
		"off_tgid":             l.Tgid,
		"have_sched_info":      l.HaveSchedInfo,
		"off_run_delay":        l.RunDelay,
		"off_pcount":           l.Pcount,
		"have_mm_peak":         l.HaveMmPeak,
		"off_mm":               l.Mm,
		"off_hiwater_rss":      l.HiwaterRss,
		"off_rss_stat":         l.RssStat,
		"off_pcpu_count":       l.PcpuCount,
		"size_pcpu":            l.PcpuSize,
		"page_size":            uint64(os.Getpagesize()),
	} {
		vars[name] = v
	}
	if err := setVariables(spec, vars); err != nil {
		return nil, err
	}
	g := &schedGroup{runq: l.HaveSchedInfo}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if err := g.links.rawTracepoint(g.objs.OnSchedSwitch, "sched_switch"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnSchedProcessFork, "sched_process_fork"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnSchedProcessExit, "sched_process_exit"); err != nil {
		return nil, err
	}

	d := env.desc
	g.cpu = d("statexec_process_sched_cpu_seconds_total", "On-CPU time of the command's tree from the scheduler's sum_exec_runtime (eBPF sched_switch).")
	g.cs = d("statexec_process_sched_context_switches_total", "Context switches of the command's tree seen by the scheduler, by kind (voluntary or involuntary).", "kind")
	g.runqWait = d("statexec_process_sched_runqueue_wait_seconds_total", "Time tasks of the command's tree spent runnable but waiting for a CPU (wakeup, creation or preemption to switch-in; the kernel's sched_info run_delay).")
	g.runqLatency = d("statexec_process_sched_runqueue_latency_seconds", "Run-queue latency of the command's tree: each wait from becoming runnable (wakeup, creation or preemption) to running.")
	g.forks = d("statexec_process_forks_total", "Tasks (processes and threads) created in the command's tree, the command itself included.")
	return g, nil
}

func (g *schedGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF sched counters: %w", err)
	}
	var sum schedSchedCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		sum.CpuNs += c.CpuNs
		sum.VoluntarySwitches += c.VoluntarySwitches
		sum.InvoluntarySwitches += c.InvoluntarySwitches
		sum.RunqWaitNs += c.RunqWaitNs
		sum.RunqWaits += c.RunqWaits
		sum.TasksCreated += c.TasksCreated
		sum.ExitRssPeakBytes = max(sum.ExitRssPeakBytes, c.ExitRssPeakBytes)
		for j := range c.RunqHist {
			sum.RunqHist[j] += c.RunqHist[j]
		}
	}
	g.last = sum
	return nil
}

func (g *schedGroup) describe(ch chan<- *prometheus.Desc) {
	ch <- g.cpu
	ch <- g.cs
	ch <- g.forks
	if g.runq {
		ch <- g.runqWait
		ch <- g.runqLatency
	}
}

func (g *schedGroup) collect(ch chan<- prometheus.Metric) {
	b := &g.last
	counter(ch, g.cpu, float64(b.CpuNs)/1e9)
	counter(ch, g.cs, float64(b.VoluntarySwitches), "voluntary")
	counter(ch, g.cs, float64(b.InvoluntarySwitches), "involuntary")
	counter(ch, g.forks, float64(b.TasksCreated))
	if !g.runq {
		return
	}
	counter(ch, g.runqWait, float64(b.RunqWaitNs)/1e9)
	count, buckets := runqBuckets(&b.RunqHist)
	ch <- prometheus.MustNewConstHistogram(g.runqLatency, count, float64(b.RunqWaitNs)/1e9, buckets)
}

func (g *schedGroup) summarize(s *Summary) {
	b := &g.last
	s.HaveScheduler = true
	// The scheduler's counts are exact; /proc misses dead threads.
	s.VoluntaryCS, s.InvoluntaryCS = b.VoluntarySwitches, b.InvoluntarySwitches
	s.RunqueueWaitP50 = histQuantile(&b.RunqHist, 0.50)
	s.RunqueueWaitP99 = histQuantile(&b.RunqHist, 0.99)
	s.PeakRSSBytes = max(s.PeakRSSBytes, b.ExitRssPeakBytes)
}

// exitRSSPeak is the highest memory peak of one process at its exit.
func (g *schedGroup) exitRSSPeak() uint64 { return g.last.ExitRssPeakBytes }

func (g *schedGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
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
