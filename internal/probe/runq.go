//go:build linux

package probe

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type runq_counters runq ../../bpf/runq.bpf.c -- -I../../bpf

// histSlots mirrors HIST_SLOTS in bpf/runq.bpf.c.
const histSlots = len(runqRunqCounters{}.Hist)

// Exposed bucket bounds of the run-queue latency histogram: the BPF slots
// are [2^k, 2^(k+1)) ns, so "le" bounds at powers of two are exact. Slots
// below 2^minLeLog2 ns fold into the first bucket, slots from 2^maxLeLog2
// ns on into +Inf: 1.024 us .. 1.07 s.
const (
	minLeLog2 = 10
	maxLeLog2 = 30
)

// runqGroup is the opt-in run-queue latency histogram
// (SE_RUNQUEUE_HISTOGRAM): each wait needs a program on every context
// switch of the host, which the default groups do without.
type runqGroup struct {
	objs  runqObjects
	links links
	cpus  []runqRunqCounters // reused per-CPU read buffer
	last  runqRunqCounters

	latency *prometheus.Desc
	hist    *log2Hist
}

func loadRunqGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadRunq()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	if !l.HaveSchedInfo {
		return nil, errors.New("the kernel has no sched_info (CONFIG_SCHED_INFO)")
	}
	vars := commonVariables(env.cg, l)
	vars["off_run_delay"] = l.RunDelay
	vars["off_pcount"] = l.Pcount
	if err := setVariables(spec, vars); err != nil {
		return nil, err
	}
	g := &runqGroup{}
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
	g.latency = env.desc("statexec_process_sched_runqueue_latency_seconds", "Run-queue latency of the command's tree: each wait from becoming runnable (wakeup, creation or preemption) to running (opt-in: SE_RUNQUEUE_HISTOGRAM).")
	return g, nil
}

func (g *runqGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF runq counters: %w", err)
	}
	var sum runqRunqCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		sum.WaitNs += c.WaitNs
		sum.Waits += c.Waits
		for j := range c.Hist {
			sum.Hist[j] += c.Hist[j]
		}
	}
	g.last = sum
	return nil
}

func (g *runqGroup) describe(ch chan<- *prometheus.Desc) { ch <- g.latency }

func (g *runqGroup) collect(emit func(prometheus.Metric)) {
	if g.hist == nil {
		g.hist = newLog2Hist(g.latency, len(g.last.Hist), minLeLog2, maxLeLog2)
	}
	emit(g.hist.set(g.last.Hist[:], float64(g.last.WaitNs)/1e9))
}

func (g *runqGroup) summarize(s *Summary) {
	s.HaveScheduler = true
	s.RunqueueWaitP50 = histQuantile(&g.last.Hist, 0.50)
	s.RunqueueWaitP99 = histQuantile(&g.last.Hist, 0.99)
}

func (g *runqGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
