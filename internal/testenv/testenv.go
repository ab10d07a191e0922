// Package testenv holds test helpers shared by the tests of other packages:
// checking for external tools, running a throw-away VictoriaMetrics,
// backfilling with promtool and strictly parsing statexec output files.
//
// Every helper takes a testing.TB, fails with t.Fatalf and a clear message,
// registers its cleanups with t.Cleanup, bounds every wait with a deadline
// and only talks to 127.0.0.1.
//
// The external tools come from Debian packages installed by
// scripts/install-deps.sh: /usr/bin/victoria-metrics (package
// victoria-metrics 1.79.5) and /usr/bin/promtool (package prometheus 2.42).
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// extraDirs are searched after $PATH: a non-root user's PATH on Debian lacks
// the sbin directories (bpftool, ip, setcap live there).
var extraDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"}

// LookPath finds an executable like exec.LookPath, also searching the sbin
// directories that are missing from a normal user's PATH.
func LookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	if filepath.Base(name) != name {
		return "", err
	}
	for _, dir := range extraDirs {
		cand := filepath.Join(dir, name)
		if fi, serr := os.Stat(cand); serr == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", err
}

// isRoot reports whether tests run as root, which is how CI runs them: there
// a missing tool is a failure, not a reason to skip.
var isRoot = func() bool { return os.Geteuid() == 0 }

// Require checks that every command is installed. If some are missing it
// fails the test when running as root (CI, where scripts/install-deps.sh must
// have been run) and skips it otherwise.
func Require(t testing.TB, cmds ...string) {
	t.Helper()
	var missing []string
	for _, c := range cmds {
		if _, err := LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return
	}
	if isRoot() {
		t.Fatalf("required command(s) %q not found (running as root, so this is a failure): run scripts/install-deps.sh", missing)
		return
	}
	t.Skipf("skipping: required command(s) %q not found (run scripts/install-deps.sh as root to install them)", missing)
}

// Bin calls Require for name and returns the executable's full path.
func Bin(t testing.TB, name string) string {
	t.Helper()
	Require(t, name)
	p, err := LookPath(name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}
