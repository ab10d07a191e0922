//go:build linux

package probe

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The BPF objects are generated and committed so that building statexec
// needs no clang. CI regenerates them and fails on a diff.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type sched_counters -type exit_entry sched ../../bpf/sched.bpf.c -- -I../../bpf

// schedGroup: on-CPU time, context switches and run-queue waits of the
// command's tree, exact at every sample, with no program per context
// switch: the live threads' own counters (liveTasks, /proc) plus the exit
// bank (a raw tracepoint on sched_process_exit); task creations and
// memory peaks at exit, from raw tracepoints on those rare events.
//
// Threads of sub-cgroups the command makes are not counted (neither live
// nor at exit): the programs and cgroup.threads see the run's own
// directory only.
type schedGroup struct {
	objs  schedObjects
	links links
	live  *liveTasks
	// runq: the kernel has sched_info, so run-queue waits are counted.
	runq bool
	cpus []schedSchedCounters // reused per-CPU read buffer
	// exited: the tids (as statexec sees them) of the tasks banked and
	// not yet freed, skipped in the live list (see bpf/sched.bpf.c).
	exited map[uint32]struct{}
	// corrected: what user space added to the bank for statexec's own
	// children (processExiting).
	corrected taskTotals
	last      schedTotals

	cpu, cs, runqWait, forks *prometheus.Desc
	series                   seriesSet
}

// schedTotals is what the group exports: never lower than the sample
// before (a task that exits while a sample runs is missed by that sample,
// never counted twice).
type schedTotals struct {
	taskTotals
	tasksCreated uint64
	exitRSSPeak  uint64
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
	pidns := ownPidNamespace()
	vars := commonVariables(env.cg, l)
	for name, v := range map[string]any{
		"off_sum_exec_runtime": l.SumExecRuntime,
		"off_nvcsw":            l.Nvcsw,
		"off_nivcsw":           l.Nivcsw,
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
		"pidns_dev":            pidns.dev,
		"pidns_ino":            pidns.ino,
	} {
		vars[name] = v
	}
	if err := setVariables(spec, vars); err != nil {
		return nil, err
	}
	g := &schedGroup{runq: l.HaveSchedInfo, exited: map[uint32]struct{}{}}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if g.live, err = newLiveTasks(env.cg.path); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnSchedProcessFork, "sched_process_fork"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnSchedProcessExit, "sched_process_exit"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnSchedProcessFree, "sched_process_free"); err != nil {
		return nil, err
	}

	d := env.desc
	g.cpu = d("statexec_process_sched_cpu_seconds_total", "On-CPU time of the command's tree from the scheduler's sum_exec_runtime (live threads at the sample, exited ones at exit).")
	g.cs = d("statexec_process_sched_context_switches_total", "Context switches of the command's tree seen by the scheduler, by kind (voluntary or involuntary).", "kind")
	g.runqWait = d("statexec_process_sched_runqueue_wait_seconds_total", "Time tasks of the command's tree spent runnable but waiting for a CPU (wakeup, creation or preemption to switch-in; the kernel's sched_info run_delay).")
	g.forks = d("statexec_process_forks_total", "Tasks (processes and threads) created in the command's tree, the command itself included.")
	return g, nil
}

// sample reads, in this order, the exit bank, the set of banked tids and
// the live threads not in that set (see bpf/sched.bpf.c). A task banked before the first read
// is in the set by the second (the program marks it first), so it is not
// counted live too; one banked in between is in the set but not in the
// bank read: missed by this sample only. Exported values never go back.
func (g *schedGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF sched counters: %w", err)
	}
	var bank schedSchedCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		bank.CpuNs += c.CpuNs
		bank.VoluntarySwitches += c.VoluntarySwitches
		bank.InvoluntarySwitches += c.InvoluntarySwitches
		bank.RunqWaitNs += c.RunqWaitNs
		bank.RunqWaits += c.RunqWaits
		bank.TasksCreated += c.TasksCreated
		bank.ExitRssPeakBytes = max(bank.ExitRssPeakBytes, c.ExitRssPeakBytes)
	}
	clear(g.exited)
	var tid uint32
	var e schedExitEntry
	it := g.objs.Exited.Iterate()
	for it.Next(&tid, &e) {
		g.exited[e.nsTid(tid)] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read BPF exited tasks: %w", err)
	}
	live, err := g.live.read(g.exited)
	if err != nil {
		return err
	}
	t := live
	t.add(g.corrected)
	t.add(taskTotals{
		cpuNs:      bank.CpuNs,
		runDelayNs: bank.RunqWaitNs,
		pcount:     bank.RunqWaits,
		nvcsw:      bank.VoluntarySwitches,
		nivcsw:     bank.InvoluntarySwitches,
	})
	p := &g.last
	p.cpuNs = max(p.cpuNs, t.cpuNs)
	p.runDelayNs = max(p.runDelayNs, t.runDelayNs)
	p.pcount = max(p.pcount, t.pcount)
	p.nvcsw = max(p.nvcsw, t.nvcsw)
	p.nivcsw = max(p.nivcsw, t.nivcsw)
	p.tasksCreated = max(p.tasksCreated, bank.TasksCreated)
	p.exitRSSPeak = max(p.exitRSSPeak, bank.ExitRssPeakBytes)
	return nil
}

