package host

import (
	"context"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/disk"
)

type diskCollector struct {
	ctx                   context.Context
	readBytes, writeBytes *prometheus.Desc
	reads, writes         *prometheus.Desc
}

func newDiskCollector(ctx context.Context) *diskCollector {
	d := func(name, help string) *prometheus.Desc { return desc(name, help, "disk") }
	return &diskCollector{
		ctx:        ctx,
		readBytes:  d("statexec_disk_read_bytes_total", "Bytes read from the disk."),
		writeBytes: d("statexec_disk_write_bytes_total", "Bytes written to the disk."),
		reads:      d("statexec_disk_reads_completed_total", "Reads completed by the disk."),
		writes:     d("statexec_disk_writes_completed_total", "Writes completed by the disk."),
	}
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.readBytes, c.writeBytes, c.reads, c.writes} {
		ch <- d
	}
}

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := disk.IOCountersWithContext(c.ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.readBytes, err)
		return
	}
	names := make([]string, 0, len(stats))
	for name := range stats {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s := stats[name]
		counter := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name)
		}
		counter(c.readBytes, s.ReadBytes)
		counter(c.writeBytes, s.WriteBytes)
		counter(c.reads, s.ReadCount)
		counter(c.writes, s.WriteCount)
	}
}
