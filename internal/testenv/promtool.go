package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const promtoolTimeout = 2 * time.Minute

// runPromtool runs promtool with args (and stdin, if not nil), bounded in time,
// and returns its combined output.
func runPromtool(t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	bin := Bin(t, "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), promtoolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", promtoolTimeout, err)
	}
	return out.String(), err
}

// PromtoolBackfill runs `promtool tsdb create-blocks-from openmetrics <path>
// <dir>` like a user backfilling Prometheus, fails on a non-zero exit (with
// promtool's output), and returns the number of samples in the created blocks.
//
// promtool 2.42 silently drops out-of-order samples of a series and keeps one
// of duplicate ones, so compare the result with the number of samples in the
// file to detect that. `_created` lines count as samples.
func PromtoolBackfill(t testing.TB, path string) int {
	t.Helper()
	return len(PromtoolSamples(t, path))
}

// PromtoolSamples backfills path as PromtoolBackfill does and returns every
// sample of the created blocks, as `promtool tsdb dump` prints them (2.42's
// dump needs a wal/ directory, which is created). Their number is
// cross-checked with the NUM SAMPLES column of `promtool tsdb list`.
func PromtoolSamples(t testing.TB, path string) []Sample {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "blocks")
	out, err := runPromtool(t, nil, "tsdb", "create-blocks-from", "openmetrics", path, dir)
	if err != nil {
		t.Fatalf("promtool tsdb create-blocks-from openmetrics %s failed: %v\n%s", path, err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "wal"), 0o755); err != nil {
		t.Fatalf("promtool backfill: %v", err)
	}
	dump, err := runPromtool(t, nil, "tsdb", "dump", dir)
	if err != nil {
		t.Fatalf("promtool tsdb dump %s failed: %v\n%s", dir, err, tail(dump, 20))
	}
	var samples []Sample
	for _, l := range strings.Split(dump, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		s, err := parseDumpLine(l)
		if err != nil {
			t.Fatalf("promtool tsdb dump: %v", err)
		}
		samples = append(samples, s)
	}
	list, err := runPromtool(t, nil, "tsdb", "list", dir)
	if err != nil {
		t.Fatalf("promtool tsdb list %s failed: %v\n%s", dir, err, list)
	}
	listed, err := sumListedSamples(list)
	if err != nil {
		t.Fatalf("promtool tsdb list %s: %v\n%s", dir, err, list)
	}
	if listed != len(samples) {
		t.Fatalf("promtool: tsdb list says %d samples but tsdb dump printed %d", listed, len(samples))
	}
	return samples
}

// parseDumpLine reads one line of `promtool tsdb dump`:
// {__name__="x", k="v"} value timestamp_ms, label values Go-quoted.
func parseDumpLine(l string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	rest := l[1:]
	for !strings.HasPrefix(rest, "}") {
		rest = strings.TrimPrefix(rest, ", ")
		name, after, ok := strings.Cut(rest, "=")
		if !ok {
			return s, fmt.Errorf("no = in %q", l)
		}
		q, err := strconv.QuotedPrefix(after)
		if err != nil {
			return s, fmt.Errorf("label %s in %q: %v", name, l, err)
		}
		v, _ := strconv.Unquote(q)
		if name == "__name__" {
			s.Name = v
		} else {
			s.Labels[name] = v
		}
		rest = after[len(q):]
	}
	f := strings.Fields(rest[1:])
	if len(f) != 2 {
		return s, fmt.Errorf("want value and timestamp after the labels in %q", l)
	}
	var err error
	if s.Value, err = strconv.ParseFloat(f[0], 64); err != nil {
		return s, fmt.Errorf("value in %q: %v", l, err)
	}
	if s.TimestampMs, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return s, fmt.Errorf("timestamp in %q: %v", l, err)
	}
	return s, nil
}

// sumListedSamples adds up the NUM SAMPLES column of `promtool tsdb list`.
func sumListedSamples(list string) (int, error) {
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "BLOCK ULID") {
		return 0, fmt.Errorf("unexpected output (no header)")
	}
	// Columns: BLOCK ULID, MIN TIME, MAX TIME, DURATION, NUM SAMPLES, NUM
	// CHUNKS, NUM SERIES, SIZE.
	n := 0
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 7 {
			return 0, fmt.Errorf("unexpected line %q", l)
		}
		v, err := strconv.Atoi(f[4])
		if err != nil {
			return 0, fmt.Errorf("NUM SAMPLES in %q: %v", l, err)
		}
		n += v
	}
	return n, nil
}

// PromtoolCheckMetrics pipes text (one Prometheus 0.0.4 text snapshot: integer
// or no timestamps, no `# EOF` needed) to `promtool check metrics` and fails
// on a non-zero exit or on any line it prints (lint problems such as a counter
// without _total or a missing HELP make 2.42 exit 3; a float timestamp is a
// parse error).
func PromtoolCheckMetrics(t testing.TB, text string) {
	t.Helper()
	out, err := runPromtool(t, []byte(text), "check", "metrics")
	if err == nil && strings.TrimSpace(out) == "" {
		return
	}
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Fprintf(&b, "  promtool: %s\n", l)
	}
	status := "exit 0"
	if err != nil {
		status = err.Error()
	}
	t.Fatalf("promtool check metrics reported problems (%s):\n%s--- input (first lines) ---\n%s",
		status, b.String(), head(text, 20))
}

// head returns the first n lines of s.
func head(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
