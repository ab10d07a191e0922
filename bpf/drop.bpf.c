// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "drop": packets the kernel dropped (kfree_skb with
// a drop reason) that belonged to a socket of the run, counted by reason.

#include "common.h"

char __license[] SEC("license") = "GPL";

// Set by the loader from the kernel BTF (internal/probe/kbtf_drop.go).
const volatile __u32 kfree_skb_args = 4; // 3: no rx_sk (before 6.11)
const volatile __u32 nreasons = 1;       // SKB_DROP_REASON_MAX
const volatile __s64 consumed_reason = -1; // SKB_CONSUMED, -1: none
const volatile __u32 off_skb_sk = 0;     // sk_buff.sk
const volatile __u32 off_skc_state = 0;  // sock.__sk_common.skc_state

// One slot per reason below SKB_DROP_REASON_MAX, and one more (slot
// nreasons) for any other value: subsystem reasons (mac80211,
// openvswitch, ...) carry their subsystem in the high bits. The loader
// sets max_entries to nreasons + 1.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

// TCP_TIME_WAIT and TCP_NEW_SYN_RECV sockets are small structs
// (inet_timewait_sock, request_sock) without sk_cgrp_data: reading it
// there would read another object.
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12

static __always_inline bool full_sk_in_target(void *sk)
{
	__u8 state = 0;

	if (!sk)
		return false;
	if (bpf_probe_read_kernel(&state, sizeof(state), (char *)sk + off_skc_state))
		return false;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return false;
	return sk_in_target(sk);
}

// kfree_skb fires for every drop on the host, in any context (often
// softirq): the owner is the skb's socket (egress, and ingress after the
// socket lookup) or rx_sk (the receiving socket the kernel passes since
// 6.11 where skb->sk is not set), never the current task.
SEC("raw_tp/kfree_skb")
// ctx: skb, location, reason[, rx_sk] as plain u64s, not vmlinux.h's
// bpf_raw_tracepoint_args, whose member access is a CO-RE relocation.
int on_kfree_skb(__u64 *ctx)
{
	__u64 reason = ctx[2];
	void *sk = 0;
	bool mine;
	__u32 slot;
	__u64 *n;

	// consume_skb has its own tracepoint since 6.2; older kernels might
	// still pass SKB_CONSUMED here. It is no drop.
	if ((__s64)reason == consumed_reason)
		return 0;
	bpf_probe_read_kernel(&sk, sizeof(sk), (char *)ctx[0] + off_skb_sk);
	mine = full_sk_in_target(sk);
	// A constant: with 3 args the verifier never sees args[3] (reading
	// it would make the attach fail).
	if (!mine && kfree_skb_args >= 4)
		mine = full_sk_in_target((void *)ctx[3]);
	if (!mine)
		return 0;
	slot = reason < nreasons ? (__u32)reason : nreasons;
	n = bpf_map_lookup_elem(&drops, &slot);
	// Atomic: a softirq drop can interrupt a process-context one on the
	// same CPU.
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}
