//go:build linux

package probe

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type dns_counters dns ../../bpf/dns.bpf.c -- -I../../bpf

// dnsGroup: DNS over UDP port 53 of the tree's sockets, from cgroup_skb
// programs of their own on the run's cgroup (the net group's byte
// counters stay as they are).
type dnsGroup struct {
	objs  dnsObjects
	links links
	cpus  []dnsDnsCounters // reused per-CPU read buffer
	last  dnsDnsCounters

	queries, responses, latency *prometheus.Desc
	series                      seriesSet
	hist                        *log2Hist
}

// dnsRcodes names the response codes exported one by one (RFC 1035,
// 2136); every other code is "other".
var dnsRcodes = map[int]string{0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

// dnsRcodeLabels are byRcode's keys, each exported at every sample.
var dnsRcodeLabels = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other"}

// The latency buckets: "le" at powers of two from 2^14 ns (16.4 us) to
// 2^32 ns (4.29 s); the BPF slots are [2^k, 2^(k+1)) ns.
const (
	dnsMinLeLog2 = 14
	dnsMaxLeLog2 = 32
)

func loadDNSGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadDns()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	if err := setVariables(spec, commonVariables(env.cg, l)); err != nil {
		return nil, err
	}
	g := &dnsGroup{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if err := g.links.cgroup(env.cg, g.objs.DnsEgress, ebpf.AttachCGroupInetEgress); err != nil {
		return nil, err
	}
	if err := g.links.cgroup(env.cg, g.objs.DnsIngress, ebpf.AttachCGroupInetIngress); err != nil {
		return nil, err
	}
	d := env.desc
	g.queries = d("statexec_process_dns_queries_total", "DNS queries sent by the command's tree over UDP to port 53 (IPv4 and IPv6; not DNS over TCP, DoT or DoH, nor queries a resolver daemon outside the run makes for it).")
	g.responses = d("statexec_process_dns_responses_total", "DNS responses received by the command's tree over UDP from port 53, by response code (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, FORMERR, NOTIMP, other).", "rcode")
	g.latency = d("statexec_process_dns_latency_seconds", "Time from a DNS query of the command's tree to its response, matched by transaction id and client port (UDP port 53).")
	return g, nil
}

func (g *dnsGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF dns counters: %w", err)
	}
	var sum dnsDnsCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		sum.Queries += c.Queries
		sum.LatencyNs += c.LatencyNs
		for j := range c.Responses {
			sum.Responses[j] += c.Responses[j]
		}
		for j := range c.LatencyHist {
			sum.LatencyHist[j] += c.LatencyHist[j]
		}
	}
	g.last = sum
	return nil
}

// byRcode sums the responses by label; every label is present.
func (g *dnsGroup) byRcode() map[string]uint64 {
	out := map[string]uint64{"other": 0}
	for _, name := range dnsRcodes {
		out[name] = 0
	}
	for code, n := range g.last.Responses {
		name, ok := dnsRcodes[code]
		if !ok {
			name = "other"
		}
		out[name] += n
	}
	return out
}

func (g *dnsGroup) describe(ch chan<- *prometheus.Desc) {
	ch <- g.queries
	ch <- g.responses
	ch <- g.latency
}

func (g *dnsGroup) collect(emit func(prometheus.Metric)) {
	b, s := &g.last, &g.series
	emit(s.counter(g.queries).With0().Set(float64(b.Queries)))
	by := g.byRcode()
	// In a fixed order: the same metrics in the same order at every
	// tick let the sampler reuse its gather.
	for _, rcode := range dnsRcodeLabels {
		emit(s.counter(g.responses).With1(rcode).Set(float64(by[rcode])))
	}
	if g.hist == nil {
		g.hist = newLog2Hist(g.latency, len(b.LatencyHist), dnsMinLeLog2, min(dnsMaxLeLog2, len(b.LatencyHist)-1)) // the last slot has no end
	}
	emit(g.hist.set(b.LatencyHist[:], float64(b.LatencyNs)/1e9))
}

func (g *dnsGroup) summarize(s *Summary) {
	if line := dnsSummary(g.last.Queries, g.byRcode(), &g.last.LatencyHist); line != "" {
		s.Lines = append(s.Lines, line)
	}
}

// dnsSummary: "dns: 20 queries, 20 responses, 5 failed (NXDOMAIN 5),
// latency p50 20.1ms p99 20.9ms"; "" without DNS traffic.
func dnsSummary(queries uint64, by map[string]uint64, hist *[histSlots]uint64) string {
	var responses, failed uint64
	var parts []string
	for _, name := range []string{"NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "NOTIMP", "other"} {
		if n := by[name]; n > 0 {
			failed += n
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	for _, n := range by {
		responses += n
	}
	if queries == 0 && responses == 0 {
		return ""
	}
	line := fmt.Sprintf("dns: %d queries, %d responses", queries, responses)
	if failed > 0 {
		line += fmt.Sprintf(", %d failed (%s)", failed, strings.Join(parts, ", "))
	}
	if queries > responses {
		line += fmt.Sprintf(", %d unanswered", queries-responses)
	}
	var matched uint64
	for _, n := range hist {
		matched += n
	}
	if matched > 0 {
		line += fmt.Sprintf(", latency p50 %v p99 %v", histQuantile(hist, 0.50).Round(10e3), histQuantile(hist, 0.99).Round(10e3))
	}
	return line
}

func (g *dnsGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
