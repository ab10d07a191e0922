package main

// End-to-end checks of the per-process numbers against ground truth:
// bytes a bare command moved to disk, and its memory peak.

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/statexec/statexec/internal/testenv"
)

const mib = 1 << 20

// diskDir is a directory on a block device (the page-cache-free direct
// I/O below must reach a disk, which tmpfs has not).
func diskDir(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{t.TempDir(), "/var/tmp"} {
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			continue
		}
		if fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC {
			continue
		}
		if dir == "/var/tmp" {
			d, err := os.MkdirTemp(dir, "statexec-disk-")
			if err != nil {
				continue
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
		return dir
	}
	t.Skip("no directory on a block device (TMPDIR and /var/tmp are tmpfs)")
	return ""
}

// lastValue is the value of the last sample of name.
func lastValue(t *testing.T, f *testenv.File, name string) float64 {
	t.Helper()
	s := f.Series(name, nil)
	if len(s) == 0 {
		t.Fatalf("no samples of %s", name)
	}
	return s[len(s)-1].Value
}

// TestBareCommandDiskIO: dd with direct I/O, not wrapped in a shell, so
// statexec reaps the very process that did the I/O. Its /proc/PID/io
// vanished with the reaping, and the last sample came after it.
func TestBareCommandDiskIO(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for both backends")
	}
	dir := diskDir(t)
	blob := filepath.Join(dir, "blob")
	const size = 64 * mib
	for _, backend := range []string{"ebpf", "plain"} {
		t.Run(backend, func(t *testing.T) {
			env := []string{"SE_PROBES=" + backend, "SE_INTERVAL=100ms"}
			for _, c := range []struct {
				metric string
				args   []string
			}{
				{"statexec_process_disk_write_bytes_total", []string{"dd", "if=/dev/zero", "of=" + blob, "bs=1M", "count=64", "oflag=direct"}},
				{"statexec_process_disk_read_bytes_total", []string{"dd", "if=" + blob, "of=/dev/null", "bs=1M", "iflag=direct"}},
			} {
				r := statexec(t, "", env, append([]string{"exec"}, c.args...)...)
				if r.code != 0 {
					t.Fatalf("%v: exit %d\n%s", c.args, r.code, r.stderr)
				}
				got := lastValue(t, testenv.ParseFile(t, r.file), c.metric)
				t.Logf("%s: %s = %.0f (%.4f x 64 MiB)", c.args[2], c.metric, got, got/size)
				if got < size || got > 1.06*size {
					t.Errorf("%s = %.0f, want within [%d, %.0f]", c.metric, got, size, 1.06*size)
				}
			}
		})
	}
}

var peakRSSLine = regexp.MustCompile(`peak rss ([0-9.]+) (B|KiB|MiB|GiB)`)

// summaryPeak is the peak RSS of the summary, in bytes.
func summaryPeak(t *testing.T, stderr string) float64 {
	t.Helper()
	m := peakRSSLine.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no peak rss in the summary:\n%s", stderr)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
	return v * unit
}

// TestPeakRSSOfShortCommands: the kernel folds the pre-exec memory map's
// peak (statexec's own: the child shares it until exec) into the
// command's maxrss, so rusage alone said ~12 MiB for `true`. dd with a
// 100 MiB block allocates and fills one 100 MiB buffer and exits.
func TestPeakRSSOfShortCommands(t *testing.T) {
	// A copy of statexec that uid 65534 can run, and a metrics
	// directory it can write.
	bin := filepath.Join(t.TempDir(), "statexec")
	data, err := os.ReadFile(statexecBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(filepath.Dir(bin)), filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	type user struct {
		name   string
		prefix []string
	}
	users := []user{{"self", nil}}
	if os.Geteuid() == 0 {
		testenv.Require(t, "setpriv")
		users = append(users, user{"nobody", []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}})
	}
	for _, u := range users {
		for _, c := range []struct {
			name     string
			args     []string
			min, max float64
		}{
			{"dd-100MiB", []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"}, 100 * mib, 110 * mib},
			{"true", []string{"true"}, 0, 4 * mib},
		} {
			t.Run(u.name+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				for _, d := range []string{filepath.Dir(dir), dir} {
					if err := os.Chmod(d, 0o777); err != nil {
						t.Fatal(err)
					}
				}
				file := filepath.Join(dir, "m.txt")
				argv := append(append(append([]string{}, u.prefix...), bin, "exec"), c.args...)
				cmd := exec.Command(argv[0], argv[1:]...)
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SE_METRICS_FILE=" + file}
				var stderr strings.Builder
				cmd.Stderr = &stderr
				if err := cmd.Run(); err != nil {
					t.Fatalf("%v: %v\n%s", argv, err, stderr.String())
				}
				lo := c.min
				if strings.Contains(stderr.String(), "probes: ebpf") && lo == 0 {
					// eBPF takes each process's peak as it exits:
					// even true's ~1 MiB is seen.
					lo = 256 << 10
				}
				sum := summaryPeak(t, stderr.String())
				metric := lastValue(t, testenv.ParseFile(t, file), "statexec_process_memory_rss_peak_bytes")
				t.Logf("peak rss: summary %.1f MiB, metric %.1f MiB", sum/mib, metric/mib)
				for what, v := range map[string]float64{"summary": sum, "metric": metric} {
					// The summary rounds to 0.1 of its unit.
					if v < lo-0.05*mib || v > c.max {
						t.Errorf("%s peak rss %.2f MiB, want within [%.2f, %.0f] MiB", what, v/mib, lo/mib, c.max/mib)
					}
				}
			})
		}
	}
}
