// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "sched": what the scheduler's per-task counters say
// about the command's tree. No program runs per context switch: user space
// sums the live tasks' own counters at each sample (/proc/<tid>/schedstat
// and status, exact at the instant of the read), and the programs here run
// only on the rare process events: a task's exit banks its final counters
// (its /proc files go with it), a fork counts a task, an exit notes the
// process's memory peak.

#include "common.h"

char __license[] SEC("license") = "GPL";

// Offsets (see common.h).
const volatile __u32 off_sum_exec_runtime = 0; // task_struct.se.sum_exec_runtime
const volatile __u32 off_nvcsw = 0;
const volatile __u32 off_nivcsw = 0;
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
// statexec's PID namespace (the device, in the kernel's encoding, and
// inode of /proc/self/ns/pid): cgroup.threads lists tids as seen there.
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

// One per-CPU instance; user space sums the CPUs. Field order is the Go
// struct's (bpf2go generates it from BTF). The exit bank: the sums of the
// counters of the tree's tasks that exited. The adds are atomic:
// sched_process_free runs from RCU callbacks, which may interrupt another
// of these programs on the same CPU (all run on rare events: no cost to
// speak of).
struct sched_counters {
	__u64 cpu_ns;               // se.sum_exec_runtime
	__u64 voluntary_switches;   // nvcsw
	__u64 involuntary_switches; // nivcsw
	__u64 runq_wait_ns;         // sched_info.run_delay
	__u64 runq_waits;           // sched_info.pcount
	__u64 tasks_created;
	__u64 tasks_exited;
	// Not a sum: the highest memory peak of one process at its exit
	// (user space takes the maximum over the CPUs).
	__u64 exit_rss_peak_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sched_counters);
} counters SEC(".maps");

// The tasks banked at exit, by tid, until the kernel frees them.
//
// A task is banked at sched_process_exit but leaves the cgroup's task
// list (cgroup_exit) a little later: until then user space would find it
// in cgroup.threads too and count it twice. User space reads the bank,
// then the keys of this map, then cgroup.threads, and skips the live tasks
// in the map.
//
// The values are not quite final at exit: the task still runs its exit
// path, and the scheduler folds a running task's current slice into
// sum_exec_runtime only at its next tick or switch (up to a tick late;
// all of a short-lived process's last slice). So each entry keeps what
// the bank has of the task, and the rest is added when it is known: at
// sched_process_free (after the task's last switch; an RCU grace period
// after it is reaped), or earlier by user space for statexec's own
// children, read from /proc while they are zombies. LRU: should entries
// pile up (zombies nobody reaps), the oldest make room and those tasks
// keep their values of exit.
struct exit_entry {
	__u64 task; // the task_struct, to tell a reused tid apart
	// The tid in statexec's PID namespace (as in cgroup.threads), 0 when
	// the task is in another one (the key is the kernel's global tid).
	__u32 ns_tid;
	// A thread (not a process): rusage has its context switches as of
	// its exit, so its entry's are not corrected afterwards.
	__u32 thread;
	// What the bank has of the task. nvcsw counts its last switch (to
	// TASK_DEAD) as done: see on_sched_process_exit.
	__u64 cpu_ns;
	__u64 nvcsw;
	__u64 nivcsw;
	__u64 run_delay;
	__u64 pcount;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct exit_entry);
} exited SEC(".maps");

// bpf_pidns_info's layout (UAPI), declared here: a member access of
// vmlinux.h's copy is a CO-RE relocation, and one relocation makes the
// loader decode the whole kernel BTF (~15 ms and several MiB a run).
struct pidns_info {
	__u32 pid;
	__u32 tgid;
};

static __always_inline struct sched_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
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
		__sync_fetch_and_add(&c->tasks_created, 1);
	return 0;
}

