/* SPDX-License-Identifier: GPL-2.0 */
//
// Reading IP and UDP/TCP headers in cgroup_skb programs (the skb's data
// starts at the IP header there), shared by the net and dns groups.
// Plain byte offsets and local structs: vmlinux.h's iphdr/ipv6hdr would
// be CO-RE relocations, which make the loader decode the kernel BTF.
#ifndef STATEXEC_L4_H
#define STATEXEC_L4_H

#include "common.h"
#include <bpf/bpf_endian.h>

#define SE_IPPROTO_TCP 6
#define SE_IPPROTO_UDP 17

// The packet's remote end and where its L4 header starts.
struct l4_info {
	__u8 family;  // 4 or 6
	__u8 proto;   // IPPROTO_*, from the IPv6 fixed header's next header
	__u16 port;   // remote port (host order), 0 without a TCP/UDP header
	__u16 lport;  // local port (host order)
	__u16 l4off;  // offset of the TCP/UDP header, 0 without one
	__u32 addr[4]; // remote address (IPv4 in addr[0]), network order
};

// parse_l4 fills info from the headers; egress: the remote end is the
// destination, ingress: the source. false when the packet is not IP.
// With udp_only (a constant), other protocols stop before the ports.
static __always_inline bool parse_l4(struct __sk_buff *skb, bool egress, bool udp_only, struct l4_info *info)
{
	__u8 b[40];
	__u16 frag;
	__u32 off;
	__u16 ports[2];

	if (bpf_skb_load_bytes(skb, 0, b, 20))
		return false;
	switch (b[0] >> 4) {
	case 4:
		info->family = 4;
		info->proto = b[9];
		__builtin_memcpy(&info->addr[0], egress ? &b[16] : &b[12], 4);
		off = (b[0] & 0xf) * 4;
		// Only a first (or no) fragment has the ports.
		frag = ((__u16)(b[6] & 0x1f) << 8) | b[7];
		if (frag)
			return true;
		break;
	case 6:
		if (bpf_skb_load_bytes(skb, 0, b, 40))
			return false;
		info->family = 6;
		info->proto = b[6];
		__builtin_memcpy(info->addr, egress ? &b[24] : &b[8], 16);
		off = 40;
		// Extension headers before TCP/UDP: hop-by-hop (BIG TCP's
		// jumbo payload option on GSO packets over 64 KiB), routing,
		// destination options, fragment.
#pragma unroll
		for (int i = 0; i < 4; i++) {
			__u8 ext[2];

			if (info->proto != 0 && info->proto != 43 && info->proto != 60 && info->proto != 44)
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return true;
			if (info->proto == 44) {
				__u8 fo[2];

				// Fragment header: 8 bytes; a later fragment
				// has no ports.
				if (bpf_skb_load_bytes(skb, off + 2, fo, sizeof(fo)))
					return true;
				info->proto = ext[0];
				if (((fo[0] << 8) | (fo[1] & 0xf8)) != 0)
					return true;
				off += 8;
				continue;
			}
			info->proto = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
		break;
	default:
		return false;
	}
	if (udp_only && info->proto != SE_IPPROTO_UDP)
		return true;
	if (info->proto != SE_IPPROTO_TCP && info->proto != SE_IPPROTO_UDP)
		return true;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return true;
	info->port = bpf_ntohs(egress ? ports[1] : ports[0]);
	info->lport = bpf_ntohs(egress ? ports[0] : ports[1]);
	info->l4off = off;
	return true;
}

#endif