func (g *schedGroup) describe(ch chan<- *prometheus.Desc) {
	ch <- g.cpu
	ch <- g.cs
	ch <- g.forks
	if g.runq {
		ch <- g.runqWait
	}
}

func (g *schedGroup) collect(emit func(prometheus.Metric)) {
	b, s := &g.last, &g.series
	emit(s.counter(g.cpu).With0().Set(float64(b.cpuNs) / 1e9))
	emit(s.counter(g.cs).With1("voluntary").Set(float64(b.nvcsw)))
	emit(s.counter(g.cs).With1("involuntary").Set(float64(b.nivcsw)))
	emit(s.counter(g.forks).With0().Set(float64(b.tasksCreated)))
	if g.runq {
		emit(s.counter(g.runqWait).With0().Set(float64(b.runDelayNs) / 1e9))
	}
}

func (g *schedGroup) summarize(s *Summary) {
	b := &g.last
	// The scheduler's counts are exact; /proc misses dead threads.
	s.VoluntaryCS, s.InvoluntaryCS = b.nvcsw, b.nivcsw
	s.PeakRSSBytes = max(s.PeakRSSBytes, b.exitRSSPeak)
	if g.runq && b.pcount > 0 {
		s.Lines = append(s.Lines, fmt.Sprintf("run-queue wait in total: %s over %d waits (mean %s)",
			time.Duration(b.runDelayNs).Round(time.Microsecond), b.pcount,
			time.Duration(b.runDelayNs/b.pcount).Round(time.Microsecond)))
	}
}

// processExiting brings the bank's values of pid, a child of statexec
// that exited and is not reaped yet, up to its final counters: as a
// zombie it has switched out for the last time, and /proc still has it.
// The kernel frees it (sched_process_free, which would add the same) only
// an RCU grace period after the reaping, after the run's last sample.
func (g *schedGroup) processExiting(pid int) {
	// The map's keys are the kernel's global tids, pid is statexec's.
	var key, tid uint32
	var e schedExitEntry
	found := false
	it := g.objs.Exited.Iterate()
	for !found && it.Next(&key, &e) {
		found = e.nsTid(key) == uint32(pid)
	}
	if !found {
		return // not banked (yet): counted live
	}
	tid = uint32(pid)
	t, ok := g.live.readOnce(tid)
	if !ok {
		return
	}
	more := func(now uint64, had *uint64) uint64 {
		d := now - min(now, *had)
		*had += d
		return d
	}
	c := taskTotals{
		cpuNs:      more(t.cpuNs, &e.CpuNs),
		runDelayNs: more(t.runDelayNs, &e.RunDelay),
		pcount:     more(t.pcount, &e.Pcount),
	}
	if e.Thread == 0 { // as sched_process_free does
		c.nvcsw, c.nivcsw = more(t.nvcsw, &e.Nvcsw), more(t.nivcsw, &e.Nivcsw)
	}
	g.corrected.add(c)
	// Final now: sched_process_free finds nothing to add, and the
	// entry no longer holds up commandEnded. (Should the read have come
	// before the zombie's very last switch, that switch's few
	// microseconds are lost.)
	_ = g.objs.Exited.Delete(key)
}

// maxFreeWait bounds commandEnded's wait. An RCU grace period is a few
// milliseconds on an idle machine.
const maxFreeWait = 20 * time.Millisecond

// commandEnded waits, at most maxFreeWait, for the kernel to free the
// tasks that exited last (typically a process's other threads, which
// exit with it), so that the run's last sample has their last slices
// (up to a tick each). Entries of statexec's own children are final
// already (processExiting deleted them): a command whose threads were
// all gone before it exited does not wait.
func (g *schedGroup) commandEnded() {
	deadline := time.Now().Add(maxFreeWait)
	var key uint32
	for g.objs.Exited.NextKey(nil, &key) == nil && time.Now().Before(deadline) {
		time.Sleep(500 * time.Microsecond)
	}
}

// nsTid is the entry's tid as statexec (and cgroup.threads) sees it.
// Without one (the task was in a PID namespace of its own), the global
// tid is right only when statexec runs in the initial namespace.
func (e *schedExitEntry) nsTid(key uint32) uint32 {
	if e.NsTid != 0 {
		return e.NsTid
	}
	return key
}

type pidNamespace struct{ dev, ino uint64 }

// ownPidNamespace identifies statexec's PID namespace for
// bpf_get_ns_current_pid_tgid: the nsfs device in the kernel's dev_t
// encoding (major << 20 | minor) and the inode. Zero when unknown: the
// helper then fails and the programs fall back to global tids.
func ownPidNamespace() pidNamespace {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return pidNamespace{}
	}
	dev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	return pidNamespace{dev: dev, ino: st.Ino}
}

// exitRSSPeak is the highest memory peak of one process at its exit.
func (g *schedGroup) exitRSSPeak() uint64 { return g.last.exitRSSPeak }

func (g *schedGroup) close() error {
	err := g.links.close()
	if g.live != nil {
		err = errors.Join(err, g.live.close())
	}
	return errors.Join(err, g.objs.Close())
}
