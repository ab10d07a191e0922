// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "sched": the command tree's on-CPU time, context
// switches, run-queue waits, task creations and memory peaks at exit, from
// the scheduler's own per-task counters.

#include "common.h"

char __license[] SEC("license") = "GPL";

// Offsets (see common.h).
const volatile __u32 off_sum_exec_runtime = 0; // task_struct.se.sum_exec_runtime
const volatile __u32 off_nvcsw = 0;
const volatile __u32 off_nivcsw = 0;
const volatile __u32 off_state = 0; // task_struct.__state
const volatile __u32 off_pid = 0;
const volatile __u32 off_tgid = 0;
const volatile bool have_sched_info = false;
const volatile __u32 off_run_delay = 0; // task_struct.sched_info.run_delay
const volatile __u32 off_pcount = 0;    // task_struct.sched_info.pcount
const volatile bool have_mm_peak = false;  // rss_stat is percpu_counter[]
const volatile __u32 off_mm = 0;           // task_struct.mm
const volatile __u32 off_hiwater_rss = 0;  // mm_struct.hiwater_rss
const volatile __u32 off_rss_stat = 0;     // mm_struct.rss_stat
const volatile __u32 off_pcpu_count = 0;   // percpu_counter.count
const volatile __u32 size_pcpu = 0;        // sizeof(struct percpu_counter)
const volatile __u64 page_size = 4096;

#define TASK_RUNNING 0
#define TASK_DEAD 0x80

// Run-queue latency histogram: slot k counts waits in [2^k, 2^(k+1)) ns,
// the last slot everything from 2^31 ns (~2.1 s) on.
#define HIST_SLOTS 32

// One per-CPU instance; user space sums the CPUs. Field order is the Go
// struct's (bpf2go generates it from BTF).
struct sched_counters {
	__u64 cpu_ns;
	__u64 voluntary_switches;
	__u64 involuntary_switches;
	__u64 runq_wait_ns;
	__u64 runq_waits;
	__u64 tasks_created;
	// Not a sum: the highest memory peak of one process at its exit
	// (user space takes the maximum over the CPUs).
	__u64 exit_rss_peak_bytes;
	__u64 runq_hist[HIST_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sched_counters);
} counters SEC(".maps");

// Per-task state, freed by the kernel with the task: far cheaper than a
// pid-keyed hash map and cannot leak entries of exited tasks. It holds the
// task's own counters as seen at its previous switch-out: the programs
// only add up the kernel's exact per-task counters' deltas.
struct task_state {
	__u64 last_runtime;   // se.sum_exec_runtime
	__u64 last_nvcsw;     // nvcsw
	__u64 last_nivcsw;    // nivcsw
	__u64 last_run_delay; // sched_info.run_delay
	__u64 last_pcount;    // sched_info.pcount
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_state);
} task_states SEC(".maps");

