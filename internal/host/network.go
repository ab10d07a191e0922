package host

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/net"
)

type networkCollector struct {
	ctx                      context.Context
	ioCounters               func(ctx context.Context, perNIC bool) ([]net.IOCountersStat, error) // the source; tests replace it
	success                  *prometheus.Desc
	sentBytes, recvBytes     *prometheus.Desc
	sentPackets, recvPackets *prometheus.Desc
	sentErrors, recvErrors   *prometheus.Desc
	sentDrops, recvDrops     *prometheus.Desc
}

func newNetworkCollector(ctx context.Context) *networkCollector {
	d := func(name, help string) *prometheus.Desc { return desc(name, help, "interface") }
	return &networkCollector{
		ctx:         ctx,
		ioCounters:  net.IOCountersWithContext,
		success:     successDesc("network"),
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

func (c *networkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sentBytes, c.recvBytes, c.sentPackets, c.recvPackets, c.sentErrors, c.recvErrors, c.sentDrops, c.recvDrops, c.success} {
		ch <- d
	}
}

func (c *networkCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.ioCounters(c.ctx, true)
	reportSuccess(ch, c.success, c.sentBytes, err)
	if err != nil {
		return
	}
	for _, n := range counters {
		counter := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), n.Name)
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
