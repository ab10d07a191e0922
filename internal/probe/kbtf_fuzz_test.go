package probe

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// seedBTF is a small BTF blob with the structs and fields layout() looks
// for, written by cilium/ebpf's encoder: a valid start for the fuzzer.
func seedBTF(tb testing.TB) []byte {
	tb.Helper()
	u64 := &btf.Int{Name: "u64", Size: 8}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	kn := &btf.Struct{Name: "kernfs_node", Size: 16, Members: []btf.Member{{Name: "id", Type: u64, Offset: 64}}}
	cgroup := &btf.Struct{Name: "cgroup", Size: 16, Members: []btf.Member{{Name: "kn", Type: &btf.Pointer{Target: kn}, Offset: 64}}}
	cssSet := &btf.Struct{Name: "css_set", Size: 16, Members: []btf.Member{{Name: "dfl_cgrp", Type: &btf.Pointer{Target: cgroup}, Offset: 32}}}
	se := &btf.Struct{Name: "sched_entity", Size: 16, Members: []btf.Member{{Name: "sum_exec_runtime", Type: u64, Offset: 64}}}
	si := &btf.Struct{Name: "sched_info", Size: 16, Members: []btf.Member{{Name: "pcount", Type: u64}, {Name: "run_delay", Type: u64, Offset: 64}}}
	// An anonymous member, as the kernel's randomized_struct_fields use.
	anon := &btf.Struct{Size: 8, Members: []btf.Member{{Name: "pid", Type: i32}, {Name: "tgid", Type: i32, Offset: 32}}}
	task := &btf.Struct{Name: "task_struct", Size: 96, Members: []btf.Member{
		{Name: "__state", Type: &btf.Volatile{Type: u32}},
		{Name: "se", Type: se, Offset: 64},
		{Name: "sched_info", Type: si, Offset: 192},
		{Name: "nvcsw", Type: u64, Offset: 320},
		{Name: "nivcsw", Type: u64, Offset: 384},
		{Type: anon, Offset: 448},
		{Name: "cgroups", Type: &btf.Pointer{Target: cssSet}, Offset: 512},
	}}
	b, err := btf.NewBuilder([]btf.Type{task}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	data, err := b.Marshal(nil, &btf.MarshalOptions{Order: binary.LittleEndian})
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// TestSeedBTFLayout: the fuzz seed is a BTF the scan reads right.
func TestSeedBTFLayout(t *testing.T) {
	b, err := parseRawBTF(seedBTF(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := b.layout()
	if err != nil {
		t.Fatal(err)
	}
	want := kernelLayout{SumExecRuntime: 16, Nvcsw: 40, Nivcsw: 48, State: 0, Pid: 56, Tgid: 60, Cgroups: 64,
		DflCgrp: 4, Kn: 8, KnID: 8, HaveSchedInfo: true, RunDelay: 32, Pcount: 24}
	if l != want {
		t.Errorf("layout\n got %+v\nwant %+v", l, want)
	}
}

// FuzzParseRawBTF: the BTF scan reads a blob the kernel hands over; no
// blob may make it panic or loop, whatever its sections claim.
func FuzzParseRawBTF(f *testing.F) {
	seed := seedBTF(f)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seed[:24])
	f.Add(seedDropBTF(f)) // netobs: reaches the enum reader
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseRawBTF(data)
		if err != nil {
			return
		}
		b.layout()
	})
}
