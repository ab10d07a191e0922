//go:build linux

package probe

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type net_counters -type peer_key -type peer_bytes net ../../bpf/net.bpf.c -- -I../../bpf

// netGroup: bytes and packets of the tree's sockets, from cgroup_skb
// programs on the run's cgroup (they see only its sockets).
type netGroup struct {
	objs  netObjects
	links links
	cpus  []netNetCounters // reused per-CPU read buffer
	last  netNetCounters
	peers *peerTable

	sentBytes, recvBytes, sentPkts, recvPkts *prometheus.Desc
	series                                   seriesSet
}

func loadNetGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadNet()
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
	g := &netGroup{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if err := g.links.cgroup(env.cg, g.objs.CountEgress, ebpf.AttachCGroupInetEgress); err != nil {
		return nil, err
	}
	if err := g.links.cgroup(env.cg, g.objs.CountIngress, ebpf.AttachCGroupInetIngress); err != nil {
		return nil, err
	}
	d := env.desc
	if g.peers, err = newPeerTable(d); err != nil {
		return nil, err
	}
	g.sentBytes = d("statexec_process_network_sent_bytes_total", "Bytes sent by sockets of the command's tree, IP and transport headers included (cgroup_skb egress).")
	g.recvBytes = d("statexec_process_network_received_bytes_total", "Bytes received by sockets of the command's tree, IP and transport headers included (cgroup_skb ingress).")
	g.sentPkts = d("statexec_process_network_sent_packets_total", "Packets sent by sockets of the command's tree (GSO segments counted).")
	g.recvPkts = d("statexec_process_network_received_packets_total", "Packets received by sockets of the command's tree (GRO segments counted).")
	return g, nil
}

func (g *netGroup) sample() error {
	// The peers first: bytes of packets in flight meanwhile reach the
	// totals, not the peers, so named + other <= total at every sample
	// (equal once the traffic stopped).
	peers, err := g.peers.read(g.objs.Peers)
	if err != nil {
		return err
	}
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF net counters: %w", err)
	}
	var sum netNetCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		sum.TxBytes += c.TxBytes
		sum.TxPackets += c.TxPackets
		sum.RxBytes += c.RxBytes
		sum.RxPackets += c.RxPackets
		for j := range sum.PeerOverflowTx {
			sum.PeerOverflowTx[j] += c.PeerOverflowTx[j]
			sum.PeerOverflowRx[j] += c.PeerOverflowRx[j]
		}
	}
	g.last = sum
	g.peers.update(peers, &sum)
	return nil
}

func (g *netGroup) describe(ch chan<- *prometheus.Desc) {
	ch <- g.sentBytes
	ch <- g.recvBytes
	ch <- g.sentPkts
	ch <- g.recvPkts
	g.peers.describe(ch)
}

func (g *netGroup) collect(emit func(prometheus.Metric)) {
	b, s := &g.last, &g.series
	emit(s.counter(g.sentBytes).With0().Set(float64(b.TxBytes)))
	emit(s.counter(g.recvBytes).With0().Set(float64(b.RxBytes)))
	emit(s.counter(g.sentPkts).With0().Set(float64(b.TxPackets)))
	emit(s.counter(g.recvPkts).With0().Set(float64(b.RxPackets)))
	g.peers.collect(emit)
}

func (g *netGroup) summarize(s *Summary) {
	s.HaveNetwork = true
	s.SentBytes, s.ReceivedBytes = g.last.TxBytes, g.last.RxBytes
	if line := g.peers.summary(); line != "" {
		s.Lines = append(s.Lines, line)
	}
}

func (g *netGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
