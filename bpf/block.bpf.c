// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "block": latency of the command tree's block I/O
// requests, from issue to the device to completion (what biolatency
// measures by default), as log2 histograms by operation.
//
// Attribution: a request is the run's when it was created by a task of the
// run's cgroup (block_io_start fires in the submitter's context, Linux 6.5
// on), or, failing that (older kernels, or a request the tracepoint did
// not mark), when a task of the cgroup issues it. Requests the kernel
// creates on the command's behalf from its own threads (writeback of
// buffered writes by the flusher, journal commits) are not the run's.

#include "common.h"

char __license[] SEC("license") = "GPL";

const volatile __u32 off_rq_cmd_flags = 0; // request.cmd_flags

// Set by the loader after attaching: block_io_start is not attached (an
// older kernel), so requests are the run's when one of its tasks issues
// them. Not with block_io_start: a task dispatching from the queue issues
// other cgroups' requests too (measured: 4-12 per 512 O_DIRECT reads).
volatile bool issue_fallback = false;

// request.cmd_flags: the operation in the low REQ_OP_BITS bits.
#define REQ_OP_MASK 0xff
#define REQ_OP_READ 0
#define REQ_OP_WRITE 1

// Slot k counts latencies in [2^k, 2^(k+1)) ns, the last slot everything
// from 2^35 ns (~34 s) on.
#define BLOCK_HIST_SLOTS 36

// One per-CPU instance; user space sums the CPUs. Index 0 read, 1 write.
struct block_counters {
	__u64 hist[2][BLOCK_HIST_SLOTS];
	__u64 sum_ns[2];
	// How requests were attributed (for the README's limits and the
	// tests): issued requests marked at creation, and (fallback only)
	// issued by a task of the cgroup.
	__u64 issued_marked;
	__u64 issued_by_cgroup;
	// Diagnostics (logged by the tests): requests completed without a
	// recorded issue, failed map updates, requests timed.
	__u64 completed_unissued;
	__u64 update_failed;
	__u64 completed_timed;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct block_counters);
} counters SEC(".maps");

// The run's requests in flight, by request pointer: 0 while created but
// not issued, then the issue time. LRU: an entry whose completion was
// never seen (a request merged away after creation) cannot fill it.
// The loader sizes it from the host's block queues (blockInflightSize:
// an LRU map is preallocated, and 16384 entries took ~3 ms a run).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} inflight SEC(".maps");

static __always_inline struct block_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// raw_tp args: ctx[0] is the struct request pointer in all three.
SEC("raw_tp/block_io_start")
int on_block_io_start(__u64 *ctx)
{
	__u64 rq = ctx[0], zero = 0;

	struct block_counters *c;

	if (bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	// BPF_ANY: a new request replaces an entry left by an earlier one
	// at the same address whose completion was not seen.
	if (bpf_map_update_elem(&inflight, &rq, &zero, BPF_ANY)) {
		c = get_counters();
		if (c)
			__sync_fetch_and_add(&c->update_failed, 1);
	}
	return 0;
}

SEC("raw_tp/block_rq_issue")
int on_block_rq_issue(__u64 *ctx)
{
	__u64 rq = ctx[0], now = bpf_ktime_get_ns();
	bool ours = issue_fallback && bpf_get_current_cgroup_id() == target_cgid;
	__u64 *ts = bpf_map_lookup_elem(&inflight, &rq);
	struct block_counters *c;

	if (!ts && !ours)
		return 0;
	c = get_counters();
	if (c) {
		if (ts)
			__sync_fetch_and_add(&c->issued_marked, 1);
		if (ours)
			__sync_fetch_and_add(&c->issued_by_cgroup, 1);
	}
	if (ts)
		*ts = now; // a requeued request is timed from its last issue
	else if (bpf_map_update_elem(&inflight, &rq, &now, BPF_ANY) && c)
		__sync_fetch_and_add(&c->update_failed, 1);
	return 0;
}

SEC("raw_tp/block_rq_complete")
int on_block_rq_complete(__u64 *ctx)
{
	__u64 rq = ctx[0], delta;
	__u64 *ts = bpf_map_lookup_elem(&inflight, &rq);
	struct block_counters *c;
	__u32 flags = 0, op, slot;

	if (!ts)
		return 0;
	if (*ts == 0) { // completed without being issued: not timed
		bpf_map_delete_elem(&inflight, &rq);
		c = get_counters();
		if (c)
			__sync_fetch_and_add(&c->completed_unissued, 1);
		return 0;
	}
	delta = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(&inflight, &rq);
	bpf_probe_read_kernel(&flags, sizeof(flags), (char *)rq + off_rq_cmd_flags);
	switch (flags & REQ_OP_MASK) {
	case REQ_OP_READ:
		op = 0;
		break;
	case REQ_OP_WRITE:
		op = 1;
		break;
	default: // flush, discard, ...: not a read or write of data
		return 0;
	}
	c = get_counters();
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->completed_timed, 1);
	slot = log2_u64(delta);
	if (slot >= BLOCK_HIST_SLOTS)
		slot = BLOCK_HIST_SLOTS - 1;
	__sync_fetch_and_add(&c->hist[op][slot], 1);
	__sync_fetch_and_add(&c->sum_ns[op], delta);
	return 0;
}
