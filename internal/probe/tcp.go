//go:build linux

package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type tcp_counters -type tcp_peer tcp ../../bpf/tcp.bpf.c -- -I../../bpf

// tcpFailErrors names the failure kinds in the order of bpf/tcp.bpf.c.
var tcpFailErrors = [...]string{"ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ECONNRESET", "other"}

// tcpStates names the label values of the connections gauge by the
// kernel's TCP state numbers (include/net/tcp_states.h); CLOSE and
// NEW_SYN_RECV (request mini sockets) are not live connections.
var tcpStates = [...]string{
	1:  "established",
	2:  "syn_sent",
	3:  "syn_recv",
	4:  "fin_wait1",
	5:  "fin_wait2",
	6:  "time_wait",
	8:  "close_wait",
	9:  "last_ack",
	10: "listen",
	11: "closing",
}

// Exposed bucket bounds ("le" at powers of two, exact for log2 slots).
const (
	connectMinLe = 12 // 4.1 us
	connectMaxLe = 35 // 34 s (a SYN timed out after retries takes longer)
	rttMinLe     = 14 // 16.4 us
	rttMaxLe     = 32 // 4.3 s
)

// tcpGroup: TCP health of the tree's sockets, from a sock_ops program on
// the run's cgroup and the reset tracepoints.
type tcpGroup struct {
	objs  tcpObjects
	links links
	cpus  []tcpTcpCounters // reused per-CPU read buffer
	last  tcpTcpCounters
	peers [len(tcpFailErrors)]tcpTcpPeer

	opened, failed, connectDur, retrans, rto, rtt, resets, conns *prometheus.Desc
	series                                                       seriesSet
	connectHist, rttHist                                         *log2Hist
}

func loadTCPGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadTcp()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	if !l.HaveSkCgrp {
		return nil, errors.New("kernel has no socket cgroup data (CONFIG_SOCK_CGROUP_DATA)")
	}
	vars := commonVariables(env.cg, l)
	vars["off_sk_err"] = l.SkErr
	vars["off_sk_state"] = l.SkState
	if err := setVariables(spec, vars); err != nil {
		return nil, err
	}
	g := &tcpGroup{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if err := g.links.cgroup(env.cg, g.objs.TcpSockops, ebpf.AttachCGroupSockOps); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnTcpSendReset, "tcp_send_reset"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnTcpReceiveReset, "tcp_receive_reset"); err != nil {
		return nil, err
	}
	d := env.desc
	g.opened = d("statexec_process_tcp_connections_opened_total", "TCP connections of the command's tree that reached ESTABLISHED, by direction (active: connect, passive: accept).", "direction")
	g.failed = d("statexec_process_tcp_connections_failed_total", "TCP connects of the command's tree that never reached ESTABLISHED, by the socket's error (other: none, e.g. closed while connecting).", "error")
	g.connectDur = d("statexec_process_tcp_connect_duration_seconds", "Time from connect() to ESTABLISHED of the command's tree's TCP connections.")
	g.retrans = d("statexec_process_tcp_retransmitted_segments_total", "TCP segments retransmitted by the command's tree's sockets (what TcpRetransSegs counts, per socket, SYN-ACK retransmits of listeners excepted).")
	g.rto = d("statexec_process_tcp_retransmit_timeouts_total", "Retransmission timeouts (RTO) of the command's tree's TCP sockets.")
	g.rtt = d("statexec_process_tcp_rtt_seconds", "Smoothed RTT of the command's tree's TCP sockets, one sample per ACK that updated it.")
	g.resets = d("statexec_process_tcp_resets_total", "TCP resets sent and received by the command's tree's sockets.", "direction")
	g.conns = d("statexec_process_tcp_connections", tcpConnectionsHelp, "state")
	return g, nil
}

func (g *tcpGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF tcp counters: %w", err)
	}
	var sum tcpTcpCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		sum.OpenedActive += c.OpenedActive
		sum.OpenedPassive += c.OpenedPassive
		for j := range c.Failed {
			sum.Failed[j] += c.Failed[j]
		}
		sum.RetransSegs += c.RetransSegs
		sum.Rto += c.Rto
		sum.ResetsSent += c.ResetsSent
		sum.ResetsReceived += c.ResetsReceived
		sum.SegsOut += c.SegsOut
		sum.ConnectNs += c.ConnectNs
		sum.RttNs += c.RttNs
		for j := range c.ConnectHist {
			sum.ConnectHist[j] += c.ConnectHist[j]
			sum.RttHist[j] += c.RttHist[j]
		}
		for j := range c.States {
			sum.States[j] += c.States[j]
		}
	}
	g.last = sum
	return nil
}

