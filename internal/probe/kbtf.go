//go:build linux

package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Why statexec reads the kernel's BTF itself: the programs need the offsets
// of a dozen fields (task_struct.se.sum_exec_runtime, ...). CO-RE
// relocations or tp_btf attach targets make cilium/ebpf decode the whole
// kernel BTF and inflate task_struct's type graph, which is most of the
// kernel: 20-40 ms of CPU per run, more than everything else statexec does
// to start. A linear scan of the raw BTF for six structs takes about a
// millisecond. The programs read the fields at these offsets (set as
// .rodata constants, which the verifier treats as known values).

// errNoKernelBTF: the kernel has no /sys/kernel/btf/vmlinux
// (CONFIG_DEBUG_INFO_BTF off); the eBPF backend cannot run there.
var errNoKernelBTF = errors.New("no kernel BTF")

// kernelLayout holds byte offsets of the fields the BPF programs read.
type kernelLayout struct {
	SumExecRuntime uint32 // task_struct.se.sum_exec_runtime
	Nvcsw          uint32 // task_struct.nvcsw
	Nivcsw         uint32 // task_struct.nivcsw
	State          uint32 // task_struct.__state (state before 5.14)
	Pid            uint32 // task_struct.pid
	Tgid           uint32 // task_struct.tgid
	Cgroups        uint32 // task_struct.cgroups
	DflCgrp        uint32 // css_set.dfl_cgrp
	Kn             uint32 // cgroup.kn
	KnID           uint32 // kernfs_node.id
	// sched_info exists with CONFIG_SCHED_INFO (TASK_DELAY_ACCT or
	// SCHEDSTATS); without it there are no run-queue metrics.
	HaveSchedInfo bool
	RunDelay      uint32 // task_struct.sched_info.run_delay
	Pcount        uint32 // task_struct.sched_info.pcount
	// The memory peak at exit needs mm_struct.rss_stat as an array of
	// percpu_counter (Linux 6.2 on); older layouts go without it.
	HaveMmPeak bool
	Mm         uint32 // task_struct.mm
	HiwaterRss uint32 // mm_struct.hiwater_rss
	RssStat    uint32 // mm_struct.rss_stat
	PcpuCount  uint32 // percpu_counter.count
	PcpuSize   uint32 // sizeof(struct percpu_counter)
	// A socket's cgroup needs CONFIG_SOCK_CGROUP_DATA (any kernel with
	// cgroup_skb programs has it).
	HaveSkCgrp bool
	SkCgrp     uint32 // sock.sk_cgrp_data.cgroup

	// Group tcp: a socket's error and state.
	SkErr   uint32 // sock.sk_err
	SkState uint32 // sock.__sk_common.skc_state
	// Group "drop" (kfree_skb), filled by dropLayout.
	Drop *dropLayout
	// benchhost (group block): a block request's operation.
	HaveRequest bool
	RqCmdFlags  uint32 // request.cmd_flags
}

const (
	btfMagic       = 0xeB9F
	btfKindInt     = 1
	btfKindArray   = 3
	btfKindStruct  = 4
	btfKindUnion   = 5
	btfKindEnum    = 6
	btfKindFwd     = 7
	btfKindFunc    = 12
	btfKindProto   = 13
	btfKindVar     = 14
	btfKindDatasec = 15
	btfKindDeclTag = 17
	btfKindEnum64  = 19
	btfTypeLen     = 12
	maxNesting     = 8
)

// rawBTF is a minimal reader of the BTF wire format (enough to find
// struct members by name).
type rawBTF struct {
	types   []byte
	strings []byte
	offsets []uint32 // type id -> offset in types (id 0 is void)
}

