// SPDX-License-Identifier: GPL-2.0
//
// statexec probes: per-process-tree network and scheduler counters.
//
// Every program counts only tasks (or sockets) of one cgroup v2 directory,
// the one statexec created for the command. User space reads the per-CPU
// counters and sums them; nothing here uses atomics or ring buffers, so the
// cost on the hot paths (sched_switch, every skb) is a few loads and adds.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "GPL";

// Set by the loader before load: the cgroup id (inode number of the cgroup
// directory) of the command's cgroup. As a .rodata constant the verifier
// sees it, and it costs no map lookup.
const volatile __u64 target_cgid = 0;

#define TASK_RUNNING 0
#define TASK_DEAD 0x80

// Run-queue latency histogram: slot k counts waits in [2^k, 2^(k+1)) ns,
// the last slot everything from 2^31 ns (~2.1 s) on.
#define HIST_SLOTS 32

// One per-CPU instance; user space sums the CPUs. Field order is the Go
// struct's (bpf2go generates it from BTF).
struct tree_counters {
	__u64 tx_bytes;
	__u64 tx_packets;
	__u64 rx_bytes;
	__u64 rx_packets;
	__u64 cpu_ns;
	__u64 voluntary_switches;
	__u64 involuntary_switches;
	__u64 runq_wait_ns;
	__u64 runq_waits;
	__u64 tasks_created;
	__u64 procs_created;
	__u64 tasks_exited;
	__u64 procs_exited;
	__u64 runq_hist[HIST_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tree_counters);
} counters SEC(".maps");

// Per-task state, freed by the kernel with the task: far cheaper than a
// pid-keyed hash map and cannot leak entries of exited tasks.
struct task_state {
	// sum_exec_runtime seen at the task's previous switch-out.
	__u64 last_runtime;
	// When the task became runnable (wakeup or preemption); 0 = not queued.
	__u64 queued_at;
	// nvcsw/nivcsw seen at the previous switch-out.
	__u64 last_nvcsw;
	__u64 last_nivcsw;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_state);
} task_states SEC(".maps");

static __always_inline struct tree_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// Inlined by the verifier into a register move: it only marks the pointer
// untrusted, see in_target.
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

// Plain BTF pointer loads: much cheaper at run time than BPF_CORE_READ
// chains of bpf_probe_read_kernel calls. They go through an untrusted alias
// of the (trusted) tracepoint argument: for every pointer loaded from a
// trusted pointer the verifier searches the whole kernel BTF by name (up to
// four linear scans, for __safe_trusted/__safe_rcu variants), which made
// loading these programs cost tens of milliseconds. Untrusted loads are
// the same exception-handled loads at run time.
static __always_inline bool in_target(struct task_struct *t)
{
	struct task_struct *u =
		bpf_rdonly_cast(t, bpf_core_type_id_kernel(struct task_struct));

	return u->cgroups->dfl_cgrp->kn->id == target_cgid;
}

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return log2_u32(hi) + 32;
	return log2_u32(v);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct tree_counters *c = NULL;
	struct task_state *st;
	__u64 now = 0;

	// prev is current: the helper is the cheapest way to its cgroup.
	if (bpf_get_current_cgroup_id() == target_cgid) {
		c = get_counters();
		if (!c)
			return 0;
		st = bpf_task_storage_get(&task_states, prev, 0,
					  BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (st) {
			// The scheduler updated sum_exec_runtime and the task's
			// nvcsw/nivcsw just before this tracepoint, so deltas
			// are exactly what ends here. A task's first deltas are
			// its whole history: it was born in the cgroup
			// (CLONE_INTO_CGROUP / fork) at zero. A dead task
			// switches out one last time, which accounts its final
			// slice too.
			__u64 rt = prev->se.sum_exec_runtime;
			__u64 nv = prev->nvcsw;
			__u64 niv = prev->nivcsw;
			__u64 dv = nv - st->last_nvcsw;

			c->cpu_ns += rt - st->last_runtime;
			st->last_runtime = rt;
			// Counting the kernel's own counters, not classifying
			// this switch from its arguments: a task going to sleep
			// with a signal pending is switched out as runnable but
			// counted voluntary by the kernel (and by rusage).
			// An exiting thread's final switch comes after its
			// counts were folded into the process (release_task),
			// so rusage never sees it; skip it to match. A group
			// leader's final switch normally precedes its reaping
			// by the parent, so rusage has it.
			if ((prev_state & TASK_DEAD) && prev->pid != prev->tgid && dv)
				dv--;
			c->voluntary_switches += dv;
			c->involuntary_switches += niv - st->last_nivcsw;
			st->last_nvcsw = nv;
			st->last_nivcsw = niv;
		} else if (preempt || prev_state == TASK_RUNNING) {
			c->involuntary_switches++;
		} else if (!(prev_state & TASK_DEAD)) {
			c->voluntary_switches++;
		}
		if (st && (preempt || prev_state == TASK_RUNNING)) {
			// Still runnable: it waits on the run queue from now on.
			now = bpf_ktime_get_ns();
			st->queued_at = now;
		}
	}

	if (in_target(next)) {
		st = bpf_task_storage_get(&task_states, next, 0, 0);
		if (!st || !st->queued_at)
			return 0;
		if (!c) {
			c = get_counters();
			if (!c)
				return 0;
		}
		if (!now)
			now = bpf_ktime_get_ns();
		__u64 wait = now - st->queued_at;
		__u32 slot = log2_u64(wait);

		st->queued_at = 0;
		c->runq_wait_ns += wait;
		c->runq_waits++;
		if (slot >= HIST_SLOTS)
			slot = HIST_SLOTS - 1;
		c->runq_hist[slot]++;
	}
	return 0;
}

static __always_inline void mark_queued(struct task_struct *p)
{
	struct task_state *st;

	if (!in_target(p))
		return;
	st = bpf_task_storage_get(&task_states, p, 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (st)
		st->queued_at = bpf_ktime_get_ns();
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *p)
{
	mark_queued(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_sched_wakeup_new, struct task_struct *p)
{
	mark_queued(p);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_sched_process_fork, struct task_struct *parent,
	     struct task_struct *child)
{
	struct tree_counters *c;

	// The child is already attached to its cgroup here, so this also
	// counts the command's root, born into the cgroup by clone3.
	if (!in_target(child))
		return 0;
	c = get_counters();
	if (!c)
		return 0;
	c->tasks_created++;
	if (child->pid == child->tgid)
		c->procs_created++;
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_sched_process_exit, struct task_struct *p, bool group_dead)
{
	struct tree_counters *c;

	if (!in_target(p))
		return 0;
	c = get_counters();
	if (!c)
		return 0;
	c->tasks_exited++;
	if (group_dead)
		c->procs_exited++;
	return 0;
}

// cgroup_skb programs run only for sockets of the attached cgroup (and its
// descendants), so they need no filter. skb->len includes the IP header;
// gso_segs turns one GSO/GRO super-packet into its wire packet count.
static __always_inline __u64 segs(struct __sk_buff *skb)
{
	__u32 n = skb->gso_segs;

	return n ? n : 1;
}

SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
	struct tree_counters *c = get_counters();

	if (c) {
		c->tx_bytes += skb->len;
		c->tx_packets += segs(skb);
	}
	return 1; // allow
}

SEC("cgroup_skb/ingress")
int count_ingress(struct __sk_buff *skb)
{
	struct tree_counters *c = get_counters();

	if (c) {
		c->rx_bytes += skb->len;
		c->rx_packets += segs(skb);
	}
	return 1; // allow
}
