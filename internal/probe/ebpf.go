//go:build linux

package probe

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// histSlots mirrors HIST_SLOTS in bpf/statexec.bpf.c.
const histSlots = len(statexecTreeCounters{}.RunqHist)

// bpfProbes are the loaded and attached programs of one run.
type bpfProbes struct {
	objs  statexecObjects
	links []link.Link
	// runq: the kernel has sched_info, so run-queue waits are counted.
	runq bool
	cpus []statexecTreeCounters // reused per-CPU read buffer
}

// loadBPF loads the programs filtered to cg and attaches them: raw
// tracepoints globally (they filter by cgroup id), cgroup_skb on cg itself.
// On error everything opened so far is closed.
// The loading work is split in two halves that run concurrently: the scan
// of the kernel BTF and the parsing of our ELF object (a few ms each).
func loadBPF(cg *cgroup) (_ *bpfProbes, err error) {
	type layoutResult struct {
		l   kernelLayout
		err error
	}
	layoutC := make(chan layoutResult, 1)
	go func() {
		l, err := loadKernelLayout()
		layoutC <- layoutResult{l, err}
	}()

	// Only needed before memcg accounting of BPF memory (< 5.11). Its
	// error is ignored: without privileges it fails for the same reason
	// the load below will, and the load's error names the real cause.
	_ = rlimit.RemoveMemlock()
	spec, err := loadStatexec()
	lr := <-layoutC
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	if lr.err != nil {
		return nil, lr.err
	}
	layout := lr.l
	for name, value := range map[string]any{
		"target_cgid":          cg.id,
		"off_sum_exec_runtime": layout.SumExecRuntime,
		"off_nvcsw":            layout.Nvcsw,
		"off_nivcsw":           layout.Nivcsw,
		"off_state":            layout.State,
		"off_pid":              layout.Pid,
		"off_tgid":             layout.Tgid,
		"off_cgroups":          layout.Cgroups,
		"off_dfl_cgrp":         layout.DflCgrp,
		"off_kn":               layout.Kn,
		"off_kn_id":            layout.KnID,
		"have_sched_info":      layout.HaveSchedInfo,
		"off_run_delay":        layout.RunDelay,
		"off_pcount":           layout.Pcount,
		"have_mm_peak":         layout.HaveMmPeak,
		"off_mm":               layout.Mm,
		"off_hiwater_rss":      layout.HiwaterRss,
		"off_rss_stat":         layout.RssStat,
		"off_pcpu_count":       layout.PcpuCount,
		"size_pcpu":            layout.PcpuSize,
		"page_size":            uint64(os.Getpagesize()),
	} {
		v, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("BPF object has no variable %s", name)
		}
		if err := v.Set(value); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	b := &bpfProbes{runq: layout.HaveSchedInfo}
	if err := spec.LoadAndAssign(&b.objs, nil); err != nil {
		if errors.Is(err, os.ErrPermission) {
			// cilium's message suggests raising RLIMIT_MEMLOCK, which
			// is not the cause on kernels that account BPF memory.
			return nil, fmt.Errorf("load BPF: %w (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)", os.ErrPermission)
		}
		return nil, fmt.Errorf("load BPF: %w", err)
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()

	for _, t := range []struct {
		prog *ebpf.Program
		name string
	}{
		{b.objs.OnSchedSwitch, "sched_switch"},
		{b.objs.OnSchedProcessFork, "sched_process_fork"},
		{b.objs.OnSchedProcessExit, "sched_process_exit"},
	} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: t.name, Program: t.prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", t.name, err)
		}
		b.links = append(b.links, l)
	}
	for _, a := range []struct {
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{b.objs.CountEgress, ebpf.AttachCGroupInetEgress},
		{b.objs.CountIngress, ebpf.AttachCGroupInetIngress},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.path, Attach: a.attach, Program: a.prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", a.prog, err)
		}
		b.links = append(b.links, l)
	}
	return b, nil
}

// read sums the per-CPU counters.
func (b *bpfProbes) read() (statexecTreeCounters, error) {
	var sum statexecTreeCounters
	if err := b.objs.Counters.Lookup(uint32(0), &b.cpus); err != nil {
		return sum, fmt.Errorf("read BPF counters: %w", err)
	}
	for i := range b.cpus {
		c := &b.cpus[i]
		sum.TxBytes += c.TxBytes
		sum.TxPackets += c.TxPackets
		sum.RxBytes += c.RxBytes
		sum.RxPackets += c.RxPackets
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
	return sum, nil
}

// Close detaches and unloads everything. Idempotent.
func (b *bpfProbes) Close() error {
	var errs []error
	for _, l := range b.links {
		errs = append(errs, l.Close())
	}
	b.links = nil
	errs = append(errs, b.objs.Close())
	b.objs = statexecObjects{}
	return errors.Join(errs...)
}
