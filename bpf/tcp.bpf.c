// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "tcp": TCP health of the command tree's sockets.
// A sock_ops program attached to the run's cgroup (it runs only for that
// cgroup's sockets) counts connections opened and failed, connect times,
// retransmitted segments, retransmit timeouts, smoothed RTT samples and
// live sockets by state; two raw tracepoints count resets, attributed by
// the socket's own cgroup (they fire in softirq, where the current task is
// whoever happens to run).

#include "common.h"

char __license[] SEC("license") = "GPL";

// Offsets (see common.h).
const volatile __u32 off_sk_err = 0;   // sock.sk_err
const volatile __u32 off_sk_state = 0; // sock.__sk_common.skc_state

// Log2 histograms: slot k counts values in [2^k, 2^(k+1)) ns.
#define HIST_SLOTS 36

// TCP states (include/net/tcp_states.h); index 0 is unused.
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_NEW_SYN_RECV 12
#define TCP_STATES 13
// The gauge's slots: a power of two, so that a masked index is in bounds
// for the verifier whatever clang makes of the range checks.
#define STATE_SLOTS 16

// Connect failures by the socket's error, in this order (the Go side
// names them).
enum {
	FAIL_ECONNREFUSED,
	FAIL_ETIMEDOUT,
	FAIL_EHOSTUNREACH,
	FAIL_ENETUNREACH,
	FAIL_ECONNRESET,
	FAIL_OTHER,
	FAIL_KINDS,
};

// One per-CPU instance; user space sums the CPUs. Field order is the Go
// struct's (bpf2go generates it from BTF).
struct tcp_counters {
	__u64 opened_active;
	__u64 opened_passive;
	__u64 failed[FAIL_KINDS];
	__u64 retrans_segs;
	__u64 rto;
	__u64 resets_sent;
	__u64 resets_received;
	// Segments sent (tcp_sock.segs_out deltas, taken at each ACK with an
	// RTT sample and at state changes: behind by at most one RTT).
	__u64 segs_out;
	__u64 connect_ns;
	__u64 connect_hist[HIST_SLOTS];
	__u64 rtt_ns;
	__u64 rtt_hist[HIST_SLOTS];
	// Live sockets by state: +1 when a socket enters a state, -1 when it
	// leaves it, possibly on another CPU (so one CPU's slot may be
	// negative; the sum never is).
	__s64 states[STATE_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcp_counters);
} counters SEC(".maps");

// The peer of the last failed connect of each kind, for the summary.
struct tcp_peer {
	__u32 family;
	__u32 port; // as sock_ops gives it (see tcp.go)
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FAIL_KINDS);
	__type(key, __u32);
	__type(value, struct tcp_peer);
} fail_peers SEC(".maps");

// Per-socket state, freed by the kernel with the socket: the connect's
// start time and the state this socket is counted in (0: none), so that
// the gauge only ever takes back what it added.
struct sk_state {
	__u64 connect_start_ns;
	__u32 counted;
	__u32 segs_out; // tcp_sock.segs_out when last added to the counter
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_state);
} sk_states SEC(".maps");

static __always_inline struct tcp_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// bpf_sock_ops is UAPI with a fixed layout: read it at offsetof()
// constants, not as vmlinux.h members (CO-RE relocations, see common.h).
#define OPS_U32(ops, field) \
	(*(__u32 *)((char *)(ops) + __builtin_offsetof(struct bpf_sock_ops, field)))
#define OPS_ARG(ops, i) \
	(*(__u32 *)((char *)(ops) + __builtin_offsetof(struct bpf_sock_ops, args) + 4 * (i)))
#define OPS_SK(ops) \
	(*(struct bpf_sock **)((char *)(ops) + __builtin_offsetof(struct bpf_sock_ops, sk)))

// The adds are atomic although the slots are per-CPU: a softirq's
// callback can interrupt a process-context one on the same CPU (see
// net.bpf.c).
#define ADD(p, v) __sync_fetch_and_add(p, v)