// The exiting task is current. Its counters are final but for its exit
// path and its current slice (see exited above).
//
// The memory peak: the peak of the process's own memory map (hiwater_rss,
// or the current RSS if higher: hiwater_rss is only updated lazily).
// Unlike rusage's maxrss, it does not include the map the process had
// before exec (statexec's own, for the command). Since Linux 6.16 this
// tracepoint fires before exit_mm(), so the map is still there; on older
// kernels mm is NULL here and no peak is recorded. The RSS counters are
// read without their per-CPU deltas: within 32 pages per counter and CPU.
SEC("raw_tp/sched_process_exit")
int on_sched_process_exit(__u64 *ctx)
{
	struct sched_counters *c;
	struct task_struct *task;
	struct exit_entry e = {};
	void *mm;

	if (bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	task = bpf_get_current_task_btf();
	__u32 tid = FIELD(int, task, off_pid);
	bool leader = tid == (__u32)FIELD(int, task, off_tgid);

	e.task = (__u64)task;
	e.thread = !leader;
	struct pidns_info ns = {};
	if (!bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, (void *)&ns, sizeof(ns)))
		e.ns_tid = ns.pid;
	e.cpu_ns = FIELD(__u64, task, off_sum_exec_runtime);
	e.nvcsw = FIELD(unsigned long, task, off_nvcsw);
	e.nivcsw = FIELD(unsigned long, task, off_nivcsw);
	if (have_sched_info) {
		e.run_delay = FIELD(__u64, task, off_run_delay);
		e.pcount = FIELD(unsigned long, task, off_pcount);
	}
	// A task's last switch (to TASK_DEAD) is voluntary and comes later.
	// rusage counts a process's (it precedes its reaping) but not a
	// thread's (it follows the folding of the thread's counts into its
	// process): the bank counts it now for a process, whose entry has
	// it as done so that the later corrections do not add it again.
	e.nvcsw++;

	// Entered before it is banked: a sample that sees it banked sees it
	// in the map, and never counts it live as well.
	bpf_map_update_elem(&exited, &tid, &e, BPF_ANY);
	c = get_counters();
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->cpu_ns, e.cpu_ns);
	__sync_fetch_and_add(&c->voluntary_switches, leader ? e.nvcsw : e.nvcsw - 1);
	__sync_fetch_and_add(&c->involuntary_switches, e.nivcsw);
	__sync_fetch_and_add(&c->runq_wait_ns, e.run_delay);
	__sync_fetch_and_add(&c->runq_waits, e.pcount);
	__sync_fetch_and_add(&c->tasks_exited, 1);

	if (!have_mm_peak)
		return 0;
	mm = FIELD(void *, task, off_mm);
	// Threads share the process's map: only the last one out (or a
	// single-threaded process) is worth a look, but any thread's view
	// is a lower bound of the same peak, so no need to tell them apart.
	if (!mm)
		return 0;
	__s64 file = FIELD(__s64, mm, off_rss_stat + 0 * size_pcpu + off_pcpu_count);
	__s64 anon = FIELD(__s64, mm, off_rss_stat + 1 * size_pcpu + off_pcpu_count);
	__s64 shmem = FIELD(__s64, mm, off_rss_stat + 3 * size_pcpu + off_pcpu_count);
	__s64 rss = (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
	__u64 pages = FIELD(unsigned long, mm, off_hiwater_rss);

	if ((__u64)rss > pages)
		pages = rss;
	if (pages * page_size > c->exit_rss_peak_bytes)
		c->exit_rss_peak_bytes = pages * page_size;
	return 0;
}

static __always_inline __u64 more(__u64 now, __u64 *had)
{
	__u64 d = now > *had ? now - *had : 0;

	*had += d;
	return d;
}

// The kernel frees a task an RCU grace period after it was reaped, long
// after its last switch: its counters are final. ctx: the task (not
// current).
SEC("raw_tp/sched_process_free")
int on_sched_process_free(__u64 *ctx)
{
	struct sched_counters *c;
	struct exit_entry *e;
	void *task = (void *)ctx[0];
	__u64 v = 0;
	__u32 tid = 0;

	if (bpf_probe_read_kernel(&tid, sizeof(tid), (char *)task + off_pid))
		return 0;
	e = bpf_map_lookup_elem(&exited, &tid);
	if (!e || e->task != (__u64)task)
		return 0;
	c = get_counters();
	if (c) {
		if (!bpf_probe_read_kernel(&v, sizeof(v), (char *)task + off_sum_exec_runtime))
			__sync_fetch_and_add(&c->cpu_ns, more(v, &e->cpu_ns));
		v = 0;
		if (!e->thread && !bpf_probe_read_kernel(&v, sizeof(unsigned long), (char *)task + off_nvcsw))
			__sync_fetch_and_add(&c->voluntary_switches, more(v, &e->nvcsw));
		v = 0;
		if (!e->thread && !bpf_probe_read_kernel(&v, sizeof(unsigned long), (char *)task + off_nivcsw))
			__sync_fetch_and_add(&c->involuntary_switches, more(v, &e->nivcsw));
		if (have_sched_info) {
			v = 0;
			if (!bpf_probe_read_kernel(&v, sizeof(v), (char *)task + off_run_delay))
				__sync_fetch_and_add(&c->runq_wait_ns, more(v, &e->run_delay));
			v = 0;
			if (!bpf_probe_read_kernel(&v, sizeof(unsigned long), (char *)task + off_pcount))
				__sync_fetch_and_add(&c->runq_waits, more(v, &e->pcount));
		}
	}
	bpf_map_delete_elem(&exited, &tid);
	return 0;
}
