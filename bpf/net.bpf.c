// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "net": bytes and packets of the command tree's
// sockets, from cgroup_skb programs attached to the run's cgroup.

#include "common.h"
#include "l4.h"

char __license[] SEC("license") = "GPL";

// One per-CPU instance; user space sums the CPUs.
struct net_counters {
	__u64 tx_bytes;
	__u64 tx_packets;
	__u64 rx_bytes;
	__u64 rx_packets;
	// Bytes of packets that are in no peers entry (the map was full, or
	// no TCP/UDP header), by protocol: tcp, udp, other. With the peers
	// entries they add up to tx_bytes and rx_bytes.
	__u64 peer_overflow_tx[3];
	__u64 peer_overflow_rx[3];
};

// Per remote end (peer): egress counts the destination, ingress the
// source.
struct peer_key {
	__u8 family; // 4 or 6
	__u8 proto;  // IPPROTO_TCP or IPPROTO_UDP
	__u16 port;  // host order
	__u32 addr[4];
};

struct peer_bytes {
	__u64 tx;
	__u64 rx;
};

// Fixed size, never evicting (an LRU would lose bytes): the first
// PEERS_MAX peers of the run get an entry, later ones count in
// peer_overflow. User space names at most 16 of them.
#define PEERS_MAX 4096

// Not preallocated: a preallocated per-CPU hash of 4096 entries took
// ~2 ms of every run's start (map creation); most runs see a few peers.
// An allocation that fails counts the bytes in the overflow, as a full
// map does.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PEERS_MAX);
	__type(key, struct peer_key);
	__type(value, struct peer_bytes);
} peers SEC(".maps");

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

static __always_inline __u32 proto_slot(__u8 proto)
{
	return proto == SE_IPPROTO_TCP ? 0 : proto == SE_IPPROTO_UDP ? 1 : 2;
}

// count_peer adds len to the packet's peer, or to the overflow.
static __always_inline void count_peer(struct __sk_buff *skb, struct net_counters *c, bool egress, __u64 len)
{
	struct l4_info info = {};
	struct peer_key key = {};
	struct peer_bytes zero = {}, *p;
	__u32 slot;

	if (parse_l4(skb, egress, false, &info) && info.l4off) {
		key.family = info.family;
		key.proto = info.proto;
		key.port = info.port;
		__builtin_memcpy(key.addr, info.addr, sizeof(key.addr));
		p = bpf_map_lookup_elem(&peers, &key);
		if (!p) {
			// Fails when full (E2BIG), or when another CPU
			// inserted it first (then the lookup finds it).
			bpf_map_update_elem(&peers, &key, &zero, BPF_NOEXIST);
			p = bpf_map_lookup_elem(&peers, &key);
		}
		if (p) {
			if (egress)
				__sync_fetch_and_add(&p->tx, len);
			else
				__sync_fetch_and_add(&p->rx, len);
			return;
		}
	}
	slot = proto_slot(info.proto);
	if (slot > 2)
		return;
	if (egress)
		__sync_fetch_and_add(&c->peer_overflow_tx[slot], len);
	else
		__sync_fetch_and_add(&c->peer_overflow_rx[slot], len);
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
		__u64 len = SKB_U32(skb, len);

		__sync_fetch_and_add(&c->tx_bytes, len);
		__sync_fetch_and_add(&c->tx_packets, segs(skb));
		count_peer(skb, c, true, len);
	}
	return 1; // allow
}

SEC("cgroup_skb/ingress")
int count_ingress(struct __sk_buff *skb)
{
	struct net_counters *c = get_counters();

	if (c) {
		__u64 len = SKB_U32(skb, len);

		__sync_fetch_and_add(&c->rx_bytes, len);
		__sync_fetch_and_add(&c->rx_packets, segs(skb));
		count_peer(skb, c, false, len);
	}
	return 1; // allow
}
