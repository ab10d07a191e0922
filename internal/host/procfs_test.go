package host

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/shirou/gopsutil/v4/common"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/mem"
	gnet "github.com/shirou/gopsutil/v4/net"
)

// procFixture copies this machine's /proc/stat, meminfo, net/dev and
// diskstats into a directory, with extra lines (lines that must be
// skipped, a device with all-zero counters, a name with a colon).
func procFixture(t *testing.T, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"stat", "meminfo", "net/dev", "diskstats"} {
		data, err := os.ReadFile(filepath.Join("/proc", name))
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, extra[name]...)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestSourcesMatchGopsutil: the kept-open readers give exactly what
// gopsutil gives for the same files, twice in a row (buffers and
// results are reused) and after the files changed.
func TestSourcesMatchGopsutil(t *testing.T) {
	extras := []map[string]string{
		nil,
		{
			"diskstats": "   7       9 zeros 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n   8      99 short 1 2 3\n" +
				"   8      98 sdq 11 12 13 14 15 16 17 18 19 20 21\n",
			"net/dev": "eth0:1: 10 20 30 40 50 60 70 80 90 100 110 120 130 140 150 160\n  bad: 1 2\n",
		},
	}
	for i, extra := range extras {
		dir := procFixture(t, extra)
		ctx := context.WithValue(context.Background(), common.EnvKey, common.EnvMap{common.HostProcEnvKey: dir})
		st, mi, nd, ds := newStatSource(dir), newMeminfoSource(dir), newNetDevSource(dir), newDiskstatsSource(dir)
		for round := range 2 {
			wantCPU, err1 := cpu.TimesWithContext(ctx, true)
			gotCPU, err2 := st.times(ctx, true)
			if err1 != nil || err2 != nil || len(gotCPU) == 0 || !reflect.DeepEqual(gotCPU, wantCPU) {
				t.Errorf("fixture %d round %d: cpu %v (%v), gopsutil %v (%v)", i, round, gotCPU, err2, wantCPU, err1)
			}
			wantMem, err1 := mem.VirtualMemoryWithContext(ctx)
			gotMem, err2 := mi.virtualMemory(ctx)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			for _, p := range []struct {
				name      string
				got, want uint64
			}{{"total", gotMem.Total, wantMem.Total}, {"available", gotMem.Available, wantMem.Available},
				{"used", gotMem.Used, wantMem.Used}, {"free", gotMem.Free, wantMem.Free},
				{"buffers", gotMem.Buffers, wantMem.Buffers}, {"cached", gotMem.Cached, wantMem.Cached}} {
				if p.got != p.want || p.want == 0 && p.name != "buffers" {
					t.Errorf("fixture %d round %d: memory %s %d, gopsutil %d", i, round, p.name, p.got, p.want)
				}
			}
			wantNet, err1 := gnet.IOCountersWithContext(ctx, true)
			gotNet, err2 := nd.ioCounters(ctx, true)
			if err1 != nil || err2 != nil || len(gotNet) == 0 || !reflect.DeepEqual(gotNet, wantNet) {
				t.Errorf("fixture %d round %d: net %v (%v), gopsutil %v (%v)", i, round, gotNet, err2, wantNet, err1)
			}
			wantDisk, err1 := disk.IOCountersWithContext(ctx)
			gotDisk, err2 := ds.ioCounters(ctx)
			for k, d := range wantDisk {
				d.SerialNumber, d.Label = "", "" // not read here: not exported
				wantDisk[k] = d
			}
			if err1 != nil || err2 != nil || !reflect.DeepEqual(gotDisk, wantDisk) {
				t.Errorf("fixture %d round %d: disk %v (%v), gopsutil %v (%v)", i, round, gotDisk, err2, wantDisk, err1)
			}
		}
	}
}

// TestMeminfoWithoutAvailable: a kernel without MemAvailable gets
// gopsutil's estimate.
func TestMeminfoWithoutAvailable(t *testing.T) {
	dir := t.TempDir()
	meminfo := "MemTotal:       1000 kB\nMemFree:         100 kB\nBuffers:          10 kB\nCached:          200 kB\nSReclaimable:     20 kB\n"
	if err := os.WriteFile(filepath.Join(dir, "meminfo"), []byte(meminfo), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(context.Background(), common.EnvKey, common.EnvMap{common.HostProcEnvKey: dir})
	got, err := newMeminfoSource(dir).virtualMemory(ctx)
	want, err2 := mem.VirtualMemoryWithContext(ctx)
	if err != nil || err2 != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v (%v), gopsutil %+v (%v)", got, err, want, err2)
	}
}

// TestKeptFileRereads: a kept file sees what changed since the last
// read, also when it grew past the buffer.
func TestKeptFileRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	k := newKeptFile(path)
	if _, err := k.read(); err == nil {
		t.Fatal("read of a missing file succeeded")
	}
	for _, content := range []string{"one\n", string(make([]byte, 20000)) + "x", "two"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := k.read()
		if err != nil || string(got) != content {
			t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(content))
		}
	}
}
