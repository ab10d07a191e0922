package host

import (
	"bufio"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/mem"
	gnet "github.com/shirou/gopsutil/v4/net"
	"golang.org/x/sys/unix"
)

// sample gathers every host collector once and returns value by
// series, the series keyed as name{label=value,...}.
func sample(t *testing.T) map[string]float64 {
	t.Helper()
	return gather(t, Collectors(context.Background(), nil)...)
}

func gather(t *testing.T, cs ...prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range cs {
		reg.MustRegister(c)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			out[seriesKey(f.GetName(), m)] = value(m)
		}
	}
	return out
}

func seriesKey(name string, m *dto.Metric) string {
	var vals []string
	for _, l := range m.GetLabel() {
		vals = append(vals, l.GetName()+"="+l.GetValue())
	}
	return name + "{" + strings.Join(vals, ",") + "}"
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// sumWhere adds the series of a family whose key contains every part.
func sumWhere(s map[string]float64, name string, parts ...string) (sum float64, n int) {
	for k, v := range s {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(k, p)
		}
		if ok {
			sum += v
			n++
		}
	}
	return sum, n
}

func meminfoBytes(t *testing.T, field string) float64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		if err != nil {
			t.Fatal(err)
		}
		return kb * 1024
	}
	t.Fatalf("/proc/meminfo has no %s", field)
	return 0
}

func TestCPUSecondsFollowWallTime(t *testing.T) {
	before := sample(t)
	start := time.Now()
	time.Sleep(time.Second)
	after := sample(t)
	wall := time.Since(start).Seconds()

	cores := 0
	for k := range after {
		if strings.HasPrefix(k, "statexec_cpu_seconds_total{") && strings.HasSuffix(k, ",mode=idle}") {
			cores++
		}
	}
	if cores < runtime.NumCPU() {
		t.Fatalf("%d cores have series, this process may run on %d", cores, runtime.NumCPU())
	}
	for c := 0; c < cores; c++ {
		core := "cpu=" + strconv.Itoa(c) + ","
		b, nb := sumWhere(before, "statexec_cpu_seconds_total", core)
		a, na := sumWhere(after, "statexec_cpu_seconds_total", core)
		if nb != 8 || na != 8 {
			t.Fatalf("core %d: %d and %d modes, want 8", c, nb, na)
		}
		// Every mode together advances with the wall clock (USER_HZ ticks,
		// so within a few hundredths of a second).
		if d := a - b; d < 0.7*wall || d > 1.3*wall {
			t.Errorf("core %d: modes advanced %.3f s in %.3f s of wall time", c, d, wall)
		}
	}
}

func TestMemoryMatchesMeminfo(t *testing.T) {
	s := sample(t)
	total := s["statexec_memory_total_bytes{}"]
	if want := meminfoBytes(t, "MemTotal"); total != want {
		t.Errorf("total %.0f, /proc/meminfo says %.0f", total, want)
	}
	used, avail := s["statexec_memory_used_bytes{}"], s["statexec_memory_available_bytes{}"]
	if used+avail != total {
		t.Errorf("used %.0f + available %.0f != total %.0f, as the HELP text says", used, avail, total)
	}
	if r := s["statexec_memory_used_ratio{}"]; r <= 0 || r >= 1 || r != used/total {
		t.Errorf("used ratio %v, want used/total = %v in (0, 1)", r, used/total)
	}
	for _, name := range []string{"free", "buffers", "cached", "available"} {
		if v := s["statexec_memory_"+name+"_bytes{}"]; v < 0 || v > total {
			t.Errorf("%s = %.0f, outside [0, total]", name, v)
		}
	}
}

