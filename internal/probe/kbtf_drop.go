//go:build linux

package probe

import (
	"encoding/binary"
	"strings"
)

// What the "drop" group (kfree_skb) needs from the kernel BTF: the drop
// reasons' names and two offsets. (Whether the tracepoint has rx_sk is
// found by trying to attach: see loadDropGroup.)
type dropLayout struct {
	// Reasons are enum skb_drop_reason's names without the
	// SKB_DROP_REASON_ prefix, indexed by value, below
	// SKB_DROP_REASON_MAX (len(Reasons)). Values that are no drop
	// (SKB_NOT_DROPPED_YET, SKB_CONSUMED) have "".
	Reasons []string
	// Consumed is SKB_CONSUMED's value, -1 when the enum has none
	// (before 6.2 consume_skb never reached this tracepoint).
	Consumed int64
	SkbSk    uint32 // sk_buff.sk
	SkcState uint32 // sock.__sk_common.skc_state
}

// namedType is a type to find by kind and name.
type namedType struct {
	name string
	kind uint32
}

// findNamed returns, in one pass, the id of the first type of each
// wanted kind and name (structs only when they have members; enum
// matches enum64 too), 0 when absent. A plain loop over a short slice:
// ranging over a map for each of the kernel's ~100k types cost
// milliseconds.
func (b *rawBTF) findNamed(want []namedType) []uint32 {
	found := make([]uint32, len(want))
	left := len(want)
	le := binary.LittleEndian
	for id := uint32(1); id < uint32(len(b.offsets)) && left > 0; id++ {
		off := b.offsets[id]
		info := le.Uint32(b.types[off+4:])
		kind := (info >> 24) & 0x1f
		switch kind {
		case btfKindStruct:
			if info&0xffff == 0 {
				continue
			}
		case btfKindEnum64:
			kind = btfKindEnum
		case btfKindEnum:
		default:
			continue
		}
		nameOff := le.Uint32(b.types[off:])
		for i, w := range want {
			if found[i] == 0 && w.kind == kind && b.strIs(nameOff, w.name) {
				found[i] = id
				left--
			}
		}
	}
	return found
}

// str returns the NUL-terminated string at off.
func (b *rawBTF) str(off uint32) string {
	if int(off) >= len(b.strings) {
		return ""
	}
	s := b.strings[off:]
	if i := strings.IndexByte(string(s[:min(len(s), 256)]), 0); i >= 0 {
		return string(s[:i])
	}
	return ""
}

// enumValues lists an enum's (or enum64's) names and values.
func (b *rawBTF) enumValues(id uint32) (names []string, values []uint64) {
	kind, vlen, _, _, off := b.header(id)
	le := binary.LittleEndian
	m := b.types[off+btfTypeLen:]
	for i := 0; i < vlen; i++ {
		switch kind {
		case btfKindEnum:
			rec := m[8*i:]
			names = append(names, b.str(le.Uint32(rec)))
			values = append(values, uint64(le.Uint32(rec[4:])))
		case btfKindEnum64:
			rec := m[12*i:]
			names = append(names, b.str(le.Uint32(rec)))
			values = append(values, uint64(le.Uint32(rec[4:]))|uint64(le.Uint32(rec[8:]))<<32)
		}
	}
	return names, values
}

// dropLayout finds what the drop group needs; nil when the kernel lacks
// any of it (the group then stays off).
func (b *rawBTF) dropLayout() *dropLayout {
	d := &dropLayout{Consumed: -1}
	found := b.findNamed([]namedType{
		{"skb_drop_reason", btfKindEnum},
		{"sk_buff", btfKindStruct},
		{"sock", btfKindStruct},
	})
	en, skb, sk := found[0], found[1], found[2]
	if en == 0 || skb == 0 || sk == 0 {
		return nil
	}
	names, values := b.enumValues(en)
	var maxReason uint64
	for i, n := range names {
		if n == "SKB_DROP_REASON_MAX" {
			maxReason = values[i]
		}
	}
	// Bounded: the BPF array has one slot per reason (plus one).
	const reasonsLimit = 1024
	if maxReason == 0 || maxReason > reasonsLimit {
		return nil
	}
	d.Reasons = make([]string, maxReason)
	for i, n := range names {
		v := values[i]
		if v >= maxReason {
			continue
		}
		switch {
		case n == "SKB_CONSUMED":
			d.Consumed = int64(v)
		case strings.HasPrefix(n, "SKB_DROP_REASON_"):
			d.Reasons[v] = strings.TrimPrefix(n, "SKB_DROP_REASON_")
		}
	}
	off, _, ok := b.member(skb, "sk", 0)
	if !ok {
		return nil
	}
	d.SkbSk = off
	common, ctyp, ok := b.member(sk, "__sk_common", 0)
	if !ok {
		return nil
	}
	state, _, ok := b.member(ctyp, "skc_state", 0)
	if !ok {
		return nil
	}
	d.SkcState = common + state
	return d
}
