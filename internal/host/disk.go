package host

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v4/disk"
)

// ignoredDisks are devices whose traffic is not disk traffic, or is
// counted again elsewhere: RAM disks, zram, loop devices and floppies, as
// node_exporter ignores by default.
var ignoredDisks = regexp.MustCompile(`^(z?ram|loop|fd)\d+$`)

type diskCollector struct {
	ctx                   context.Context
	ioCounters            func(ctx context.Context, names ...string) (map[string]disk.IOCountersStat, error) // the source; tests replace it
	success               *prometheus.Desc
	sysBlock              string // /sys/block: whole disks, no partitions
	readBytes, writeBytes *prometheus.Desc
	reads, writes         *prometheus.Desc
}

func newDiskCollector(ctx context.Context) *diskCollector {
	d := func(name, help string) *prometheus.Desc { return desc(name, help, "disk") }
	return &diskCollector{
		ctx:        ctx,
		ioCounters: disk.IOCountersWithContext,
		success:    successDesc("disk"),
		sysBlock:   "/sys/block",
		readBytes:  d("statexec_disk_read_bytes_total", "Bytes read from the disk."),
		writeBytes: d("statexec_disk_write_bytes_total", "Bytes written to the disk."),
		reads:      d("statexec_disk_reads_completed_total", "Reads completed by the disk."),
		writes:     d("statexec_disk_writes_completed_total", "Writes completed by the disk."),
	}
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.readBytes, c.writeBytes, c.reads, c.writes, c.success} {
		ch <- d
	}
}

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.ioCounters(c.ctx)
	reportSuccess(ch, c.success, c.readBytes, err)
	if err != nil {
		return
	}
	names := make([]string, 0, len(stats))
	for name := range stats {
		if c.counted(name) {
			names = append(names, name)
		}
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

// counted tells whether a device of /proc/diskstats gets series: whole
// disks only (a partition's bytes are already in its disk's, so summing
// both would count them twice), without the ignored kinds. When /sys/block
// cannot be read every device is counted rather than none.
func (c *diskCollector) counted(name string) bool {
	if ignoredDisks.MatchString(name) {
		return false
	}
	if _, err := os.Stat(c.sysBlock); err != nil {
		return true
	}
	// sysfs spells a "/" in a device name (cciss/c0d0) as "!".
	_, err := os.Stat(filepath.Join(c.sysBlock, strings.ReplaceAll(name, "/", "!")))
	return err == nil
}
