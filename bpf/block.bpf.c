// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "block": latency of the command tree's block I/O
// requests, from their creation to their completion (the time the
// command waited for them, the I/O scheduler's queue included: what
// iostat's r_await and w_await average), as log2 histograms by operation.
//
// Attribution: a request is the run's when it was created by a task of the
// run's cgroup (block_io_start fires in the submitter's context, Linux 6.5
// on). On older kernels, without block_io_start, a request is the run's
// when a task of the cgroup issues it (block_rq_issue), and it is timed
// from its issue. Requests the kernel creates on the command's behalf
// from its own threads (writeback of buffered writes by the flusher,
// journal commits) are not the run's.
//
// Two programs a request (creation, completion), not three: each costs
// ~100-200 ns here, and a 4 KiB O_DIRECT read on this VM's disk takes
// ~40 us.

#include "common.h"

char __license[] SEC("license") = "GPL";

const volatile __u32 off_rq_cmd_flags = 0; // request.cmd_flags


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
	// tests): created by a task of the cgroup, and (fallback only)
	// issued by one.
	__u64 started_marked;
	__u64 issued_by_cgroup;
	// Diagnostics (logged by the tests): requests of the run whose slot
	// another one of the run took before they completed (not timed),
	// requests timed.
	__u64 evicted;
	__u64 completed_timed;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct block_counters);
} counters SEC(".maps");

// The run's requests in flight: a table indexed by a hash of the request
// pointer, two slots (ways) per index, each the request it holds and the
// time it was created (or issued, without block_io_start). Not a hash map: a map update
// and delete per request, and a lookup of every other request on the
// host at issue and completion, cost ~1.1 us a request here (2% of a
// 4 KiB O_DIRECT read on this VM's disk); two loads and a store per
// program cost a fraction of that. blk-mq requests live in preallocated
// pools, so a request whose completion was never seen (merged away after
// creation) leaves a slot that its address's next use clears. The loader
// sizes the table from the host's block queues (blockInflightSize) and
// sets slot_mask (entries - 1, entries a power of two).
struct rq_slot {
	__u64 rq;
	__u64 ts;
};

struct rq_pair {
	struct rq_slot way[2];
};

const volatile __u32 slot_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); // set by the loader
	__type(key, __u32);
	__type(value, struct rq_pair);
} inflight SEC(".maps");

static __always_inline struct block_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// pair_of: the two slots a request may be in (Fibonacci hashing of its
// address; requests are a few hundred bytes apart).
static __always_inline struct rq_pair *pair_of(__u64 rq)
{
	__u32 k = (__u32)((rq * 0x9E3779B97F4A7C15ULL) >> 32) & slot_mask;

	return bpf_map_lookup_elem(&inflight, &k);
}

// slot_in: the slot of p that holds rq, or NULL.
static __always_inline struct rq_slot *slot_in(struct rq_pair *p, __u64 rq)
{
	if (p->way[0].rq == rq)
		return &p->way[0];
	if (p->way[1].rq == rq)
		return &p->way[1];
	return 0;
}

// take puts rq with start time ts into p: its own slot, else a free one,
// else it evicts way 0's request (counted).
static __always_inline void take(struct rq_pair *p, __u64 rq, __u64 ts)
{
	struct rq_slot *s = slot_in(p, rq);
	struct block_counters *c;

	if (!s) {
		if (!p->way[0].rq)
			s = &p->way[0];
		else if (!p->way[1].rq)
			s = &p->way[1];
		else {
			s = &p->way[0];
			c = get_counters();
			if (c)
				__sync_fetch_and_add(&c->evicted, 1);
		}
	}
	// ts before rq: a completion racing for the slot's old request
	// fails its exchange of rq (see on_block_rq_complete).
	s->ts = ts;
	s->rq = rq;
}

// raw_tp args: ctx[0] is the struct request pointer in all three.
SEC("raw_tp/block_io_start")
int on_block_io_start(__u64 *ctx)
{
	__u64 rq = ctx[0];
	struct rq_pair *p = pair_of(rq);
	struct block_counters *c;
	struct rq_slot *s;

	if (!p)
		return 0;
	if (bpf_get_current_cgroup_id() != target_cgid) {
		// Another cgroup's request at an address the run's request
		// had (its completion was not seen): not the run's now.
		s = slot_in(p, rq);
		if (s)
			s->rq = 0;
		return 0;
	}
	take(p, rq, bpf_ktime_get_ns());
	c = get_counters();
	if (c)
		__sync_fetch_and_add(&c->started_marked, 1);
	return 0;
}

// Attached only where block_io_start is not (Linux < 6.5): with it, a
// task dispatching from the queue issues other cgroups' requests too
// (measured: 4-12 per 512 O_DIRECT reads), so issue is no attribution.
SEC("raw_tp/block_rq_issue")
int on_block_rq_issue(__u64 *ctx)
{
	__u64 rq = ctx[0];
	struct rq_pair *p;
	struct block_counters *c;

	if (bpf_get_current_cgroup_id() != target_cgid)
		return 0;
	p = pair_of(rq);
	if (!p)
		return 0;
	take(p, rq, bpf_ktime_get_ns()); // a requeued request: from its last issue
	c = get_counters();
	if (c)
		__sync_fetch_and_add(&c->issued_by_cgroup, 1);
	return 0;
}

SEC("raw_tp/block_rq_complete")
int on_block_rq_complete(__u64 *ctx)
{
	__u64 rq = ctx[0], delta, ts;
	struct rq_pair *p = pair_of(rq);
	struct block_counters *c;
	__u32 flags = 0, op, slot;
	struct rq_slot *s;

	if (!p)
		return 0;
	s = slot_in(p, rq);
	if (!s)
		return 0;
	ts = s->ts;
	// Claim the slot: another CPU may be taking it for a new request
	// (then rq changed and this completion is not timed).
	if (__sync_val_compare_and_swap(&s->rq, rq, 0) != rq)
		return 0;
	delta = bpf_ktime_get_ns() - ts;
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
