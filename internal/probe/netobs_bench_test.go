package probe

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkNetobsDropHook: what the drop group's kfree_skb program costs
// per drop, from the kernel's own BPF run-time statistics (the program's
// run time only: the tracepoint's dispatch adds a few tens of ns). A
// helper in the run sends b.N UDP datagrams that an nft rule drops (each
// one counted), then the same helper outside the run (each one filtered
// out by the socket's cgroup). Run from scripts/bench.sh:
//
//	go test -run '^$' -bench NetobsDropHook -benchtime 100000x ./internal/probe/
func BenchmarkNetobsDropHook(b *testing.B) {
	s := startEBPF(b)
	g, ok := s.group("drop").(*dropGroup)
	if !ok {
		b.Skip("drop group off")
	}
	ns := nobNetns(b, "bench")
	rules := filepath.Join(b.TempDir(), "rules.nft")
	if err := os.WriteFile(rules, []byte("table inet nobbench {\n chain out {\n  type filter hook output priority 0; policy accept;\n  udp dport 9 counter drop\n }\n}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	nobNsRun(b, ns, "nft", "-f", rules)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	prog := g.objs.OnKfreeSkb
	perDrop := func(inRun bool) float64 {
		b.Helper()
		before, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		var sess *Session
		if inRun {
			sess = s
		}
		cmd := nobNsHelper(ns, sess, "nobudp", "HELPER_ADDR=127.0.0.1:9", "HELPER_N="+itoa(b.N))
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		after, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		runs := after.RunCount - before.RunCount
		if runs < uint64(b.N) {
			b.Fatalf("%d runs of the hook for %d drops", runs, b.N)
		}
		return float64(after.Runtime-before.Runtime) / float64(runs)
	}
	b.ResetTimer()
	counted := perDrop(true)
	other := perDrop(false)
	b.StopTimer()
	b.ReportMetric(counted, "ns/counted-drop")
	b.ReportMetric(other, "ns/other-drop")
	if s.CommandEnded(); g.byReason()["NETFILTER_DROP"] < uint64(b.N) {
		b.Errorf("NETFILTER_DROP = %d, want >= %d", g.byReason()["NETFILTER_DROP"], b.N)
	}
}

// BenchmarkNetobsPacketHooks: run time per packet of the cgroup_skb
// programs (net: counters and the peer parse; dns: the UDP port 53
// check), from the kernel's BPF statistics, over a loopback TCP transfer
// of b.N 64 KiB writes in the run.
func BenchmarkNetobsPacketHooks(b *testing.B) {
	s := startEBPF(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	progs := map[string]*ebpf.Program{}
	if g, ok := s.group("net").(*netGroup); ok {
		progs["net-egress"], progs["net-ingress"] = g.objs.CountEgress, g.objs.CountIngress
	}
	if g, ok := s.group("dns").(*dnsGroup); ok {
		progs["dns-egress"], progs["dns-ingress"] = g.objs.DnsEgress, g.objs.DnsIngress
	}
	before := map[string]*ebpf.ProgramStats{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		before[name] = st
	}
	b.ResetTimer()
	runChild(b, s, helperEnv+"=net", "HELPER_BYTES="+itoa(b.N*64<<10))
	b.StopTimer()
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if n := st.RunCount - before[name].RunCount; n > 0 {
			b.ReportMetric(float64(st.Runtime-before[name].Runtime)/float64(n), "ns/"+name)
		}
	}
}
