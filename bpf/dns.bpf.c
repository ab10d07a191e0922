// SPDX-License-Identifier: GPL-2.0
//
// statexec probe group "dns": DNS over UDP port 53 of the command tree's
// sockets (IPv4 and IPv6), from cgroup_skb programs on the run's cgroup:
// queries, responses by rcode, and the latency from a query to its
// response, matched by (transaction id, client port).

#include "l4.h"

char __license[] SEC("license") = "GPL";

#define DNS_PORT 53
#define HIST_SLOTS 32 // the last slot holds everything from 2^31 ns (2.1 s) on

struct dns_counters {
	__u64 queries;
	__u64 responses[16]; // by rcode (the header's 4 bits)
	__u64 latency_ns;    // sum over matched responses
	__u64 latency_hist[HIST_SLOTS]; // [2^k, 2^(k+1)) ns
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_counters);
} counters SEC(".maps");

struct query_key {
	__u16 id;    // transaction id
	__u16 port;  // client (local) port
	__u32 pad;
};

// Queries waiting for their response. LRU: queries never answered must
// not fill it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct query_key);
	__type(value, __u64); // ktime of the query
} inflight SEC(".maps");

// dns_header reads the DNS header's id and flags of a UDP packet from or
// to port 53; false for anything else.
static __always_inline bool dns_header(struct __sk_buff *skb, bool egress, struct l4_info *info, __u16 *id, __u16 *flags)
{
	__u16 h[2];

	if (!parse_l4(skb, egress, true, info) || info->proto != SE_IPPROTO_UDP || !info->l4off)
		return false;
	if (info->port != DNS_PORT)
		return false;
	// The DNS header follows the 8-byte UDP header.
	if (bpf_skb_load_bytes(skb, info->l4off + 8, h, sizeof(h)))
		return false;
	*id = h[0]; // byte order does not matter for matching
	*flags = bpf_ntohs(h[1]);
	return true;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	struct l4_info info = {};
	struct query_key key = {};
	struct dns_counters *c;
	__u16 id, flags;
	__u32 zero = 0;
	__u64 now;

	if (!dns_header(skb, true, &info, &id, &flags) || (flags & 0x8000))
		return 1; // not a query (QR set: a response)
	c = bpf_map_lookup_elem(&counters, &zero);
	if (c)
		__sync_fetch_and_add(&c->queries, 1);
	key.id = id;
	key.port = info.lport;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&inflight, &key, &now, BPF_ANY);
	return 1;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	struct l4_info info = {};
	struct query_key key = {};
	struct dns_counters *c;
	__u16 id, flags;
	__u32 zero = 0;
	__u64 *sent, d;
	__u32 slot;

	if (!dns_header(skb, false, &info, &id, &flags) || !(flags & 0x8000))
		return 1;
	c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return 1;
	__sync_fetch_and_add(&c->responses[flags & 0xf], 1);
	key.id = id;
	key.port = info.lport;
	sent = bpf_map_lookup_elem(&inflight, &key);
	if (!sent)
		return 1;
	d = bpf_ktime_get_ns() - *sent;
	bpf_map_delete_elem(&inflight, &key);
	__sync_fetch_and_add(&c->latency_ns, d);
	slot = log2_u64(d);
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	__sync_fetch_and_add(&c->latency_hist[slot], 1);
	return 1;
}