// scanKernelLayout scans the running kernel's BTF (loadKernelLayout, in
// kbtfcache.go, keeps its result per kernel build).
func scanKernelLayout() (kernelLayout, error) {
	// mmap, not read: sysfs copies the 5+ MB in small chunks.
	f, err := os.Open("/sys/kernel/btf/vmlinux")
	if err != nil {
		return kernelLayout{}, fmt.Errorf("%w: %w", errNoKernelBTF, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return kernelLayout{}, fmt.Errorf("read kernel BTF: %w", err)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return kernelLayout{}, fmt.Errorf("read kernel BTF: %w", err)
	}
	defer unix.Munmap(data)
	b, err := parseRawBTF(data)
	if err != nil {
		return kernelLayout{}, fmt.Errorf("kernel BTF: %w", err)
	}
	return b.layout()
}

func parseRawBTF(data []byte) (*rawBTF, error) {
	if len(data) < 24 {
		return nil, errors.New("short header")
	}
	le := binary.LittleEndian
	if le.Uint16(data) != btfMagic {
		return nil, errors.New("bad magic (not little-endian BTF)")
	}
	hdrLen := le.Uint32(data[4:])
	typeOff, typeLen := le.Uint32(data[8:]), le.Uint32(data[12:])
	strOff, strLen := le.Uint32(data[16:]), le.Uint32(data[20:])
	end := func(off, n uint32) uint64 { return uint64(hdrLen) + uint64(off) + uint64(n) }
	if end(typeOff, typeLen) > uint64(len(data)) || end(strOff, strLen) > uint64(len(data)) {
		return nil, errors.New("sections out of bounds")
	}
	b := &rawBTF{
		types:   data[hdrLen+typeOff : hdrLen+typeOff+typeLen],
		strings: data[hdrLen+strOff : hdrLen+strOff+strLen],
		offsets: make([]uint32, 1, 1<<17),
	}
	for off := 0; off+btfTypeLen <= len(b.types); {
		b.offsets = append(b.offsets, uint32(off))
		info := le.Uint32(b.types[off+4:])
		kind, vlen := (info>>24)&0x1f, int(info&0xffff)
		off += btfTypeLen
		switch kind {
		case btfKindInt, btfKindVar, btfKindDeclTag:
			off += 4
		case btfKindArray:
			off += 12
		case btfKindStruct, btfKindUnion, btfKindDatasec, btfKindEnum64:
			off += 12 * vlen
		case btfKindEnum, btfKindProto:
			off += 8 * vlen
		}
		if off > len(b.types) {
			// Its member records run past the section: a truncated or
			// corrupt blob; member() must not read beyond it.
			return nil, errors.New("type section truncated")
		}
	}
	return b, nil
}

func (b *rawBTF) header(id uint32) (kind uint32, vlen int, kflag bool, typ uint32, off uint32) {
	off = b.offsets[id]
	info := binary.LittleEndian.Uint32(b.types[off+4:])
	return (info >> 24) & 0x1f, int(info & 0xffff), info>>31 == 1, binary.LittleEndian.Uint32(b.types[off+8:]), off
}

// findStructs returns the ids of the first structs with these names that
// have members (forward declarations have none), in one pass.
func (b *rawBTF) findStructs(names []string) map[string]uint32 {
	found := make(map[string]uint32, len(names))
	le := binary.LittleEndian
	for id := uint32(1); id < uint32(len(b.offsets)) && len(found) < len(names); id++ {
		off := b.offsets[id]
		info := le.Uint32(b.types[off+4:])
		if (info>>24)&0x1f != btfKindStruct || info&0xffff == 0 {
			continue
		}
		nameOff := le.Uint32(b.types[off:])
		for _, n := range names {
			if _, dup := found[n]; !dup && b.strIs(nameOff, n) {
				found[n] = id
			}
		}
	}
	return found
}

// strIs compares the string at off with s without scanning for its end.
func (b *rawBTF) strIs(off uint32, s string) bool {
	end := int(off) + len(s)
	return end < len(b.strings) && b.strings[end] == 0 && string(b.strings[off:end]) == s
}

// member finds a member by name in a struct or union, descending into
// anonymous members; it returns its byte offset and type id.
func (b *rawBTF) member(id uint32, name string, depth int) (offset, typ uint32, ok bool) {
	if depth > maxNesting || id == 0 || id >= uint32(len(b.offsets)) {
		return 0, 0, false
	}
	kind, vlen, kflag, typ, off := b.header(id)
	for i := 0; isModifier(kind) && i < maxNesting && typ < uint32(len(b.offsets)); i++ {
		kind, vlen, kflag, typ, off = b.header(typ)
	}
	if kind != btfKindStruct && kind != btfKindUnion {
		return 0, 0, false
	}
	le := binary.LittleEndian
	m := b.types[off+btfTypeLen:]
	for i := 0; i < vlen; i++ {
		rec := m[12*i:]
		mname, mtype, moff := le.Uint32(rec), le.Uint32(rec[4:]), le.Uint32(rec[8:])
		if kflag {
			moff &= 0xffffff // high byte: bitfield size
		}
		if mname == 0 {
			if o, t, ok := b.member(mtype, name, depth+1); ok {
				return moff/8 + o, t, true
			}
			continue
		}
		if b.strIs(mname, name) {
			return moff / 8, mtype, true
		}
	}
	return 0, 0, false
}

// isModifier: typedef, volatile, const, restrict, type_tag.
func isModifier(kind uint32) bool {
	return kind >= 8 && kind <= 11 || kind == 18
}

func (b *rawBTF) layout() (kernelLayout, error) {
	var l kernelLayout
	structs := b.findStructs([]string{"task_struct", "sched_entity", "sched_info", "css_set", "cgroup", "kernfs_node", "mm_struct", "percpu_counter", "sock", "request"})
	for _, n := range []string{"task_struct", "css_set", "cgroup", "kernfs_node"} {
		if _, ok := structs[n]; !ok {
			return l, fmt.Errorf("no struct %s", n)
		}
	}
	var errs []error
	field := func(dst *uint32, strct string, path ...string) {
		var total uint32
		id := structs[strct]
		for _, name := range path {
			off, typ, ok := b.member(id, name, 0)
			if !ok {
				errs = append(errs, fmt.Errorf("no field %s.%s", strct, name))
				return
			}
			total += off
			id = typ
		}
		*dst = total
	}
	field(&l.SumExecRuntime, "task_struct", "se", "sum_exec_runtime")
	field(&l.Nvcsw, "task_struct", "nvcsw")
	field(&l.Nivcsw, "task_struct", "nivcsw")
	field(&l.Pid, "task_struct", "pid")
	field(&l.Tgid, "task_struct", "tgid")
	field(&l.Cgroups, "task_struct", "cgroups")
	field(&l.DflCgrp, "css_set", "dfl_cgrp")
	field(&l.Kn, "cgroup", "kn")
	field(&l.KnID, "kernfs_node", "id")
	if _, _, ok := b.member(structs["task_struct"], "__state", 0); ok {
		field(&l.State, "task_struct", "__state")
	} else {
		field(&l.State, "task_struct", "state")
	}
	if _, ok := structs["sched_info"]; ok {
		if _, _, ok := b.member(structs["task_struct"], "sched_info", 0); ok {
			l.HaveSchedInfo = true
			field(&l.RunDelay, "task_struct", "sched_info", "run_delay")
			field(&l.Pcount, "task_struct", "sched_info", "pcount")
		}
	}
	if b.rssStatIsPercpu(structs) {
		l.HaveMmPeak = true
		field(&l.Mm, "task_struct", "mm")
		field(&l.HiwaterRss, "mm_struct", "hiwater_rss")
		field(&l.RssStat, "mm_struct", "rss_stat")
		field(&l.PcpuCount, "percpu_counter", "count")
		_, _, _, l.PcpuSize, _ = b.header(structs["percpu_counter"]) // a struct's size
	}
	if _, ok := structs["sock"]; ok {
		if _, _, ok := b.member(structs["sock"], "sk_cgrp_data", 0); ok {
			l.HaveSkCgrp = true
			field(&l.SkCgrp, "sock", "sk_cgrp_data", "cgroup")
		}
	}
	// Group tcp.
	if _, ok := structs["sock"]; ok {
		field(&l.SkErr, "sock", "sk_err")
		field(&l.SkState, "sock", "__sk_common", "skc_state")
	}
	l.Drop = b.dropLayout()
	// benchhost (group block).
	if _, ok := structs["request"]; ok {
		l.HaveRequest = true
		field(&l.RqCmdFlags, "request", "cmd_flags")
	}
	return l, errors.Join(errs...)
}

// rssStatIsPercpu reports whether mm_struct.rss_stat is an array of at
// least mmCounters percpu_counter (the layout since Linux 6.2).
func (b *rawBTF) rssStatIsPercpu(structs map[string]uint32) bool {
	mm, ok1 := structs["mm_struct"]
	pc, ok2 := structs["percpu_counter"]
	if !ok1 || !ok2 {
		return false
	}
	_, typ, ok := b.member(mm, "rss_stat", 0)
	if !ok || typ == 0 || typ >= uint32(len(b.offsets)) {
		return false
	}
	kind, _, _, _, off := b.header(typ)
	if kind != btfKindArray || int(off)+btfTypeLen+12 > len(b.types) {
		return false
	}
	le := binary.LittleEndian
	elem, n := le.Uint32(b.types[off+btfTypeLen:]), le.Uint32(b.types[off+btfTypeLen+8:])
	for i := 0; elem != 0 && elem < uint32(len(b.offsets)) && i < maxNesting; i++ {
		k, _, _, t, _ := b.header(elem)
		if !isModifier(k) {
			break
		}
		elem = t
	}
	return elem == pc && n >= mmCounters
}

// mmCounters: MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES.
const mmCounters = 4
