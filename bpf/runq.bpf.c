// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "runq" (opt-in: SE_RUNQUEUE_HISTOGRAM=1): the
// run-queue latency histogram of the command's tree. A histogram needs
// each wait on its own, so this group runs a program on every context
// switch of the host (sched_switch), which the default groups avoid: it
// costs even when the switching task is not the command's.

#include "common.h"

char __license[] SEC("license") = "GPL";

// Offsets (see common.h).
const volatile __u32 off_run_delay = 0; // task_struct.sched_info.run_delay
const volatile __u32 off_pcount = 0;    // task_struct.sched_info.pcount

// Run-queue latency histogram: slot k counts waits in [2^k, 2^(k+1)) ns,
// the last slot everything from 2^31 ns (~2.1 s) on.
#define HIST_SLOTS 32

// One per-CPU instance; user space sums the CPUs.
struct runq_counters {
	__u64 wait_ns; // the histogram's sum
	__u64 waits;   // its count
	__u64 hist[HIST_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct runq_counters);
} counters SEC(".maps");

// Per-task state, freed by the kernel with the task: far cheaper than a
// pid-keyed hash map and cannot leak entries of exited tasks. It holds the
// task's sched_info as seen at its previous switch-out.
struct runq_task {
	__u64 last_run_delay; // sched_info.run_delay
	__u64 last_pcount;    // sched_info.pcount
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct runq_task);
} runq_tasks SEC(".maps");

// At switch-out, the kernel's sched_info of the task that leaves the CPU
// was updated at its switch-in: run_delay sums the waits from becoming
// runnable (wakeup, creation or preemption) to running, pcount counts the
// arrivals, normally exactly one since the previous switch-out. Their
// deltas are the waits since, with no clock read and no program on the
// wakeup tracepoints. A task's first deltas are its whole history: it was
// born in the cgroup at zero (CLONE_INTO_CGROUP / fork).
//
// Raw tracepoint: attached by name, so the loader needs no kernel BTF.
SEC("raw_tp/sched_switch")
int on_sched_switch(__u64 *ctx)
{
	struct runq_counters *c;
	struct runq_task *st;
	struct task_struct *prev;
	__u32 zero = 0;

	// prev is current: the helper is the cheapest way to its cgroup.
	if (bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return 0;
	// The same task as ctx[1], as a pointer the verifier trusts (task
	// storage needs one, and it allows plain loads of its fields).
	prev = bpf_get_current_task_btf();
	st = bpf_task_storage_get(&runq_tasks, prev, 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
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
		c->wait_ns += dw;
		c->waits += dp;
		c->hist[slot] += dp;
	}
	return 0;
}
