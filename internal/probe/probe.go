//go:build linux

// Package probe measures the command's own process tree: it places the
// command in a cgroup v2 directory of its own and counts what the tree does,
// with eBPF programs where the kernel and privileges allow, and from /proc
// (plain mode) everywhere.
//
// API CONTRACT (used by internal/modes; keep the exported names stable):
//
//	s, err := probe.Start(probe.Options{Mode: probe.ModeAuto, Notice: os.Stderr})
//	// err != nil only when nothing can run (e.g. Mode == ModeEBPF and BPF fails).
//	defer s.Close()
//	reg.MustRegister(s.Collector())
//	s.PrepareCommand(cmd.SysProcAttr) // puts the child into the cgroup (if any)
//	cmd.Start(); s.CommandStarted(cmd.Process.Pid)
//	waitid(WNOWAIT) → s.ProcessExiting(pid) for each exited child, then reap it
//	s.CommandEnded() // once the command was reaped
//	sum := s.Summary()
//
// Metrics (every one carries Options.ConstLabels):
//
//	statexec_probe_info{backend="ebpf"|"plain"}                  gauge, always 1
//	statexec_collector_success{collector="probe"}                gauge, 0 when a read failed
//	statexec_probe_group_enabled{group="sched"|"net"|...}         gauge, 1 when the eBPF group is loaded
//	statexec_process_cpu_seconds_total{mode="user"|"system"}     cgroup cpu.stat, else /proc
//	statexec_process_memory_rss_bytes                            sum over live processes
//	statexec_process_memory_rss_peak_bytes
//	statexec_process_disk_read_bytes_total                       cgroup io.stat, else /proc/PID/io read_bytes
//	statexec_process_disk_write_bytes_total                      cgroup io.stat, else /proc/PID/io write_bytes
//	statexec_process_context_switches_total{kind="voluntary"|"involuntary"}  /proc
//	statexec_process_processes, statexec_process_threads         cgroup.procs/threads, else /proc
//
// and with the eBPF backend, by probe group (group.go; each group is one
// bpf/<group>.bpf.c beside <group>.go):
//
//	statexec_process_network_{sent,received}_{bytes,packets}_total       cgroup_skb
//	statexec_process_sched_cpu_seconds_total                     sum_exec_runtime of live tasks + exit bank
//	statexec_process_sched_context_switches_total{kind=...}      nvcsw/nivcsw of live tasks + exit bank
//	statexec_process_sched_runqueue_wait_seconds_total           run_delay of live tasks + exit bank
//	statexec_process_sched_runqueue_latency_seconds              histogram, le 1.024us..1.07s (opt-in group runq)
//	statexec_process_forks_total                                 sched_process_fork
//	statexec_process_tcp_*                                       group tcp (tcp.go): sock_ops + reset tracepoints;
//	                                                             without it, live-socket gauges from sock_diag (tcpdiag.go)
//	statexec_process_network_peer_{sent,received}_bytes_total{peer,protocol}  net (16 named + other)
//	statexec_process_network_drops_total{reason}                 drop: kfree_skb, BTF enum names
//	statexec_process_dns_queries_total, ..._responses_total{rcode}  dns: cgroup_skb, UDP port 53
//	statexec_process_dns_latency_seconds                         histogram, le 16.4us..4.29s
//	statexec_process_disk_io_latency_seconds{op=read|write}      histogram, group block
//
// and in both backends, from the cgroup itself (sources.go):
//
//	statexec_process_pressure_{cpu,io,memory}_{waiting,stalled}_seconds_total  PSI some/full
//	statexec_process_page_faults_total{kind}, statexec_process_cpu_migrations_total  perf_sw
//	statexec_process_{cpu_cycles,instructions,cache_misses,branch_misses}_total    perf_hw (PMU)
//	statexec_process_perf_events_running_ratio{group}, statexec_probe_group_disabled_info{group,reason}
//
// The counters start at the command's start and keep what exited
// processes did.
package probe

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Mode selects the backend (SE_PROBES).
type Mode string

