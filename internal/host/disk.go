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

	"github.com/statexec/statexec/internal/constmetric"
)

// ignoredDisks are devices whose traffic is not disk traffic, or is
// counted again elsewhere: RAM disks, zram, loop devices and floppies, as
// node_exporter ignores by default.
var ignoredDisks = regexp.MustCompile(`^(z?ram|loop|fd)\d+$`)

type diskCollector struct {
	ctx                   context.Context
	ioCounters            func(ctx context.Context, names ...string) (map[string]disk.IOCountersStat, error) // the source; tests replace it
	success               success
	sysBlock              string // /sys/block: whole disks, no partitions
	readBytes, writeBytes *constmetric.Vec
	reads, writes         *constmetric.Vec
	// wholeDisks are the devices found in sysBlock so far: a disk stays
	// one, so it is looked up once, and one that appears later is found.
	wholeDisks map[string]bool
	names      []string
}

func newDiskCollector(ctx context.Context, l prometheus.Labels) *diskCollector {
	ds := descs(l)
	d := func(name, help string) *constmetric.Vec {
		return constmetric.NewVec(ds.desc(name, help, "disk"), prometheus.CounterValue)
	}
	return &diskCollector{
		ctx:        ctx,
		ioCounters: newDiskstatsSource(procRoot()).ioCounters,
		success:    newSuccess(ds.successDesc("disk")),
		wholeDisks: map[string]bool{},
		sysBlock:   "/sys/block",
		readBytes:  d("statexec_disk_read_bytes_total", "Bytes read from the disk."),
		writeBytes: d("statexec_disk_write_bytes_total", "Bytes written to the disk."),
		reads:      d("statexec_disk_reads_completed_total", "Reads completed by the disk."),
		writes:     d("statexec_disk_writes_completed_total", "Writes completed by the disk."),
	}
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range []*constmetric.Vec{c.readBytes, c.writeBytes, c.reads, c.writes} {
		ch <- v.Desc()
	}
	ch <- c.success.m.Desc()
}

// Collect implements prometheus.Collector.
func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	c.Emit(func(m prometheus.Metric) { ch <- m })
}

// Emit is Collect without a channel (sampler.Emitter).
func (c *diskCollector) Emit(emit func(prometheus.Metric)) {
	stats, err := c.ioCounters(c.ctx)
	c.success.report(emit, c.readBytes.Desc(), err)
	if err != nil {
		return
	}
	names := c.names[:0]
	for name := range stats {
		if c.counted(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	c.names = names
	for _, name := range names {
		s := stats[name]
		counter := func(v *constmetric.Vec, x uint64) {
			emit(v.With1(name).Set(float64(x)))
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
	if c.wholeDisks[name] {
		return true
	}
	if ignoredDisks.MatchString(name) {
		return false
	}
	if _, err := os.Stat(c.sysBlock); err != nil {
		return true
	}
	// sysfs spells a "/" in a device name (cciss/c0d0) as "!".
	_, err := os.Stat(filepath.Join(c.sysBlock, strings.ReplaceAll(name, "/", "!")))
	if err == nil && c.wholeDisks != nil {
		c.wholeDisks[name] = true
	}
	return err == nil
}