// The count of a histogram is the sum of its slots (user space adds them).
static __always_inline void hist_add(__u64 *hist, __u64 *sum, __u64 ns)
{
	__u32 slot = log2_u64(ns);

	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	ADD(&hist[slot], 1);
	ADD(sum, ns);
}

// state_add adds v to a state's slot. The empty asm hides the caller's
// range check from clang, which would otherwise drop the mask and leave
// an index the verifier cannot bound.
static __always_inline void state_add(struct tcp_counters *c, __u32 state, __s64 v)
{
	asm volatile("" : "+r"(state));
	ADD(&c->states[state & (STATE_SLOTS - 1)], v);
}

// count_state moves the socket's gauge entry to state (TCP_CLOSE: out of
// the gauge). Full sockets in TIME_WAIT do not exist (the kernel hands
// that state to a mini socket, which runs no sock_ops), and request
// sockets (NEW_SYN_RECV) neither.
static __always_inline void count_state(struct tcp_counters *c, struct sk_state *st, __u32 state)
{
	__u32 old = st->counted;

	if (old == state)
		return;
	if (old > 0 && old < TCP_STATES)
		state_add(c, old, -1);
	if (state > 0 && state < TCP_STATES && state != TCP_CLOSE) {
		state_add(c, state, 1);
		st->counted = state;
	} else {
		st->counted = 0;
	}
}

// add_segs_out adds the segments the socket sent since the last call.
static __always_inline void add_segs_out(struct bpf_sock_ops *ops, struct tcp_counters *c, struct sk_state *st)
{
	__u32 now = OPS_U32(ops, segs_out);

	ADD(&c->segs_out, now - st->segs_out);
	st->segs_out = now;
}

