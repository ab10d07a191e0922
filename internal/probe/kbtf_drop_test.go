package probe

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// checkDropLayout compares the drop group's part of the quick BTF scan
// with cilium/ebpf's full decoder.
func checkDropLayout(t *testing.T, spec *btf.Spec, got *dropLayout, offset func(string, ...string) uint32) {
	t.Helper()
	if got == nil {
		t.Fatal("no drop layout")
	}
	var en *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &en); err != nil {
		t.Fatal(err)
	}
	names := map[uint64]string{}
	var maxReason uint64
	for _, v := range en.Values {
		if v.Name == "SKB_DROP_REASON_MAX" {
			maxReason = v.Value
		}
		if strings.HasPrefix(v.Name, "SKB_DROP_REASON_") {
			names[v.Value] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
		}
		if v.Name == "SKB_CONSUMED" && got.Consumed != int64(v.Value) {
			t.Errorf("SKB_CONSUMED = %d, want %d", got.Consumed, v.Value)
		}
	}
	if uint64(len(got.Reasons)) != maxReason {
		t.Fatalf("%d reasons, want SKB_DROP_REASON_MAX = %d", len(got.Reasons), maxReason)
	}
	for v, n := range got.Reasons {
		if n != names[uint64(v)] {
			t.Errorf("reason %d = %q, want %q", v, n, names[uint64(v)])
		}
	}
	if got.Reasons[2] != "NOT_SPECIFIED" && got.Reasons[1] != "NOT_SPECIFIED" {
		t.Errorf("NOT_SPECIFIED not found at 1 or 2: %q", got.Reasons[:3])
	}
	if want := offset("sk_buff", "sk"); got.SkbSk != want {
		t.Errorf("sk_buff.sk = %d, want %d", got.SkbSk, want)
	}
	if want := offset("sock", "__sk_common", "skc_state"); got.SkcState != want {
		t.Errorf("skc_state = %d, want %d", got.SkcState, want)
	}
	t.Logf("kfree_skb: %d reasons, consumed=%d, skb.sk@%d, skc_state@%d", len(got.Reasons), got.Consumed, got.SkbSk, got.SkcState)
}

// seedDropBTF is a small BTF blob with what dropLayout looks for: a fuzz
// seed that reaches the enum reader.
func seedDropBTF(tb testing.TB) []byte {
	tb.Helper()
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	common := &btf.Struct{Name: "sock_common", Size: 24, Members: []btf.Member{{Name: "skc_state", Type: &btf.Volatile{Type: u8}, Offset: 144}}}
	sock := &btf.Struct{Name: "sock", Size: 32, Members: []btf.Member{{Name: "__sk_common", Type: common}}}
	anon := &btf.Union{Size: 8, Members: []btf.Member{{Name: "sk", Type: &btf.Pointer{Target: sock}}}}
	skb := &btf.Struct{Name: "sk_buff", Size: 32, Members: []btf.Member{{Type: anon, Offset: 128}}}
	en := &btf.Enum{Name: "skb_drop_reason", Size: 4, Values: []btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0}, {Name: "SKB_CONSUMED", Value: 1},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2}, {Name: "SKB_DROP_REASON_NETFILTER_DROP", Value: 3},
		{Name: "SKB_DROP_REASON_MAX", Value: 4}, {Name: "SKB_DROP_REASON_SUBSYS_MASK", Value: 0xffff0000},
	}}
	b, err := btf.NewBuilder([]btf.Type{skb, en}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	data, err := b.Marshal(nil, &btf.MarshalOptions{Order: binary.LittleEndian})
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestSeedDropBTF(t *testing.T) {
	b, err := parseRawBTF(seedDropBTF(t))
	if err != nil {
		t.Fatal(err)
	}
	d := b.dropLayout()
	if d == nil {
		t.Fatal("no drop layout")
	}
	if d.SkbSk != 16 || d.SkcState != 18 || d.Consumed != 1 || strings.Join(d.Reasons, ",") != ",,NOT_SPECIFIED,NETFILTER_DROP" {
		t.Errorf("got %+v", *d)
	}
}