const (
	ModeAuto  Mode = "auto"
	ModeEBPF  Mode = "ebpf"
	ModePlain Mode = "plain"
)

// Backend names reported by Session.Backend and statexec_probe_info.
const (
	BackendEBPF  = "ebpf"
	BackendPlain = "plain"
)

// Options configure a probe session.
type Options struct {
	Mode Mode
	// Notice receives the one-line fallback notice in auto mode.
	Notice io.Writer
	// ConstLabels are added to every metric of the collector
	// (instance, job, role and SE_LABEL_ labels).
	ConstLabels prometheus.Labels
	// RunqueueHistogram loads the opt-in probe group "runq" (the
	// run-queue latency histogram, a program on every context switch).
	RunqueueHistogram bool
}

// Summary is what the end-of-run summary prints.
type Summary struct {
	Backend         string // "ebpf" or "plain"
	UserCPU         time.Duration
	SystemCPU       time.Duration
	PeakRSSBytes    uint64
	SentBytes       uint64 // eBPF only
	ReceivedBytes   uint64 // eBPF only
	VoluntaryCS     uint64
	InvoluntaryCS   uint64
	RunqueueWaitP50 time.Duration // eBPF only
	RunqueueWaitP99 time.Duration // eBPF only
	HaveNetwork     bool
	HaveScheduler   bool
	// Lines are more summary lines, each formatted by the probe group
	// (or plain source) that owns its figures, printed in order after
	// the fixed ones, e.g. "tcp: 12 connections opened, 1 failed (...)".
	Lines []string
}

// Session is one run's probe.
type Session struct {
	opts    Options
	backend string
	cg      *cgroup // nil: no cgroup (not root, no cgroup v2)
	// groups are the eBPF probe groups that loaded (none: plain backend).
	groups []loadedGroup
	coll   *collector
	// tcpDiag is the TCP view from sock_diag when the tcp group is off
	// (plain backend, or no sock_ops); nil with the group on or without
	// a cgroup.
	tcpDiag *tcpDiag

	mu       sync.Mutex
	plain    *plainSampler
	snap     snapshot // last sample; what Collect reports after Close
	closed   bool
	closeErr error
}

// snapshot is one sample of the plain values; the groups keep their own.
type snapshot struct {
	plain plainTotals
	// err is why the last collection failed (a BPF map or cgroup file
	// could not be read), nil when it succeeded.
	err error
}

// rssPeakLocked is the tree's memory peak: sampled (plain) or a process's
// peak at its exit (eBPF), whichever is higher.
func (s *Session) rssPeakLocked() uint64 {
	peak := s.snap.plain.rssPeak
	if g, ok := s.group("sched").(*schedGroup); ok {
		peak = max(peak, g.exitRSSPeak())
	}
	return peak
}

// group returns the loaded group of that name, nil when it is off.
func (s *Session) group(name string) group {
	for _, g := range s.groups {
		if g.spec.name == name {
			return g.g
		}
	}
	return nil
}

// Start creates the session: the run's cgroup and, unless Mode is plain,
// the eBPF probes. In auto mode any eBPF failure prints one notice line and
// the session continues with the plain backend; in ebpf mode it is returned.
func Start(opts Options) (*Session, error) {
	switch opts.Mode {
	case "":
		opts.Mode = ModeAuto
	case ModeAuto, ModeEBPF, ModePlain:
	default:
		return nil, fmt.Errorf("probe: unknown mode %q (want auto, ebpf or plain)", opts.Mode)
	}
	s := &Session{opts: opts, backend: BackendPlain}

	// Leftovers of a statexec killed with SIGKILL; not being able to
	// clean them must not stop this run.
	_ = CleanStale("")

	cg, cgErr := createCgroup()
	if cgErr == nil {
		s.cg = cg
	}
	s.coll = newCollector(s)
	if opts.Mode != ModePlain {
		if err := s.loadGroups(cgErr); err != nil {
			if opts.Mode == ModeEBPF {
				_ = s.Close()
				return nil, fmt.Errorf("probe: %w", err)
			}
			if opts.Notice != nil {
				fmt.Fprintf(opts.Notice, "statexec: eBPF probes unavailable (%s); per-process network and scheduler metrics are off, using plain /proc metrics\n", oneLine(err))
			}
		}
	}
	s.plain = newPlainSampler(s.cg)
	// Group tcp's plain-mode view.
	if s.cg != nil && s.group("tcp") == nil {
		s.tcpDiag = newTCPDiag(s.cg, s.coll.desc)
	}
	// benchhost: cgroup sources that are not BPF groups (pressure stall,
	// perf events) run in both backends, sampled and exported like one.
	s.groups = append(s.groups, s.cgroupSources()...)
	return s, nil
}

