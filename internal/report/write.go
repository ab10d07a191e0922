package report

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Load reads every file; the first error names its file (and line).
func Load(paths []string) ([]*Run, error) {
	runs := make([]*Run, 0, len(paths))
	for _, p := range paths {
		r, err := LoadFile(p)
		if err != nil {
			return nil, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// DefaultOutput is the first file's name with .html instead of its
// extension.
func DefaultOutput(first string) string {
	return strings.TrimSuffix(first, filepath.Ext(first)) + ".html"
}

// CheckOutput verifies, before any work and without touching an existing
// file, that path can be written: its directory exists and takes a new
// file, and path is not a directory.
func CheckOutput(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("report %s: is a directory", path)
	}
	dir := filepath.Dir(path)
	probe, err := os.CreateTemp(dir, ".statexec-report-check-*")
	if err != nil {
		return fmt.Errorf("report %s: cannot write in %s: %w", path, dir, err)
	}
	name := probe.Name()
	probe.Close()
	return os.Remove(name)
}

// WriteFile writes the report's page to path through a temporary file
// renamed over it, so that a failure never leaves half a page.
func (rep *Report) WriteFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err := rep.WriteHTML(w); err != nil {
		tmp.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