func (g *tcpGroup) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{g.opened, g.failed, g.connectDur, g.retrans, g.rto, g.rtt, g.resets, g.conns} {
		ch <- d
	}
}

func (g *tcpGroup) collect(emit func(prometheus.Metric)) {
	b, s := &g.last, &g.series
	emit(s.counter(g.opened).With1("active").Set(float64(b.OpenedActive)))
	emit(s.counter(g.opened).With1("passive").Set(float64(b.OpenedPassive)))
	for i, name := range tcpFailErrors {
		emit(s.counter(g.failed).With1(name).Set(float64(b.Failed[i])))
	}
	if g.connectHist == nil {
		g.connectHist = newLog2Hist(g.connectDur, len(b.ConnectHist), connectMinLe, connectMaxLe)
		g.rttHist = newLog2Hist(g.rtt, len(b.RttHist), rttMinLe, rttMaxLe)
	}
	emit(g.connectHist.set(b.ConnectHist[:], float64(b.ConnectNs)/1e9))
	emit(s.counter(g.retrans).With0().Set(float64(b.RetransSegs)))
	emit(s.counter(g.rto).With0().Set(float64(b.Rto)))
	emit(g.rttHist.set(b.RttHist[:], float64(b.RttNs)/1e9))
	emit(s.counter(g.resets).With1("sent").Set(float64(b.ResetsSent)))
	emit(s.counter(g.resets).With1("received").Set(float64(b.ResetsReceived)))
	for st, name := range tcpStates {
		if name != "" && st < len(b.States) {
			// The sum over CPUs is never negative; a read racing an
			// update on two CPUs could be for a moment.
			emit(s.gauge(g.conns).With1(name).Set(float64(max(b.States[st], 0))))
		}
	}
}

func (g *tcpGroup) summarize(s *Summary) {
	b := &g.last
	var failed uint64
	top := -1
	for i, n := range b.Failed {
		failed += n
		if n > 0 && (top < 0 || n > b.Failed[top]) {
			top = i
		}
	}
	if b.OpenedActive+b.OpenedPassive+failed+b.RetransSegs+b.ResetsSent+b.ResetsReceived == 0 {
		s.Lines = append(s.Lines, "tcp: no connections")
		return
	}
	var line strings.Builder
	fmt.Fprintf(&line, "tcp: %d connections opened (%d active, %d passive), %d failed",
		b.OpenedActive+b.OpenedPassive, b.OpenedActive, b.OpenedPassive, failed)
	if top >= 0 {
		fmt.Fprintf(&line, " (%d %s", b.Failed[top], tcpFailErrors[top])
		if err := g.objs.FailPeers.Lookup(uint32(top), &g.peers[top]); err == nil {
			if peer := g.peers[top].String(); peer != "" {
				fmt.Fprintf(&line, ", last to %s", peer)
			}
		}
		line.WriteString(")")
	}
	fmt.Fprintf(&line, "; %d segments retransmitted", b.RetransSegs)
	if b.SegsOut > 0 {
		fmt.Fprintf(&line, " (%.2f%% of %d sent)", 100*float64(b.RetransSegs)/float64(b.SegsOut), b.SegsOut)
	}
	fmt.Fprintf(&line, ", %d timeouts", b.Rto)
	if rtts, _ := log2Buckets(b.RttHist[:], rttMinLe, rttMaxLe); rtts > 0 {
		fmt.Fprintf(&line, "; rtt p50 %s, p99 %s", log2Quantile(b.RttHist[:], 0.5).Round(time.Microsecond), log2Quantile(b.RttHist[:], 0.99).Round(time.Microsecond))
	}
	fmt.Fprintf(&line, "; resets %d sent, %d received", b.ResetsSent, b.ResetsReceived)
	s.Lines = append(s.Lines, line.String())
}

// String formats the peer as ip:port, "" when none was recorded.
func (p *tcpTcpPeer) String() string {
	// sock_ops gives the remote port in network byte order, in the
	// upper half of the word on little-endian hosts.
	port := p.Port
	if port > 0xffff {
		port >>= 16
	}
	port = uint32(port>>8&0xff | port&0xff<<8)
	var addr netip.Addr
	switch p.Family {
	case 2: // AF_INET
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], p.Addr[0])
		addr = netip.AddrFrom4(a)
	case 10: // AF_INET6
		var a [16]byte
		for i, w := range p.Addr {
			binary.LittleEndian.PutUint32(a[4*i:], w)
		}
		addr = netip.AddrFrom16(a).Unmap()
	default:
		return ""
	}
	return netip.AddrPortFrom(addr, uint16(port)).String()
}

func (g *tcpGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