static __always_inline struct sk_state *sk_state_of(struct bpf_sock_ops *ops, bool create)
{
	struct bpf_sock *sk = OPS_SK(ops);

	if (!sk)
		return 0;
	return bpf_sk_storage_get(&sk_states, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

static __always_inline __u32 fail_kind(int err)
{
	switch (err) {
	case 111:
		return FAIL_ECONNREFUSED;
	case 110:
		return FAIL_ETIMEDOUT;
	case 113:
		return FAIL_EHOSTUNREACH;
	case 101:
		return FAIL_ENETUNREACH;
	case 104:
		return FAIL_ECONNRESET;
	}
	return FAIL_OTHER;
}

// connect_failed: a socket went from SYN_SENT to CLOSE, it never
// reached ESTABLISHED. The kernel sets sk_err before it closes the socket
// (tcp_done_with_error, tcp_v4_err), so the error is already there.
static __always_inline void connect_failed(struct bpf_sock_ops *ops, struct tcp_counters *c)
{
	struct bpf_sock *sk = OPS_SK(ops);
	struct tcp_sock *tp;
	struct tcp_peer *p;
	int err = 0;
	__u32 kind;

	if (sk) {
		tp = bpf_skc_to_tcp_sock(sk);
		if (tp)
			bpf_probe_read_kernel(&err, sizeof(err), (char *)tp + off_sk_err);
	}
	kind = fail_kind(err);
	if (kind >= FAIL_KINDS)
		return;
	ADD(&c->failed[kind], 1);
	p = bpf_map_lookup_elem(&fail_peers, &kind);
	if (!p)
		return;
	p->family = OPS_U32(ops, family);
	p->port = OPS_U32(ops, remote_port);
	if (p->family == 2) { // AF_INET
		p->addr[0] = OPS_U32(ops, remote_ip4);
		p->addr[1] = p->addr[2] = p->addr[3] = 0;
	} else {
		p->addr[0] = OPS_U32(ops, remote_ip6[0]);
		p->addr[1] = OPS_U32(ops, remote_ip6[1]);
		p->addr[2] = OPS_U32(ops, remote_ip6[2]);
		p->addr[3] = OPS_U32(ops, remote_ip6[3]);
	}
}

// The callbacks every socket of the run asks for: retransmits, timeouts,
// RTT samples and state changes are off by default, per socket.
#define CB_FLAGS (BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG | \
		  BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG)

// enable_cbs adds flags to the socket's callbacks, keeping those another
// sock_ops program (of a parent cgroup) turned on.
static __always_inline void enable_cbs(struct bpf_sock_ops *ops, __u32 flags)
{
	bpf_sock_ops_cb_flags_set(ops, OPS_U32(ops, bpf_sock_ops_cb_flags) | flags);
}

SEC("sockops")
int tcp_sockops(struct bpf_sock_ops *ops)
{
	struct tcp_counters *c = get_counters();
	struct sk_state *st;
	__u32 op = OPS_U32(ops, op);
	__u64 now;

	if (!c)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_RTT_CB: {
		// srtt_us is the kernel's smoothed RTT in 1/8 us.
		__u64 ns = (__u64)(OPS_U32(ops, srtt_us) >> 3) * 1000;

		hist_add(c->rtt_hist, &c->rtt_ns, ns);
		st = sk_state_of(ops, false);
		if (st)
			add_segs_out(ops, c, st);
		break;
	}
	case BPF_SOCK_OPS_RETRANS_CB:
		// args: seq, segments, error. The kernel adds the segments to
		// TcpRetransSegs before it knows the outcome: so do we.
		ADD(&c->retrans_segs, OPS_ARG(ops, 1));
		break;
	case BPF_SOCK_OPS_RTO_CB:
		ADD(&c->rto, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB: {
		// args: old state, new state; called before the change.
		__u32 old = OPS_ARG(ops, 0), state = OPS_ARG(ops, 1);

		st = sk_state_of(ops, false);
		if (st) {
			count_state(c, st, state);
			add_segs_out(ops, c, st);
		}
		if (state == TCP_CLOSE && old == TCP_SYN_SENT)
			connect_failed(ops, c);
		break;
	}
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		// Called in connect() with the socket in SYN_SENT, before the
		// SYN leaves.
		enable_cbs(ops, CB_FLAGS);
		st = sk_state_of(ops, true);
		if (st) {
			st->connect_start_ns = bpf_ktime_get_ns();
			count_state(c, st, OPS_U32(ops, state));
		}
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		enable_cbs(ops, CB_FLAGS);
		ADD(&c->opened_active, 1);
		st = sk_state_of(ops, true);
		if (st) {
			if (st->connect_start_ns) {
				now = bpf_ktime_get_ns();
				hist_add(c->connect_hist, &c->connect_ns,
					 now - st->connect_start_ns);
				st->connect_start_ns = 0;
			}
			count_state(c, st, OPS_U32(ops, state));
		}
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		enable_cbs(ops, CB_FLAGS);
		ADD(&c->opened_passive, 1);
		st = sk_state_of(ops, true);
		if (st)
			count_state(c, st, OPS_U32(ops, state));
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		// Called once listen() succeeded: the socket is in LISTEN.
		enable_cbs(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
		st = sk_state_of(ops, true);
		if (st)
			count_state(c, st, OPS_U32(ops, state));
		break;
	}
	return 1;
}

// full_sk: whether an untrusted socket pointer is a full socket. Reset
// tracepoints also pass TIME_WAIT and request mini sockets, which have no
// sk_cgrp_data (reading it would read past them).
static __always_inline bool full_sk_in_target(void *sk)
{
	__u8 state = 0;

	if (!sk)
		return false;
	if (bpf_probe_read_kernel(&state, sizeof(state), (char *)sk + off_sk_state))
		return false;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return false;
	return sk_in_target(sk);
}

// tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, ...):
// sk is NULL for a reset that answers a segment no socket owns.
SEC("raw_tp/tcp_send_reset")
int on_tcp_send_reset(__u64 *ctx)
{
	struct tcp_counters *c;

	if (!full_sk_in_target((void *)ctx[0]))
		return 0;
	c = get_counters();
	if (c)
		ADD(&c->resets_sent, 1);
	return 0;
}

// tcp_receive_reset(struct sock *sk)
SEC("raw_tp/tcp_receive_reset")
int on_tcp_receive_reset(__u64 *ctx)
{
	struct tcp_counters *c;

	if (!full_sk_in_target((void *)ctx[0]))
		return 0;
	c = get_counters();
	if (c)
		ADD(&c->resets_received, 1);
	return 0;
}
