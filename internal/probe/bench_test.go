package probe

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkLoadAttach measures what eBPF mode adds to a run's start and
// end: cgroup creation, BPF load + attach, detach and cgroup removal.
func BenchmarkLoadAttach(b *testing.B) {
	requireRoot(b)
	for b.Loop() {
		s, err := Start(Options{Mode: ModeEBPF})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCollect measures one sample (what every sampling interval
// costs) with a small tree running: sh and two sleeps.
func BenchmarkCollect(b *testing.B) {
	for _, mode := range []Mode{ModeEBPF, ModePlain} {
		b.Run(string(mode), func(b *testing.B) {
			requireRoot(b)
			s, err := Start(Options{Mode: mode})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			cmd := shellCommand(s, "sleep 60 & sleep 60 & wait")
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			s.CommandStarted(cmd.Process.Pid)
			ch := make(chan prometheus.Metric, 256)
			c := s.Collector()
			for b.Loop() {
				c.Collect(ch)
				for len(ch) > 0 {
					<-ch
				}
			}
		})
	}
}
