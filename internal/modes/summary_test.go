package modes

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/statexec/statexec/internal/probe"
)

// TestSummaryWhileCommandIsReaped prints the summary while the reaping
// goroutine ends the command, as happens when a signal ends a run right
// after /start. Under -race, reading the child's end fields without
// waiting for done was a data race.
func TestSummaryWhileCommandIsReaped(t *testing.T) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	c, err := startChild("/bin/sh", []string{"sh", "-c", "exit 7"}, [3]*os.File{devnull, devnull, devnull}, hooks{})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r := &run{stderr: &out, child: c}
	r.cfg.MetricsFile = "m.txt"
	deadline := time.After(10 * time.Second)
	for reaped := false; !reaped; {
		select {
		case <-c.done:
			reaped = true
		case <-deadline:
			t.Fatal("command not reaped within 10 s")
		default:
		}
		out.Reset()
		r.printSummary(7, probe.Summary{Backend: "plain"})
		if !strings.Contains(out.String(), "command exited with code 7 after ") {
			t.Fatalf("summary: %q", out.String())
		}
	}
	ended, _, ok := c.result()
	if !ok || ended.Before(c.started) || c.exitCode() != 7 {
		t.Fatalf("after reaping: ended %v (started %v), ok %v, code %d", ended, c.started, ok, c.exitCode())
	}
}