// loadGroups loads the eBPF probe groups. It fails, with every group
// closed, when a required group cannot load; an optional group that
// cannot is left out with one notice line naming it.
func (s *Session) loadGroups(cgErr error) error {
	if cgErr != nil {
		return fmt.Errorf("create cgroup: %w", cgErr)
	}
	env := newLoadEnv(s.cg, s.coll.desc)
	env.runqHistogram = s.opts.RunqueueHistogram
	loaded := loadGroups(env)
	var failed error
	allFailed := true
	for _, lg := range loaded {
		allFailed = allFailed && lg.err != nil
	}
	for _, lg := range loaded {
		if lg.err != nil && lg.spec.required && failed == nil {
			failed = lg.err
			// When every group failed, the cause is common (no
			// privileges, no kernel BTF): naming a group is noise.
			if !allFailed {
				failed = fmt.Errorf("%s: %w", lg.spec.name, lg.err)
			}
		}
	}
	for _, lg := range loaded {
		switch {
		case lg.err == nil && failed != nil:
			_ = lg.g.close()
		case lg.err == nil:
			s.groups = append(s.groups, lg)
		case failed == nil && s.opts.Notice != nil:
			fmt.Fprintf(s.opts.Notice, "statexec: eBPF probe group %s unavailable (%s); its metrics are off\n", lg.spec.name, oneLine(lg.err))
		}
	}
	if failed != nil {
		return failed
	}
	s.backend = BackendEBPF
	return nil
}

// oneLine keeps the notice on one line: verifier errors span many.
func oneLine(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	const maxLen = 300
	if len(msg) > maxLen {
		msg = msg[:maxLen] + "..."
	}
	return msg
}

// oneLineErr joins a multi-error's lines with "; ".
func oneLineErr(err error) error {
	return errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
}

// Backend returns "ebpf" or "plain".
func (s *Session) Backend() string { return s.backend }

// CgroupPath is the run's cgroup directory, "" when there is none.
func (s *Session) CgroupPath() string {
	if s.cg == nil {
		return ""
	}
	return s.cg.path
}

// PrepareCommand sets attr so that the child starts inside the cgroup
// (clone3 with CLONE_INTO_CGROUP): every descendant is in it from its
// first instruction, so nothing escapes the counting.
//
// It also notes statexec's children's rusage before the start: the
// command may be reaped before CommandStarted is called.
func (s *Session) PrepareCommand(attr *syscall.SysProcAttr) {
	s.mu.Lock()
	if !s.closed {
		s.plain.beforeStart()
	}
	s.mu.Unlock()
	if s.cg == nil || attr == nil {
		return
	}
	attr.UseCgroupFD = true
	attr.CgroupFD = s.cg.fd()
}

// CommandStarted records the root pid of the tree.
func (s *Session) CommandStarted(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.plain.started(pid)
}

// ProcessExiting takes the final counters of pid, a child of statexec
// (the command, or a descendant reparented to statexec) that exited and is
// not reaped yet. Reaping removes its /proc files, and nothing else keeps
// what it (and the children it reaped itself) read and wrote.
func (s *Session) ProcessExiting(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.plain.exiting(pid)
	for _, g := range s.groups {
		if pe, ok := g.g.(processExiter); ok {
			pe.processExiting(pid)
		}
	}
}

