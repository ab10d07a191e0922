package probe

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Per-step work of the "steps" helper: step k (from 1) burns k × stepCPU
// of CPU, moves k × stepNet bytes over loopback (both ends its own) and
// writes k × stepDisk bytes with O_DIRECT.
const (
	stepCPU  = 150 * time.Millisecond
	stepNet  = 8_000_000
	stepDisk = 4 << 20
)

// stepsHelper does the steps; after each it prints its cumulative ground
// truth ("cpu_ns sent_bytes written_bytes", CPU from getrusage) and
// waits for a line on stdin, so that the test samples while it sleeps.
func stepsHelper(steps int, file string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_DIRECT, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	// O_DIRECT needs an aligned buffer: mmap gives whole pages.
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	in := bufio.NewReader(os.Stdin)
	var sent, written int64
	for k := 1; k <= steps; k++ {
		burn(selfCPU() + time.Duration(k)*stepCPU)
		n, err := loopbackTransfer(int64(k) * stepNet)
		if err != nil {
			return err
		}
		sent += n
		for range k * stepDisk / len(buf) {
			if _, err := f.Write(buf); err != nil {
				return err
			}
			written += int64(len(buf))
		}
		fmt.Printf("%d %d %d\n", selfCPU().Nanoseconds(), sent, written)
		if k == steps {
			return nil // exits at once: the last interval ends with the exit
		}
		if _, err := in.ReadString('\n'); err != nil {
			return err
		}
	}
	return nil
}

// TestEveryIntervalMatchesGroundTruth: at each of several samples taken
// while the command waits between steps, the increase of every counter
// since the previous sample matches what the command did in between:
// CPU (its getrusage), bytes written (O_DIRECT, so no page cache), bytes
// sent and received (eBPF). Not only the final totals; the last interval
// ends with the command's exit, as a bare command's does.
func TestEveryIntervalMatchesGroundTruth(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type == unix.TMPFS_MAGIC {
		if dir, err = os.MkdirTemp("/var/tmp", "statexec-steps-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	forEachBackend(t, func(t *testing.T, mode Mode, s *Session) {
		const steps = 4
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=steps", "HELPER_STEPS="+itoa(steps),
			"HELPER_FILE="+filepath.Join(dir, "blob-"+string(mode)))
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
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.CommandStarted(cmd.Process.Pid)
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

		out := bufio.NewReader(stdout)
		prev := metrics(t, s)
		var prevCPU, prevSent, prevWritten int64
		for k := 1; k <= steps; k++ {
			line, err := out.ReadString('\n')
			if err != nil {
				t.Fatalf("step %d: %v", k, err)
			}
			var cpuNs, sent, written int64
			if _, err := fmt.Sscan(line, &cpuNs, &sent, &written); err != nil {
				t.Fatalf("step %d: %q: %v", k, line, err)
			}
			if k == steps {
				// The last interval ends with the command: its
				// final counters are taken before it is reaped,
				// as statexec does.
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
			d := func(name string) float64 { return m[name] - prev[name] }

			cpu := d("statexec_process_cpu_seconds_total{mode=user}") + d("statexec_process_cpu_seconds_total{mode=system}")
			wantCPU := time.Duration(cpuNs - prevCPU).Seconds()
			// The report and the read after getrusage, and the Go
			// runtime's own threads, take a little more.
			if cpu < wantCPU*0.97-0.005 || cpu > wantCPU*1.05+0.010 {
				t.Errorf("interval %d: cpu +%.4fs, getrusage +%.4fs", k, cpu, wantCPU)
			}
			if mode == ModeEBPF {
				sched := d("statexec_process_sched_cpu_seconds_total")
				if sched < wantCPU*0.97-0.005 || sched > wantCPU*1.05+0.010 {
					t.Errorf("interval %d: sched cpu +%.4fs, getrusage +%.4fs", k, sched, wantCPU)
				}
				moved := float64(sent - prevSent)
				for _, name := range []string{"statexec_process_network_sent_bytes_total", "statexec_process_network_received_bytes_total"} {
					if got := d(name); got < moved || got > 1.06*moved {
						t.Errorf("interval %d: %s +%.0f, bytes moved %.0f", k, name, got, moved)
					}
				}
			}
			wantW := float64(written - prevWritten)
			if got := d("statexec_process_disk_write_bytes_total"); got < wantW || got > 1.06*wantW {
				t.Errorf("interval %d: disk write +%.0f, written with O_DIRECT %.0f", k, got, wantW)
			}
			t.Logf("interval %d: cpu +%.3fs (rusage +%.3fs), disk write +%.0f (%.0f), sent +%.0f (%d)", k,
				cpu, wantCPU, d("statexec_process_disk_write_bytes_total"), wantW,
				d("statexec_process_network_sent_bytes_total"), sent-prevSent)
			prev, prevCPU, prevSent, prevWritten = m, cpuNs, sent, written
			if k < steps {
				if _, err := stdin.Write([]byte("next\n")); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
