//go:build linux

package sampler

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/constmetric"
	"github.com/statexec/statexec/internal/host"
	"github.com/statexec/statexec/internal/probe"
	"github.com/statexec/statexec/internal/store"
)

// BenchmarkTick is one whole sampling tick as a run takes it (the same
// registry as modes.run's setup: const labels, host collectors, the probe
// collector with a command running in its cgroup, and the spool append):
// ns/op and allocs/op are what every interval costs statexec. Run with
// -cpuprofile to see where it goes.
func BenchmarkTick(b *testing.B) {
	for _, mode := range []probe.Mode{probe.ModePlain, probe.ModeEBPF} {
		b.Run(string(mode), func(b *testing.B) {
			if os.Geteuid() != 0 {
				b.Skip("needs root for the run's cgroup (and BPF)")
			}
			smp, stop := tickSetup(b, mode)
			defer stop()
			b.ReportAllocs()
			b.ResetTimer()
			before := cpuNs(b)
			for b.Loop() {
				smp.Sample()
			}
			// CPU time, not wall time, is what a tick costs the machine,
			// and it is less disturbed by other work on a shared one.
			b.ReportMetric(float64(cpuNs(b)-before)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkTickIdle is BenchmarkTick as a real run takes its ticks: one
// every interval, the process asleep in between. A hot loop keeps the
// kernel's and the CPU's caches warm and amortises the Go runtime's work
// (GC, scavenger, timers, thread wake-ups) over many ticks; after a sleep
// a tick costs about three times as much. cpu-ns/op is the process's CPU
// time (every thread) over the whole loop divided by the ticks, what
// scripts/bench.sh part 1 measures of a statexec run; ns/op includes the
// sleep. Run with a fixed count, e.g. -benchtime 30x (30 s at 1s).
func BenchmarkTickIdle(b *testing.B) {
	for _, mode := range []probe.Mode{probe.ModePlain, probe.ModeEBPF} {
		for _, interval := range []time.Duration{100 * time.Millisecond, time.Second} {
			b.Run(string(mode)+"/"+interval.String(), func(b *testing.B) {
				if os.Geteuid() != 0 {
					b.Skip("needs root for the run's cgroup (and BPF)")
				}
				smp, stop := tickSetup(b, mode)
				defer stop()
				// A few ticks first: the first ones make the series.
				for range 3 {
					smp.Sample()
				}
				t := time.NewTicker(interval)
				defer t.Stop()
				<-t.C
				b.ReportAllocs()
				b.ResetTimer()
				before := cpuNs(b)
				for b.Loop() {
					<-t.C
					smp.Sample()
				}
				b.ReportMetric(float64(cpuNs(b)-before)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// cpuNs is this process's CPU time (user + system, all threads) in ns.
func cpuNs(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func tickSetup(b *testing.B, mode probe.Mode) (*Sampler, func()) {
	st, err := store.Create(filepath.Join(b.TempDir(), "m.txt.spool"))
	if err != nil {
		b.Fatal(err)
	}
	reg := NewRegistry()
	labels := prometheus.Labels{"instance": "bench", "job": "statexec", "role": "standalone"}
	status := constmetric.NewGauge(prometheus.NewDesc("statexec_command_status", "State.", nil, labels))
	duration := constmetric.NewGauge(prometheus.NewDesc("statexec_collection_duration_seconds", "Time.", nil, labels))
	reg.MustRegister(status, duration)
	for _, c := range host.Collectors(context.Background(), labels) {
		reg.MustRegister(c)
	}
	ps, err := probe.Start(probe.Options{Mode: mode, Notice: io.Discard, ConstLabels: labels})
	if err != nil {
		b.Skipf("probes %s: %v", mode, err)
	}
	reg.MustRegister(ps.Collector())
	// A small tree in the cgroup: sh and two sleeps.
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	ps.PrepareCommand(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ps.CommandStarted(cmd.Process.Pid)
	status.Set(1)
	smp := New(reg, st, NewClock(-1), duration, io.Discard)
	smp.Sample() // the first tick writes the families and series
	return smp, func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = ps.Close()
		_ = st.Remove()
	}
}