// processExiter is a probe group that takes the final counters of
// statexec's exited children before they are reaped.
type processExiter interface{ processExiting(pid int) }

// CommandEnded is called after the root process was reaped. It takes one
// last sample; the values stay collectable.
func (s *Session) CommandEnded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.plain.ended()
	for _, g := range s.groups {
		if e, ok := g.g.(commandEnder); ok {
			e.commandEnded()
		}
	}
	s.sampleLocked()
}

// commandEnder is a probe group with something to settle before the
// last sample of the command.
type commandEnder interface{ commandEnded() }

// sample returns fresh values, or the final ones once closed.
func (s *Session) sample() snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.sampleLocked()
	}
	return s.snap
}

func (s *Session) sampleLocked() {
	var errs []error
	var err error
	s.snap.plain, err = s.plain.sample()
	errs = append(errs, err)
	// A failed read keeps the previous values: counters must not drop
	// to zero.
	for _, g := range s.groups {
		errs = append(errs, g.g.sample())
	}
	if s.tcpDiag != nil && s.plain.root != 0 {
		// The cgroup's processes as the plain sampler read them at
		// this sample: one read of cgroup.procs for both.
		errs = append(errs, s.tcpDiag.sample(s.plain.cgPids, s.plain.cgErr))
	}
	s.snap.err = errors.Join(errs...)
}

// Collector exposes the per-process metrics.
func (s *Session) Collector() prometheus.Collector { return s.coll }

// Summary returns totals for the end-of-run summary.
func (s *Session) Summary() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.sampleLocked()
	}
	p := s.snap.plain
	sum := Summary{
		Backend:       s.backend,
		UserCPU:       time.Duration(p.userSec * float64(time.Second)),
		SystemCPU:     time.Duration(p.sysSec * float64(time.Second)),
		PeakRSSBytes:  s.rssPeakLocked(),
		VoluntaryCS:   p.vcs,
		InvoluntaryCS: p.ivcs,
	}
	for _, g := range s.groups {
		g.g.summarize(&sum)
	}
	return sum
}

// histQuantile estimates a quantile of the log2 histogram, interpolating
// linearly inside the bucket [2^k, 2^(k+1)) ns like histogram_quantile.
func histQuantile(h *[histSlots]uint64, q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for k, n := range h {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			if k == 0 {
				// 0 or 1 ns: the run-queue clock did not move
				// (woken and run in the same scheduler pass).
				return 0
			}
			lo := float64(uint64(1) << k)
			hi := float64(uint64(1) << (k + 1))
			return time.Duration(lo + (hi-lo)*(rank-cum)/float64(n))
		}
		cum += float64(n)
	}
	return time.Duration(uint64(1) << histSlots)
}

// Close kills what is left in the cgroup, removes it (with any
// sub-cgroups the command made), and detaches BPF. The last sample stays
// collectable. Idempotent. The error is one line.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.closeErr
	}
	if s.plain != nil && s.plain.root != 0 {
		s.sampleLocked()
	}
	s.closed = true
	if s.plain != nil {
		s.plain.rd.closeAll()
	}
	if s.tcpDiag != nil {
		s.tcpDiag.fds.close()
	}
	var errs []error
	var closeErrs []error
	for _, g := range s.groups {
		closeErrs = append(closeErrs, g.g.close())
	}
	if err := errors.Join(closeErrs...); err != nil {
		errs = append(errs, fmt.Errorf("probe: close BPF: %w", oneLineErr(err)))
	}
	if s.cg != nil {
		if err := s.cg.remove(); err != nil {
			errs = append(errs, fmt.Errorf("probe: remove cgroup: %w", err))
		}
	}
	// One line: statexec prints it as is.
	switch len(errs) {
	case 1:
		s.closeErr = errs[0]
	case 2:
		s.closeErr = fmt.Errorf("%w; %w", errs[0], errs[1])
	}
	return s.closeErr
}
