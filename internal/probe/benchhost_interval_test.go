package probe

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestHostSourcesEveryInterval: at each sample taken while the command
// waits between steps, the growth of minor faults matches its own
// ru_minflt and the growth of the read latency count matches the O_DIRECT
// reads it made; no counter of the pressure, perf and block series ever
// goes back.
func TestHostSourcesEveryInterval(t *testing.T) {
	file := diskFile(t, 4<<20)
	s := startEBPF(t)
	const steps = 3
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), hostHelperEnv+"=steps", "HELPER_STEPS="+itoa(steps), "HELPER_FILE="+file)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	s.PrepareCommand(cmd.SysProcAttr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	// Before the start: the first interval is the command's whole start.
	prev := metrics(t, s)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.CommandStarted(cmd.Process.Pid)
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	out := bufio.NewReader(stdout)
	var prevFlt, prevReads int64
	for k := 1; k <= steps; k++ {
		line, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("step %d: %v", k, err)
		}
		var flt, reads int64
		if _, err := fmt.Sscan(line, &flt, &reads); err != nil {
			t.Fatalf("step %d: %q: %v", k, line, err)
		}
		if k == steps {
			var info unix.Siginfo
			if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
				t.Fatal(err)
			}
			s.ProcessExiting(cmd.Process.Pid)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("helper: %v", err)
			}
			s.CommandEnded()
		}
		m := metrics(t, s)
		for name, v := range m {
			if (strings.Contains(name, "pressure") || strings.Contains(name, "page_faults") || strings.Contains(name, "migrations") ||
				strings.Contains(name, "disk_io_latency")) && v < prev[name] {
				t.Errorf("interval %d: %s went back: %v -> %v", k, name, prev[name], v)
			}
		}
		d := func(name string) float64 { return m[name] - prev[name] }
		faults := d("statexec_process_page_faults_total{kind=minor}")
		wantFlt := float64(flt - prevFlt)
		// The interval's own faults, + a few of the runtime between
		// getrusage and the print (and, for the last one, its exit).
		if faults < wantFlt*0.98 || faults > wantFlt*1.02+64 {
			t.Errorf("interval %d: minor faults +%.0f, ru_minflt +%.0f", k, faults, wantFlt)
		}
		lat := d("statexec_process_disk_io_latency_seconds{op=read}_count")
		wantReads := float64(reads - prevReads)
		// ±1%: once in a few thousand requests the entry of one
		// vanishes between issue and completion (measured: 0-1 per
		// 3,072 reads).
		if lat < wantReads*0.99 || lat > wantReads*1.01+1 {
			t.Errorf("interval %d: read latencies +%.0f, O_DIRECT reads %.0f", k, lat, wantReads)
		}
		t.Logf("interval %d: minor faults +%.0f (ru_minflt +%.0f), read latencies +%.0f (reads %.0f), cpu pressure %.3fs", k,
			faults, wantFlt, lat, wantReads, m["statexec_process_pressure_cpu_waiting_seconds_total"])
		if g, ok := s.group("block").(*blockGroup); ok {
			for name, p := range map[string]*ebpf.Program{"io_start": g.objs.OnBlockIoStart, "issue": g.objs.OnBlockRqIssue, "complete": g.objs.OnBlockRqComplete} {
				if st, err := p.Stats(); err == nil {
					t.Logf("block prog %s: %d recursion misses", name, st.RecursionMisses)
				}
			}
			t.Logf("block: %d created by the cgroup, %d issued by it; %d completed timed, %d evicted", g.last.StartedMarked, g.last.IssuedByCgroup, g.last.CompletedTimed, g.last.Evicted)
		}
		prev, prevFlt, prevReads = m, flt, reads
		if k < steps {
			if _, err := stdin.Write([]byte("next\n")); err != nil {
				t.Fatal(err)
			}
		}
	}
}
