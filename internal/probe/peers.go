//go:build linux

package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

// maxNamedPeers bounds the peer label: at most this many peers get a
// label of their own, the rest are peer="other".
const maxNamedPeers = 16

// peerOther is the label of every peer without a name of its own.
const peerOther = "other"

// peerProtocols are the protocol labels, in the order of the BPF
// overflow slots (bpf/net.bpf.c proto_slot).
var peerProtocols = [3]string{"tcp", "udp", "other"}

// peerTable turns the BPF peers map into bounded, never decreasing
// series. The promotion rule: at each sample, the peers seen for the
// first time are ranked by their bytes so far, and take free names in
// that order until 16 peers have one. A peer seen at an earlier sample
// without a name never gets one later, and a named peer keeps its name,
// so no bytes ever move between "other" and a named peer: every series
// is a sum of counters that only grow.
type peerTable struct {
	seen  map[netPeerKey]bool
	named []netPeerKey
	last  map[netPeerKey]netPeerBytes
	// overflow is the BPF per-protocol bytes in no peers entry.
	overflowTx, overflowRx [3]uint64

	ncpu int
	keys []netPeerKey
	vals []netPeerBytes

	sent, received *prometheus.Desc
	metrics        seriesSet
}

func newPeerTable(desc func(name, help string, labels ...string) *prometheus.Desc) (*peerTable, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	const chunk = 256
	return &peerTable{
		seen:     map[netPeerKey]bool{},
		last:     map[netPeerKey]netPeerBytes{},
		ncpu:     ncpu,
		keys:     make([]netPeerKey, chunk),
		vals:     make([]netPeerBytes, chunk*ncpu),
		sent:     desc("statexec_process_network_peer_sent_bytes_total", "Bytes sent by sockets of the command's tree, IP and transport headers included, by remote end (ip:port, [ipv6]:port): the first 16 peers to appear (ranked by bytes at the sample they appear), every other under peer=\"other\"; they add up to statexec_process_network_sent_bytes_total.", "peer", "protocol"),
		received: desc("statexec_process_network_peer_received_bytes_total", "Bytes received by sockets of the command's tree, IP and transport headers included, by remote end, bounded like the sent bytes; they add up to statexec_process_network_received_bytes_total.", "peer", "protocol"),
	}, nil
}

// read sums the per-CPU peers map.
func (t *peerTable) read(m *ebpf.Map) (map[netPeerKey]netPeerBytes, error) {
	cur := make(map[netPeerKey]netPeerBytes, len(t.last))
	var cursor ebpf.MapBatchCursor
	// Bounded: the map holds at most PEERS_MAX (4096) entries.
	for range 4096/len(t.keys) + 2 {
		n, err := m.BatchLookup(&cursor, t.keys, t.vals, nil)
		for i := range n {
			var sum netPeerBytes
			for _, v := range t.vals[i*t.ncpu : (i+1)*t.ncpu] {
				sum.Tx += v.Tx
				sum.Rx += v.Rx
			}
			cur[t.keys[i]] = sum
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return cur, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read BPF peers: %w", err)
		}
	}
	return nil, errors.New("read BPF peers: map longer than its size")
}

// update applies the promotion rule to a new reading.
func (t *peerTable) update(cur map[netPeerKey]netPeerBytes, c *netNetCounters) {
	var fresh []netPeerKey
	for k := range cur {
		if !t.seen[k] {
			fresh = append(fresh, k)
		}
	}
	sort.Slice(fresh, func(i, j int) bool {
		a, b := cur[fresh[i]], cur[fresh[j]]
		if a.Tx+a.Rx != b.Tx+b.Rx {
			return a.Tx+a.Rx > b.Tx+b.Rx
		}
		return peerLabel(fresh[i]) < peerLabel(fresh[j]) // deterministic
	})
	for _, k := range fresh {
		t.seen[k] = true
		if len(t.named) < maxNamedPeers {
			t.named = append(t.named, k)
		}
	}
	t.last = cur
	t.overflowTx, t.overflowRx = c.PeerOverflowTx, c.PeerOverflowRx
}

// peerLabel is "ip:port" or "[ipv6]:port".
func peerLabel(k netPeerKey) string {
	var b [16]byte
	for i, w := range k.Addr {
		// The address words are the packet's bytes in memory order.
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	var a netip.Addr
	if k.Family == 4 {
		a = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		a = netip.AddrFrom16(b)
	}
	return netip.AddrPortFrom(a, k.Port).String()
}

func protoSlot(p uint8) int {
	switch p {
	case 6:
		return 0
	case 17:
		return 1
	}
	return 2
}

// peerSeries is one exported series.
type peerSeries struct {
	peer, protocol string
	tx, rx         uint64
}

// series lists the named peers, then "other" per protocol where it has
// bytes (once it has, it keeps them).
func (t *peerTable) series() []peerSeries {
	var out []peerSeries
	isNamed := make(map[netPeerKey]bool, len(t.named))
	for _, k := range t.named {
		isNamed[k] = true
		v := t.last[k]
		out = append(out, peerSeries{peerLabel(k), peerProtocols[protoSlot(k.Proto)], v.Tx, v.Rx})
	}
	var otx, orx [3]uint64
	for i := range otx {
		otx[i], orx[i] = t.overflowTx[i], t.overflowRx[i]
	}
	for k, v := range t.last {
		if !isNamed[k] {
			otx[protoSlot(k.Proto)] += v.Tx
			orx[protoSlot(k.Proto)] += v.Rx
		}
	}
	for i, p := range peerProtocols {
		if otx[i] != 0 || orx[i] != 0 {
			out = append(out, peerSeries{peerOther, p, otx[i], orx[i]})
		}
	}
	return out
}

func (t *peerTable) describe(ch chan<- *prometheus.Desc) {
	ch <- t.sent
	ch <- t.received
}

func (t *peerTable) collect(emit func(prometheus.Metric)) {
	for _, s := range t.series() {
		emit(t.metrics.counter(t.sent).With2(s.peer, s.protocol).Set(float64(s.tx)))
		emit(t.metrics.counter(t.received).With2(s.peer, s.protocol).Set(float64(s.rx)))
	}
}

// summary: "peers: 5 (top by bytes: 127.0.0.1:5201/tcp 3.0 MiB, ...)",
// "" when the run had no TCP/UDP peer.
func (t *peerTable) summary() string {
	list := t.series()
	if len(t.seen) == 0 {
		return ""
	}
	var named []peerSeries
	for _, s := range list {
		if s.peer != peerOther {
			named = append(named, s)
		}
	}
	sort.SliceStable(named, func(i, j int) bool { return named[i].tx+named[i].rx > named[j].tx+named[j].rx })
	var parts []string
	for i, s := range named {
		if i == 3 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s/%s %s", s.peer, s.protocol, ibytes(s.tx+s.rx)))
	}
	return fmt.Sprintf("peers: %d (top by bytes: %s)", len(t.seen), strings.Join(parts, ", "))
}

// ibytes formats a byte count with binary prefixes.
func ibytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for ; v >= unit && i < 4; i++ {
		v /= unit
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}
