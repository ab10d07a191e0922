package probe

import "testing"

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