// TestLoopbackBytesCounted moves 8 MiB over 127.0.0.1: lo's sent and
// received bytes grow by at least that (other tests may use lo too, so
// there is no upper bound).
func TestLoopbackBytesCounted(t *testing.T) {
	const n = 8 << 20
	before := sample(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		k, _ := io.Copy(io.Discard, c)
		got <- k
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if k := <-got; k != n {
		t.Fatalf("receiver got %d bytes, want %d", k, n)
	}
	after := sample(t)
	for _, name := range []string{"statexec_network_sent_bytes_total", "statexec_network_received_bytes_total"} {
		key := name + "{interface=lo}"
		if _, ok := after[key]; !ok {
			t.Fatalf("no series %s", key)
		}
		if d := after[key] - before[key]; d < n {
			t.Errorf("%s grew by %.0f, want >= %d", key, d, n)
		}
	}
	pk := "statexec_network_sent_packets_total{interface=lo}"
	if d := after[pk] - before[pk]; d < n/65536 {
		t.Errorf("%s grew by %.0f packets for %d bytes", pk, d, n)
	}
}

// TestDiskWritesCounted writes 16 MiB and syncs it: the whole disk under
// the test's directory shows at least that much written, and partitions,
// loop and RAM devices have no series.
func TestDiskWritesCounted(t *testing.T) {
	const n = 16 << 20
	dir := t.TempDir()
	disk := wholeDiskOf(t, dir)
	key := "statexec_disk_write_bytes_total{disk=" + disk + "}"
	before := sample(t)
	if _, ok := before[key]; !ok {
		t.Fatalf("no series %s", key)
	}
	f, err := os.Create(filepath.Join(dir, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7) // not all zeros, in case the device skips them
	}
	for i := 0; i < n/len(buf); i++ {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	after := sample(t)
	if d := after[key] - before[key]; d < n {
		t.Errorf("%s grew by %.0f, want >= %d", key, d, n)
	}
	for k := range after {
		if !strings.HasPrefix(k, "statexec_disk_") {
			continue
		}
		name := k[strings.Index(k, "disk=")+5 : len(k)-1]
		if ignoredDisks.MatchString(name) {
			t.Errorf("series for ignored device: %s", k)
		}
		if _, err := os.Stat("/sys/block/" + name); err != nil {
			t.Errorf("series for %s, which is not a whole disk in /sys/block", k)
		}
	}
}

// wholeDiskOf finds the disk (not the partition) that holds dir, or
// skips the test, saying why, when dir is not on a block device.
func wholeDiskOf(t *testing.T, dir string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	dev := strconv.Itoa(int(unix.Major(st.Dev))) + ":" + strconv.Itoa(int(unix.Minor(st.Dev)))
	link, err := filepath.EvalSymlinks("/sys/dev/block/" + dev)
	if err != nil {
		t.Skipf("%s is on device %s, which is not a block device (tmpfs or overlay): no disk to watch", dir, dev)
	}
	if _, err := os.Stat(filepath.Join(link, "partition")); err == nil {
		link = filepath.Dir(link) // a partition's directory sits in its disk's
	}
	return filepath.Base(link)
}

func TestCountedDisks(t *testing.T) {
	sys := t.TempDir()
	for _, d := range []string{"sda", "nvme0n1", "dm-0", "cciss!c0d0", "loop0"} {
		if err := os.Mkdir(filepath.Join(sys, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := &diskCollector{sysBlock: sys}
	for name, want := range map[string]bool{
		"sda": true, "sda1": false, "nvme0n1": true, "nvme0n1p2": false, "dm-0": true,
		"cciss/c0d0": true, "loop0": false, "zram0": false, "ram3": false, "fd0": false,
	} {
		if got := c.counted(name); got != want {
			t.Errorf("counted(%q) = %v, want %v", name, got, want)
		}
	}
	c.sysBlock = filepath.Join(sys, "missing")
	if !c.counted("sda1") || c.counted("loop1") {
		t.Error("without /sys/block every device but the ignored kinds is counted")
	}
}

// TestDiskCollectorFilters checks the filter is applied to what
// /proc/diskstats lists: with a /sys/block that lacks the real disks,
// their series are gone, and one put back comes back alone.
func TestDiskCollectorFilters(t *testing.T) {
	real := newDiskCollector(context.Background(), nil)
	all := collectNames(t, real)
	if len(all) == 0 {
		t.Skip("no disk with any I/O in /proc/diskstats")
	}
	fake := newDiskCollector(context.Background(), nil)
	fake.sysBlock = t.TempDir()
	if got := collectNames(t, fake); len(got) != 0 {
		t.Errorf("with an empty /sys/block the collector reported %v", got)
	}
	keep := all[0]
	if err := os.Mkdir(filepath.Join(fake.sysBlock, keep), 0o755); err != nil {
		t.Fatal(err)
	}
	got := collectNames(t, fake)
	if len(got) != 1 || got[0] != keep {
		t.Errorf("with only %s in /sys/block the collector reported %v", keep, got)
	}
}

// collectNames returns the disk label values a disk collector reports,
// sorted.
func collectNames(t *testing.T, c *diskCollector) []string {
	t.Helper()
	const prefix = "statexec_disk_write_bytes_total{disk="
	var names []string
	for k := range gather(t, c) {
		if name, ok := strings.CutPrefix(k, prefix); ok {
			names = append(names, strings.TrimSuffix(name, "}"))
		}
	}
	slices.Sort(names)
	return names
}

// TestCollectorSuccess: every host collector reports
// statexec_collector_success{collector=...} 1 when its source works, and 0
// (with its metrics left out, and the error given to Gather) when the
// source fails: a failing source is visible in the file, not a silent gap.
func TestCollectorSuccess(t *testing.T) {
	ctx := context.Background()
	broken := errors.New("source broken")
	cases := []struct {
		name   string
		metric string // one metric of the collector
		build  func(fail bool) prometheus.Collector
	}{
		{"cpu", "statexec_cpu_seconds_total", func(fail bool) prometheus.Collector {
			c := newCPUCollector(ctx, nil)
			if fail {
				c.times = func(context.Context, bool) ([]cpu.TimesStat, error) { return nil, broken }
			}
			return c
		}},
		{"memory", "statexec_memory_total_bytes", func(fail bool) prometheus.Collector {
			c := newMemoryCollector(ctx, nil)
			if fail {
				c.virtualMemory = func(context.Context) (*mem.VirtualMemoryStat, error) { return nil, broken }
			}
			return c
		}},
		{"network", "statexec_network_sent_bytes_total", func(fail bool) prometheus.Collector {
			c := newNetworkCollector(ctx, nil)
			if fail {
				c.ioCounters = func(context.Context, bool) ([]gnet.IOCountersStat, error) { return nil, broken }
			}
			return c
		}},
		{"disk", "statexec_disk_read_bytes_total", func(fail bool) prometheus.Collector {
			c := newDiskCollector(ctx, nil)
			// Every device counts, so that a machine without whole disks
			// still has series to lose.
			c.sysBlock = filepath.Join(t.TempDir(), "none")
			if fail {
				c.ioCounters = func(context.Context, ...string) (map[string]disk.IOCountersStat, error) { return nil, broken }
			}
			return c
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, fail := range []bool{false, true} {
				reg := prometheus.NewPedanticRegistry()
				reg.MustRegister(c.build(fail))
				// The probe collector's success gauge is one more
				// collector of the same family: it must register too.
				reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "statexec_collector_success", Help: successHelp,
					ConstLabels: prometheus.Labels{"collector": "probe"}}, func() float64 { return 1 }))
				fams, err := reg.Gather()
				if fail != (err != nil) || (fail && !strings.Contains(err.Error(), "source broken")) {
					t.Fatalf("fail=%v: Gather error %v", fail, err)
				}
				success, data := map[string]float64{}, 0
				for _, f := range fams {
					for _, m := range f.GetMetric() {
						if f.GetName() == "statexec_collector_success" {
							if f.GetHelp() != "Whether the collector's last collection succeeded (1) or failed (0)." {
								t.Errorf("help %q", f.GetHelp())
							}
							success[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
						} else if f.GetName() == c.metric {
							data++
						}
					}
				}
				want := map[string]float64{c.name: 1, "probe": 1}
				if fail {
					want[c.name] = 0
				}
				if !maps.Equal(success, want) {
					t.Errorf("fail=%v: success %v, want %v", fail, success, want)
				}
				if fail == (data > 0) {
					t.Errorf("fail=%v: %d series of %s", fail, data, c.metric)
				}
			}
		})
	}
}
