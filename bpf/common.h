/* SPDX-License-Identifier: GPL-2.0 */
//
// Shared by every statexec probe group (one bpf/<group>.bpf.c each, loaded
// as a BPF object of its own by internal/probe/<group>.go).
//
// Every program counts only tasks (or sockets) of one cgroup v2 directory,
// the one statexec created for the command. User space reads per-CPU
// counters and sums them; no ring buffers, so the cost on hot paths is a
// few loads and adds.
#ifndef STATEXEC_COMMON_H
#define STATEXEC_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

// Set by the loader before load: the cgroup id (inode number of the cgroup
// directory) of the command's cgroup. As a .rodata constant the verifier
// sees it, and it costs no map lookup.
const volatile __u64 target_cgid = 0;

// Field offsets in the running kernel, found by the loader in
// /sys/kernel/btf/vmlinux (internal/probe/kbtf.go). Not CO-RE on purpose:
// CO-RE relocations (and tp_btf attach targets) make the Go loader decode
// the whole kernel BTF, tens of milliseconds per run. Frozen .rodata
// values are known constants to the verifier, so ptr + off_x is a plain
// typed pointer access that it checks against the kernel's BTF as usual.
// A group declares the offsets it uses; the loader sets those its object
// has.
#define FIELD(type, ptr, off) (*(type *)((char *)(ptr) + (off)))

// The path from a task to its cgroup id, for in_target.
const volatile __u32 off_cgroups = 0;  // task_struct.cgroups
const volatile __u32 off_dfl_cgrp = 0; // css_set.dfl_cgrp
const volatile __u32 off_kn = 0;       // cgroup.kn
const volatile __u32 off_kn_id = 0;    // kernfs_node.id

// The path from a socket to the cgroup that created it. Set only when the
// kernel has it (CONFIG_SOCK_CGROUP_DATA); a group that needs it fails
// to load without it.
const volatile __u32 off_sk_cgrp = 0; // sock.sk_cgrp_data.cgroup

// cgroup_in_target follows an untrusted struct cgroup pointer to its id.
static __always_inline bool cgroup_in_target(void *cgrp)
{
	void *kn = 0;
	__u64 id = 0;

	if (!cgrp)
		return false;
	if (bpf_probe_read_kernel(&kn, sizeof(kn), (char *)cgrp + off_kn) || !kn)
		return false;
	if (bpf_probe_read_kernel(&id, sizeof(id), (char *)kn + off_kn_id))
		return false;
	return id == target_cgid;
}

// in_target follows an untrusted task pointer (a raw tracepoint argument)
// to its cgroup id with probe reads: only used on rare events (fork).
static __always_inline bool in_target(void *task)
{
	void *p = 0;

	if (bpf_probe_read_kernel(&p, sizeof(p), (char *)task + off_cgroups) || !p)
		return false;
	if (bpf_probe_read_kernel(&p, sizeof(p), (char *)p + off_dfl_cgrp) || !p)
		return false;
	return cgroup_in_target(p);
}

// sk_in_target: whether a socket (an untrusted pointer) belongs to the
// run. The socket's own cgroup is the right owner in softirq (timers,
// ingress), where the current task is whoever happens to run: measured,
// bpf_get_current_cgroup_id() there caught 8-13% of a command's
// retransmits, the socket's cgroup all of them.
static __always_inline bool sk_in_target(void *sk)
{
	void *cgrp = 0;

	if (!sk)
		return false;
	if (bpf_probe_read_kernel(&cgrp, sizeof(cgrp), (char *)sk + off_sk_cgrp))
		return false;
	return cgroup_in_target(cgrp);
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

// __sk_buff is UAPI with a fixed layout: read it at offsetof() constants,
// not as vmlinux.h members, which would be CO-RE relocations (and make the
// loader decode the kernel BTF).
#define SKB_U32(skb, field) \
	(*(__u32 *)((char *)(skb) + __builtin_offsetof(struct __sk_buff, field)))

#endif
