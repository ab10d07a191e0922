//go:build linux

package probe

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// TestObjectsHaveNoCORE: every group's object must load without the
// kernel's whole BTF being decoded: one CO-RE relocation in any program
// makes cilium/ebpf decode it (measured: ~15 ms of CPU and ~3 MiB a run,
// for each object that has one). A vmlinux.h member access makes one,
// also of UAPI structs (bpf_sock_ops, bpf_raw_tracepoint_args,
// bpf_pidns_info): use local structs or plain offsets (common.h).
func TestObjectsHaveNoCORE(t *testing.T) {
	objects := map[string]func() (*ebpf.CollectionSpec, error){
		"block": loadBlock, "dns": loadDns, "drop": loadDrop, "net": loadNet,
		"runq": loadRunq, "sched": loadSched, "tcp": loadTcp,
	}
	for group, load := range objects {
		spec, err := load()
		if err != nil {
			t.Fatalf("%s: %v", group, err)
		}
		for name, prog := range spec.Programs {
			for i := range prog.Instructions {
				if r := btf.CORERelocationMetadata(&prog.Instructions[i]); r != nil {
					t.Errorf("%s/%s: CO-RE relocation at instruction %d: %v", group, name, i, r)
				}
			}
			// tp_btf, fentry and the like need the kernel BTF to find
			// their target: the same cost.
			if prog.Type == ebpf.Tracing {
				t.Errorf("%s/%s: program type %v needs the kernel BTF at load", group, name, prog.Type)
			}
		}
	}
}
