package probe

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestKernelLayout checks the quick BTF scan against cilium/ebpf's full
// decoder of the kernel BTF.
func TestKernelLayout(t *testing.T) {
	got, err := scanKernelLayout()
	if errors.Is(err, errNoKernelBTF) {
		t.Skipf("kernel without BTF: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	offset := func(strct string, path ...string) uint32 {
		t.Helper()
		var s *btf.Struct
		if err := spec.TypeByName(strct, &s); err != nil {
			t.Fatalf("%s: %v", strct, err)
		}
		var typ btf.Type = s
		var total uint32
		for _, name := range path {
			off, next, ok := findMember(typ, name)
			if !ok {
				t.Fatalf("%s: no %s", strct, name)
			}
			total += off
			typ = next
		}
		return total
	}
	want := kernelLayout{
		SumExecRuntime: offset("task_struct", "se", "sum_exec_runtime"),
		Nvcsw:          offset("task_struct", "nvcsw"),
		Nivcsw:         offset("task_struct", "nivcsw"),
		State:          offset("task_struct", "__state"),
		Pid:            offset("task_struct", "pid"),
		Tgid:           offset("task_struct", "tgid"),
		Cgroups:        offset("task_struct", "cgroups"),
		DflCgrp:        offset("css_set", "dfl_cgrp"),
		Kn:             offset("cgroup", "kn"),
		KnID:           offset("kernfs_node", "id"),
		HaveSchedInfo:  true,
		RunDelay:       offset("task_struct", "sched_info", "run_delay"),
		Pcount:         offset("task_struct", "sched_info", "pcount"),
		HaveMmPeak:     true,
		Mm:             offset("task_struct", "mm"),
		HiwaterRss:     offset("mm_struct", "hiwater_rss"),
		RssStat:        offset("mm_struct", "rss_stat"),
		PcpuCount:      offset("percpu_counter", "count"),
		HaveSkCgrp:     true,
		SkCgrp:         offset("sock", "sk_cgrp_data", "cgroup"),
		// Group tcp.
		SkErr:   offset("sock", "sk_err"),
		SkState: offset("sock", "__sk_common", "skc_state"),
	}
	var pc *btf.Struct
	if err := spec.TypeByName("percpu_counter", &pc); err != nil {
		t.Fatal(err)
	}
	want.PcpuSize = pc.Size
	// Group "drop": checked on its own (it holds a slice).
	checkDropLayout(t, spec, got.Drop, offset)
	got.Drop = nil
	// benchhost (group block).
	want.HaveRequest, want.RqCmdFlags = true, offset("request", "cmd_flags")
	if got != want {
		t.Errorf("layout\n got %+v\nwant %+v", got, want)
	}
	t.Logf("%+v", got)
}

func findMember(typ btf.Type, name string) (uint32, btf.Type, bool) {
	var members []btf.Member
	switch v := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		members = v.Members
	case *btf.Union:
		members = v.Members
	default:
		return 0, nil, false
	}
	for _, m := range members {
		if m.Name == "" {
			if off, t, ok := findMember(m.Type, name); ok {
				return uint32(m.Offset.Bytes()) + off, t, true
			}
			continue
		}
		if m.Name == name {
			return uint32(m.Offset.Bytes()), m.Type, true
		}
	}
	return 0, nil, false
}
