package probe

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fallbackHelper runs in an unprivileged child: auto mode must fall back
// with one notice, ebpf mode must fail.
func fallbackHelper() error {
	s, err := Start(Options{Mode: ModeAuto, Notice: os.Stderr})
	if err != nil {
		return fmt.Errorf("auto mode failed: %w", err)
	}
	fmt.Printf("backend=%s\n", s.Backend())
	if err := s.Close(); err != nil {
		return err
	}
	s, err = Start(Options{Mode: ModeEBPF, Notice: os.Stderr})
	if err == nil {
		s.Close()
		fmt.Println("ebpf-error=<nil>")
		return nil
	}
	fmt.Printf("ebpf-error=%v\n", strings.ReplaceAll(err.Error(), "\n", " "))
	return nil
}

func TestFallbackWithoutPrivileges(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop privileges")
	}
	// A copy of the test binary that nobody can execute (go test's
	// build directory is private).
	dir, err := os.MkdirTemp("", "probe-fallback-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Under go test -cover the child as nobody cannot write the coverage
	// directory go test made and would say so on stderr: it gets one of
	// its own (not merged; the root children's coverage still is).
	coverDir := filepath.Join(dir, "cover")
	if err := os.Mkdir(coverDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(coverDir, 0o777); err != nil { // umask
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "probe.test")
	if err := copyFile(os.Args[0], bin); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		args   []string
		reason string // in the notice: which step failed
	}{
		// root without any capability: the cgroup2 root is mode 0555,
		// so not even the cgroup.
		{"root-no-caps", []string{"--inh-caps=-all", "--bounding-set=-all"}, "create cgroup"},
		// root with only CAP_DAC_OVERRIDE: the cgroup works, BPF load
		// does not (the notice must still be one line, the cgroup must
		// still be used and removed).
		{"root-dac-only", []string{"--inh-caps=-all", "--bounding-set=-all,+dac_override"}, "load BPF"},
		// nobody: not even the cgroup.
		{"nobody", []string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"}, "create cgroup"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command("setpriv", append(c.args, "--", bin)...)
			cmd.Env = append(os.Environ(), helperEnv+"=fallback")
			if c.name == "nobody" {
				cmd.Env = append(cmd.Env, "GOCOVERDIR="+coverDir)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("helper: %v\nstdout: %s\nstderr: %s", err, &stdout, &stderr)
			}
			t.Logf("stdout: %s", &stdout)
			t.Logf("stderr: %s", &stderr)
			out := stdout.String()
			if !strings.Contains(out, "backend=plain\n") {
				t.Errorf("auto mode did not fall back to plain: %q", out)
			}
			if !strings.Contains(out, "ebpf-error=probe: ") {
				t.Errorf("ebpf mode did not fail: %q", out)
			}
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if len(lines) != 1 {
				t.Fatalf("want exactly one notice line, got %d: %q", len(lines), stderr.String())
			}
			l := lines[0]
			if !strings.HasPrefix(l, "statexec: eBPF probes unavailable (") ||
				!strings.HasSuffix(l, "); per-process network and scheduler metrics are off, using plain /proc metrics") {
				t.Errorf("notice = %q", l)
			}
			if !strings.Contains(l, "("+c.reason) {
				t.Errorf("notice %q does not name the failed step %q", l, c.reason)
			}
		})
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