static __always_inline struct sched_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// Everything per-task is taken at switch-out, from the kernel's own
// per-task counters, which the scheduler updated just before this
// tracepoint: sum_exec_runtime (on-CPU time), nvcsw/nivcsw (what rusage
// reports) and sched_info (run-queue wait before the slice that ends now,
// from rq_clock). That needs no clock read (bpf_ktime_get_ns is expensive
// in VMs), no pairing of events, no program on the wakeup tracepoints and
// nothing for tasks outside the cgroup but one helper call. A task's first
// deltas are its whole history: it was born in the cgroup at zero
// (CLONE_INTO_CGROUP / fork). A dead task switches out one last time,
// which accounts its final slice too.
//
// Raw tracepoint: attached by name, so the loader needs no kernel BTF.
// ctx: preempt, prev, next[, prev_state since 5.18: not used].
SEC("raw_tp/sched_switch")
int on_sched_switch(__u64 *ctx)
{
	struct sched_counters *c;
	struct task_state *st;
	struct task_struct *prev;
	bool preempt = ctx[0];

	// prev is current: the helper is the cheapest way to its cgroup.
	if (bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	c = get_counters();
	if (!c)
		return 0;
	// The same task as ctx[1], as a pointer the verifier trusts (task
	// storage needs one, and it allows plain loads of its fields).
	prev = bpf_get_current_task_btf();
	__u32 state = FIELD(__u32, prev, off_state);
	st = bpf_task_storage_get(&task_states, prev, 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		// No memory for the task's state: classify this switch alone.
		if (preempt || state == TASK_RUNNING)
			c->involuntary_switches++;
		else if (!(state & TASK_DEAD))
			c->voluntary_switches++;
		return 0;
	}

	__u64 rt = FIELD(__u64, prev, off_sum_exec_runtime);
	__u64 nv = FIELD(unsigned long, prev, off_nvcsw);
	__u64 niv = FIELD(unsigned long, prev, off_nivcsw);
	__u64 dv = nv - st->last_nvcsw;

	c->cpu_ns += rt - st->last_runtime;
	st->last_runtime = rt;

	// The kernel's counters rather than a classification of this switch
	// from its arguments: a task going to sleep with a signal pending is
	// switched out runnable but counted voluntary (by rusage too).
	// An exiting thread's final switch comes after its counts were
	// folded into its process (release_task), so rusage never sees it;
	// skip it to match. A group leader's final switch normally precedes
	// its reaping by the parent, so rusage has that one.
	if ((state & TASK_DEAD) && dv &&
	    FIELD(int, prev, off_pid) != FIELD(int, prev, off_tgid))
		dv--;
	c->voluntary_switches += dv;
	c->involuntary_switches += niv - st->last_nivcsw;
	st->last_nvcsw = nv;
	st->last_nivcsw = niv;

	// run_delay sums the waits from becoming runnable (wakeup, new task,
	// preemption) to running; pcount counts the arrivals, normally
	// exactly one since the previous switch-out.
	if (have_sched_info) {
		__u64 delay = FIELD(__u64, prev, off_run_delay);
		__u64 pc = FIELD(unsigned long, prev, off_pcount);
		__u64 dw = delay - st->last_run_delay;
		__u64 dp = pc - st->last_pcount;

		st->last_run_delay = delay;
		st->last_pcount = pc;
		if (dp) {
			__u32 slot = log2_u64(dp == 1 ? dw : dw / dp);

			if (slot >= HIST_SLOTS)
				slot = HIST_SLOTS - 1;
			c->runq_wait_ns += dw;
			c->runq_waits += dp;
			c->runq_hist[slot] += dp;
		}
	}
	return 0;
}

// ctx: parent, child. The child is already attached to its cgroup here, so
// this also counts the command's root, born into the cgroup by clone3
// from a parent outside it.
SEC("raw_tp/sched_process_fork")
int on_sched_process_fork(__u64 *ctx)
{
	struct sched_counters *c;
	void *child = (void *)ctx[1];

	if (!in_target(child))
		return 0;
	c = get_counters();
	if (c)
		c->tasks_created++;
	return 0;
}

// A process's memory peak, taken as it exits: the peak of its own memory
// map (hiwater_rss, or the current RSS if higher: hiwater_rss is only
// updated lazily). Unlike rusage's maxrss, it does not include the map the
// process had before exec (statexec's own, for the command). Since Linux
// 6.16 this tracepoint fires before exit_mm(), so the map is still there;
// on older kernels mm is NULL here and nothing is recorded. The RSS
// counters are read without their per-CPU deltas: within 32 pages per
// counter and CPU.
SEC("raw_tp/sched_process_exit")
int on_sched_process_exit(__u64 *ctx)
{
	struct sched_counters *c;
	struct task_struct *task;
	void *mm;

	if (!have_mm_peak || bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	task = bpf_get_current_task_btf();
	mm = FIELD(void *, task, off_mm);
	if (!mm)
		return 0;
	__s64 file = FIELD(__s64, mm, off_rss_stat + 0 * size_pcpu + off_pcpu_count);
	__s64 anon = FIELD(__s64, mm, off_rss_stat + 1 * size_pcpu + off_pcpu_count);
	__s64 shmem = FIELD(__s64, mm, off_rss_stat + 3 * size_pcpu + off_pcpu_count);
	__s64 rss = (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
	__u64 pages = FIELD(unsigned long, mm, off_hiwater_rss);

	if ((__u64)rss > pages)
		pages = rss;
	c = get_counters();
	if (c && pages * page_size > c->exit_rss_peak_bytes)
		c->exit_rss_peak_bytes = pages * page_size;
	return 0;
}
