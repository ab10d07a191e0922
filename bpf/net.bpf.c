// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "net": bytes and packets of the command tree's
// sockets, from cgroup_skb programs attached to the run's cgroup.

#include "common.h"

char __license[] SEC("license") = "GPL";

// One per-CPU instance; user space sums the CPUs.
struct net_counters {
	__u64 tx_bytes;
	__u64 tx_packets;
	__u64 rx_bytes;
	__u64 rx_packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct net_counters);
} counters SEC(".maps");

static __always_inline struct net_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

// cgroup_skb programs run only for sockets of the attached cgroup (and its
// descendants), so they need no filter. skb->len includes the IP header;
// gso_segs turns one GSO/GRO super-packet into its wire packet count.
static __always_inline __u64 segs(struct __sk_buff *skb)
{
	__u32 n = SKB_U32(skb, gso_segs);

	return n ? n : 1;
}

// The adds are atomic although the slots are per-CPU: one CPU runs these
// programs both in process context (sendmsg, socket backlog) and in a
// softirq that interrupts it (ACK-clocked transmissions, loopback
// receive). With a plain load-add-store, a softirq's update between the
// load and the store was lost, up to 64 KiB at a time: sent bytes came
// out 2-4% short in some runs.
SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
	struct net_counters *c = get_counters();

	if (c) {
		__sync_fetch_and_add(&c->tx_bytes, SKB_U32(skb, len));
		__sync_fetch_and_add(&c->tx_packets, segs(skb));
	}
	return 1; // allow
}

SEC("cgroup_skb/ingress")
int count_ingress(struct __sk_buff *skb)
{
	struct net_counters *c = get_counters();

	if (c) {
		__sync_fetch_and_add(&c->rx_bytes, SKB_U32(skb, len));
		__sync_fetch_and_add(&c->rx_packets, segs(skb));
	}
	return 1; // allow
}
