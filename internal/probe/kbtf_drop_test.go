package probe

import (
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
