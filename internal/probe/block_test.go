package probe

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestEBPFBlockLatency: N O_DIRECT reads of 4 KiB (one request each: far
// below the device's max_sectors_kb) from a file on a real disk give N
// read latencies, and no writes.
func TestEBPFBlockLatency(t *testing.T) {
	file := diskFile(t, 16<<20)
	s := startEBPF(t)
	g, ok := s.group("block").(*blockGroup)
	if !ok {
		t.Fatal("block group off as root on a kernel with block_rq_issue/complete")
	}
	const n = 4096
	// The same reads from outside the run, at the same time: their
	// requests reuse the addresses of the run's and must not count.
	outside := exec.Command("dd", "if="+file, "of=/dev/null", "iflag=direct", "bs=4k", "count="+strconv.Itoa(n))
	if err := outside.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runHostChild(t, s, "odirect", "HELPER_FILE="+file, "HELPER_BS=4096", "HELPER_COUNT="+strconv.Itoa(n))
	elapsed := time.Since(start)
	if err := outside.Wait(); err != nil {
		t.Fatalf("outside dd: %v", err)
	}
	m := metrics(t, s)
	reads := m["statexec_process_disk_io_latency_seconds{op=read}_count"]
	sum := m["statexec_process_disk_io_latency_seconds{op=read}_sum"]
	t.Logf("%d O_DIRECT reads in %v: histogram count %.0f, mean %v; %d created by the cgroup (block_io_start on: %v), %d issued by it; writes %.0f",
		n, elapsed.Round(time.Millisecond), reads, time.Duration(sum/reads*1e9), g.last.StartedMarked, g.marked, g.last.IssuedByCgroup,
		m["statexec_process_disk_io_latency_seconds{op=write}_count"])
	if reads < n*0.99 || reads > n*1.01 {
		t.Errorf("read latency count = %.0f, want %d ±1%%", reads, n)
	}
	if sum <= 0 || sum > elapsed.Seconds() {
		t.Errorf("read latency sum = %v s, want within (0, %v]", sum, elapsed.Seconds())
	}
	t.Logf("block: %d completed timed, %d evicted", g.last.CompletedTimed, g.last.Evicted)
	var sum1 Summary
	g.summarize(&sum1)
	if len(sum1.Lines) == 0 {
		t.Error("no disk latency summary line")
	}
	t.Log(sum1.Lines)
}

func TestBlockQuantile(t *testing.T) {
	var h [blockHistSlots]uint64
	h[20] = 99 // [1.048576 ms, 2.097152 ms)
	h[30] = 1  // ~1.07 s
	if got := log2Quantile(h[:], 0.5); got < time.Duration(1<<20) || got >= time.Duration(1<<21) {
		t.Errorf("p50 = %v, want in [2^20, 2^21) ns", got)
	}
	if got := log2Quantile(h[:], 0.999); got < time.Duration(1<<30) {
		t.Errorf("p99.9 = %v, want >= 2^30 ns", got)
	}
	count, buckets := log2Buckets(h[:], blockMinLeLog2, blockMaxLeLog2)
	if count != 100 || buckets[float64(1<<21)/1e9] != 99 || buckets[float64(int64(1)<<35)/1e9] != 100 {
		t.Errorf("buckets: count %d, %v", count, buckets)
	}
}

// TestBlockInflightSize: pairs for twice the requests the queues can
// hold, a power of two within the bounds; a device without a queue (zram) or unreadable counts 0.
func TestBlockInflightSize(t *testing.T) {
	dir := t.TempDir()
	dev := func(name, nr string, hwq int) {
		q := filepath.Join(dir, name, "queue")
		if err := os.MkdirAll(q, 0o755); err != nil {
			t.Fatal(err)
		}
		if nr != "" {
			if err := os.WriteFile(filepath.Join(q, "nr_requests"), []byte(nr+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i := range hwq {
			if err := os.MkdirAll(filepath.Join(dir, name, "mq", strconv.Itoa(i)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := blockInflightSize(dir); got != 1024 {
		t.Errorf("no devices: %d, want the floor 1024", got)
	}
	dev("vda", "256", 1)
	dev("zram0", "", 0)
	dev("loop0", "128", 1)
	if got := blockInflightSize(dir); got != 1024 {
		t.Errorf("384 requests: %d, want the floor 1024", got)
	}
	// 8 hardware queues of 1023: 2*(256+128+8184) = 17136 pairs, rounded up.
	dev("nvme0n1", "1023", 8)
	if got, want := blockInflightSize(dir), uint32(32768); got != want {
		t.Errorf("with nvme: %d, want %d", got, want)
	}
	dev("nvme1n1", "1023", 64)
	if got := blockInflightSize(dir); got != 65536 {
		t.Errorf("huge: %d, want the ceiling 65536", got)
	}
	if got := blockInflightSize(filepath.Join(dir, "missing")); got != 16384 {
		t.Errorf("no /sys/block: %d, want 16384", got)
	}
}
