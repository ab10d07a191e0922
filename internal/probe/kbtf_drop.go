//go:build linux

package probe

import (
	"encoding/binary"
	"strings"
)

// What the "drop" group (kfree_skb) needs from the kernel BTF: the
// tracepoint's argument count, the drop reasons' names and two offsets.
type dropLayout struct {
	// Args of the raw tracepoint kfree_skb: 3 with the reason (Linux
	// 5.17 on), 4 with rx_sk (6.11 on).
	Args int
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

// findNamed returns, in one pass, the id of the first type of each
// wanted kind and name (structs only when they have members).
func (b *rawBTF) findNamed(want map[string]uint32) map[string]uint32 {
	found := make(map[string]uint32, len(want))
	le := binary.LittleEndian
	for id := uint32(1); id < uint32(len(b.offsets)) && len(found) < len(want); id++ {
		off := b.offsets[id]
		info := le.Uint32(b.types[off+4:])
		kind := (info >> 24) & 0x1f
		if kind != btfKindStruct && kind != btfKindEnum && kind != btfKindEnum64 && kind != btfKindTypedef {
			continue
		}
		if kind == btfKindStruct && info&0xffff == 0 {
			continue
		}
		nameOff := le.Uint32(b.types[off:])
		for n, k := range want {
			if _, dup := found[n]; !dup && (k == kind || k == btfKindEnum && kind == btfKindEnum64) && b.strIs(nameOff, n) {
				found[n] = id
			}
		}
	}
	return found
}

const btfKindTypedef = 8

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

// tracepointArgs is the argument count of raw tracepoint name, from its
// typedef btf_trace_<name> (a pointer to a function whose first parameter
// is the tracepoint's private data); 0 when absent.
func (b *rawBTF) tracepointArgs(id uint32) int {
	typ := id
	for i := 0; i < maxNesting && typ != 0 && typ < uint32(len(b.offsets)); i++ {
		kind, vlen, _, next, _ := b.header(typ)
		switch {
		case kind == btfKindProto:
			return max(vlen-1, 0)
		case kind == 2 || isModifier(kind): // pointer, typedef
			typ = next
		default:
			return 0
		}
	}
	return 0
}

// dropLayout finds what the drop group needs; nil when the kernel lacks
// any of it (the group then stays off).
func (b *rawBTF) dropLayout() *dropLayout {
	d := &dropLayout{Consumed: -1}
	found := b.findNamed(map[string]uint32{
		"btf_trace_kfree_skb": btfKindTypedef,
		"skb_drop_reason":     btfKindEnum,
		"sk_buff":             btfKindStruct,
		"sock":                btfKindStruct,
	})
	tp, ok1 := found["btf_trace_kfree_skb"]
	en, ok2 := found["skb_drop_reason"]
	skb, ok3 := found["sk_buff"]
	sk, ok4 := found["sock"]
	if !ok1 || !ok2 || !ok3 || !ok4 {
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
	// Without the reason argument (before 5.17) there is nothing to
	// count by.
	if d.Args = b.tracepointArgs(tp); d.Args < 3 {
		return nil
	}
	return d
}
