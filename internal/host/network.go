package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/net"

	"github.com/statexec/statexec/internal/constmetric"
)

type networkCollector struct {
	ctx                      context.Context
	ioCounters               func(ctx context.Context, perNIC bool) ([]net.IOCountersStat, error) // the source; tests replace it
	success                  success
	sentBytes, recvBytes     *constmetric.Vec
	sentPackets, recvPackets *constmetric.Vec
	sentErrors, recvErrors   *constmetric.Vec
	sentDrops, recvDrops     *constmetric.Vec
}

func newNetworkCollector(ctx context.Context, l prometheus.Labels) *networkCollector {
	ds := descs(l)
	d := func(name, help string) *constmetric.Vec {
		return constmetric.NewVec(ds.desc(name, help, "interface"), prometheus.CounterValue)
	}
	return &networkCollector{
		ctx:         ctx,
		ioCounters:  newNetDevSource(procRoot()).ioCounters,
		success:     newSuccess(ds.successDesc("network")),
		sentBytes:   d("statexec_network_sent_bytes_total", "Bytes sent by the interface."),
		recvBytes:   d("statexec_network_received_bytes_total", "Bytes received by the interface."),
		sentPackets: d("statexec_network_sent_packets_total", "Packets sent by the interface."),
		recvPackets: d("statexec_network_received_packets_total", "Packets received by the interface."),
		sentErrors:  d("statexec_network_sent_errors_total", "Transmit errors of the interface."),
		recvErrors:  d("statexec_network_received_errors_total", "Receive errors of the interface."),
		sentDrops:   d("statexec_network_sent_drops_total", "Outgoing packets dropped by the interface."),
		recvDrops:   d("statexec_network_received_drops_total", "Incoming packets dropped by the interface."),
	}
}

func (c *networkCollector) vecs() []*constmetric.Vec {
	return []*constmetric.Vec{c.sentBytes, c.recvBytes, c.sentPackets, c.recvPackets, c.sentErrors, c.recvErrors, c.sentDrops, c.recvDrops}
}

func (c *networkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.vecs() {
		ch <- v.Desc()
	}
	ch <- c.success.m.Desc()
}

// Collect implements prometheus.Collector.
func (c *networkCollector) Collect(ch chan<- prometheus.Metric) {
	c.Emit(func(m prometheus.Metric) { ch <- m })
}

// Emit is Collect without a channel (sampler.Emitter).
func (c *networkCollector) Emit(emit func(prometheus.Metric)) {
	counters, err := c.ioCounters(c.ctx, true)
	c.success.report(emit, c.sentBytes.Desc(), err)
	if err != nil {
		return
	}
	for _, n := range counters {
		counter := func(v *constmetric.Vec, x uint64) {
			emit(v.With1(n.Name).Set(float64(x)))
		}
		counter(c.sentBytes, n.BytesSent)
		counter(c.recvBytes, n.BytesRecv)
		counter(c.sentPackets, n.PacketsSent)
		counter(c.recvPackets, n.PacketsRecv)
		counter(c.sentErrors, n.Errout)
		counter(c.recvErrors, n.Errin)
		counter(c.sentDrops, n.Dropout)
		counter(c.recvDrops, n.Dropin)
	}
}
