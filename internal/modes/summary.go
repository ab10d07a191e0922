//go:build linux

package modes

import (
	"fmt"
	"strings"
	"time"

	"github.com/statexec/statexec/internal/probe"
)

// printSummary prints the end-of-run block on stderr, as time -v does.
func (r *run) printSummary(code int, s probe.Summary) {
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, "statexec: "+format+"\n", a...) }
	if r.child == nil {
		line("command not run; metrics in %s (%d samples)", r.cfg.MetricsFile, r.points)
		fmt.Fprint(r.stderr, b.String())
		return
	}
	ended, ru, reaped := r.child.result()
	if !reaped {
		ended = time.Now() // still being ended by Close
	}
	wall := ended.Sub(r.child.started)
	line("command exited with code %d after %s; metrics in %s (%d samples, probes: %s)",
		code, wall.Round(time.Millisecond), r.cfg.MetricsFile, r.points, s.Backend)
	if !r.syncedAt.IsZero() {
		line("  synchronised at %s: the time origin", r.syncedAt.UTC().Format(time.RFC3339Nano))
	}
	if r.partyStart {
		line("  N-party start: the command ran %s after the common start instant (%s)", r.partyLate.Round(time.Microsecond), r.partyHow)
	}
	user, sys := s.UserCPU, s.SystemCPU
	if user == 0 && sys == 0 {
		user = time.Duration(ru.Utime.Nano())
		sys = time.Duration(ru.Stime.Nano())
	}
	// Not the rusage's maxrss: at exec the kernel folds the old memory
	// map's peak (statexec's own, shared until exec) into it. The probe
	// keeps it only when it exceeds statexec's own peak.
	peak := s.PeakRSSBytes
	vcs, ivcs := s.VoluntaryCS, s.InvoluntaryCS
	if vcs == 0 && ivcs == 0 {
		vcs, ivcs = uint64(ru.Nvcsw), uint64(ru.Nivcsw)
	}
	line("  cpu: user %s, system %s; peak rss %s; context switches: %d voluntary, %d involuntary",
		user.Round(time.Millisecond), sys.Round(time.Millisecond), bytesIEC(peak), vcs, ivcs)
	if s.HaveNetwork {
		line("  network: sent %s, received %s", bytesIEC(s.SentBytes), bytesIEC(s.ReceivedBytes))
	}
	if s.HaveScheduler {
		line("  run-queue wait: p50 %s, p99 %s", s.RunqueueWaitP50, s.RunqueueWaitP99)
	}
	for _, l := range s.Lines {
		line("  %s", l)
	}
	fmt.Fprint(r.stderr, b.String())
}

func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
