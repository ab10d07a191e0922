package main

// End-to-end check of the scheduler probes (group sched) on a bare busy
// command: its on-CPU time moves at every sample with the cgroup's
// cpu.stat, and its end totals match what the kernel says of the command
// (its own /proc) just before it exits.

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/statexec/statexec/internal/testenv"
)

// busyPerl spins one thread (perl runs no other, nor forks) until it
// used a second of CPU, then prints its own counters as the kernel has
// them just before it exits: "sum_exec_runtime_ns nvcsw nivcsw".
const busyPerl = `my $s; do { open(my $f, "<", "/proc/self/schedstat"); ($s) = split " ", <$f>; close $f; for (1..100000) {} } while ($s < 1e9); ` +
	`open(my $g, "<", "/proc/self/status"); my %c; while (<$g>) { $c{$1} = $2 if /^(\w+)_ctxt_switches:\s+(\d+)/ } print "$s $c{voluntary} $c{nonvoluntary}\n"`

// TestSchedBusyCommandEveryInterval: a bare busy command (no shell, no
// fork) at SE_INTERVAL=250ms.
func TestSchedBusyCommandEveryInterval(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the eBPF backend")
	}
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Skip("no perl for the busy command")
	}
	const intervalMs = 250
	r := statexec(t, "", []string{"SE_PROBES=ebpf", fmt.Sprintf("SE_INTERVAL=%dms", intervalMs)}, "exec", perl, "-e", busyPerl)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	var ns float64
	var nv, niv int64
	if _, err := fmt.Sscan(strings.TrimSpace(r.stdout), &ns, &nv, &niv); err != nil {
		t.Fatalf("command output %q: %v", r.stdout, err)
	}
	cpu := ns / 1e9
	f := testenv.ParseFile(t, r.file)
	sched := f.Series("statexec_process_sched_cpu_seconds_total", nil)
	user := f.Series("statexec_process_cpu_seconds_total", map[string]string{"mode": "user"})
	sys := f.Series("statexec_process_cpu_seconds_total", map[string]string{"mode": "system"})
	if len(sched) < 8 || len(sched) != len(user) || len(sched) != len(sys) {
		t.Fatalf("samples: sched %d, cpu.stat user %d, system %d", len(sched), len(user), len(sys))
	}
	for i := 1; i < len(sched); i++ {
		if sched[i].TimestampMs != user[i].TimestampMs {
			t.Fatalf("sample %d: sched at %d, cpu.stat at %d", i, sched[i].TimestampMs, user[i].TimestampMs)
		}
		d := sched[i].Value - sched[i-1].Value
		u := user[i].Value + sys[i].Value - user[i-1].Value - sys[i-1].Value
		wall := float64(sched[i].TimestampMs-sched[i-1].TimestampMs) / 1000
		t.Logf("interval %d: %.3fs, sched on-CPU +%.4fs, cpu.stat +%.4fs", i, wall, d, u)
		if d < 0 {
			t.Errorf("interval %d: sched on-CPU went back by %.4fs", i, -d)
		}
		// One thread: never more than one CPU, and with cpu.stat
		// (taken in the same sample) within 2% of the interval, or a
		// tick (4 ms at HZ=250: cpu.stat moves at ticks).
		if d > 1.05*wall+0.001 {
			t.Errorf("interval %d: on-CPU +%.4fs in %.3fs: more than one CPU", i, d, wall)
		}
		if math.Abs(d-u) > math.Max(0.02*wall, 0.004)+0.001 {
			t.Errorf("interval %d: sched on-CPU +%.4fs, cpu.stat +%.4fs", i, d, u)
		}
	}
	end := sched[len(sched)-1].Value
	t.Logf("end: sched on-CPU %.4fs, the command's own %.4fs just before its exit", end, cpu)
	if end < cpu || end > cpu*1.01+0.002 {
		t.Errorf("sched on-CPU %.4fs, the command's own %.4fs (+ its exit)", end, cpu)
	}
	for _, c := range []struct {
		kind string
		want int64
	}{{"voluntary", nv}, {"involuntary", niv}} {
		s := f.Series("statexec_process_sched_context_switches_total", map[string]string{"kind": c.kind})
		got := s[len(s)-1].Value
		t.Logf("end: %s switches %.0f, the command's own %d just before its exit", c.kind, got, c.want)
		// Its exit adds its last switch and maybe a preemption or two.
		if got < float64(c.want) || got > float64(c.want)+math.Max(0.01*float64(c.want), 3) {
			t.Errorf("%s switches %.0f, the command's own %d", c.kind, got, c.want)
		}
	}
}
