//go:build linux

package probe

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

const kernelBTF = "/sys/kernel/btf/vmlinux"

func requireKernelBTF(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(kernelBTF); err != nil {
		t.Skipf("kernel without BTF: %v", err)
	}
}

// TestLayoutCacheMatchesScan: the first run scans and writes the cache
// (0700 directory, 0600 file), the next ones read it without scanning and
// get exactly the scan's layout.
func TestLayoutCacheMatchesScan(t *testing.T) {
	requireKernelBTF(t)
	want, err := scanKernelLayout()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cache")
	scans := 0
	scan := func() (kernelLayout, error) { scans++; return scanKernelLayout() }
	for i := range 3 {
		got, err := cachedKernelLayout(dir, kernelBTF, scan)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("run %d: %+v, %v; want %+v", i, got, err, want)
		}
	}
	if scans != 1 {
		t.Errorf("%d scans in 3 runs, want 1", scans)
	}
	for path, mode := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, layoutCacheFile): 0o600} {
		if fi, err := os.Lstat(path); err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, mode)
		}
	}
}

// TestLayoutCacheDistrusted: a cache that is corrupt, for another kernel
// or layout, a link, writable by others, or in a directory others can
// write is not used (the layout is scanned).
func TestLayoutCacheDistrusted(t *testing.T) {
	requireKernelBTF(t)
	fake := kernelLayout{SumExecRuntime: 12345}
	scanned := kernelLayout{SumExecRuntime: 1}
	scan := func() (kernelLayout, error) { return scanned, nil }
	key, err := layoutKey(kernelBTF)
	if err != nil {
		t.Fatal(err)
	}
	for name, spoil := range map[string]func(t *testing.T, dir, file string){
		"corrupt": func(t *testing.T, dir, file string) { write(t, file, `{"key":"`+key+`","layout":{"SumExecRuntime":`) },
		"unknown field": func(t *testing.T, dir, file string) {
			write(t, file, `{"key":"`+key+`","layout":{"SumExecRuntime":12345},"x":1}`)
		},
		"other key": func(t *testing.T, dir, file string) {
			write(t, file, `{"key":"00`+key[2:]+`","layout":{"SumExecRuntime":12345}}`)
		},
		"group writable file": func(t *testing.T, dir, file string) { chmod(t, file, 0o620) },
		"open directory":      func(t *testing.T, dir, file string) { chmod(t, dir, 0o777) },
		"link": func(t *testing.T, dir, file string) {
			other := filepath.Join(dir, "other.json")
			if err := os.Rename(file, other); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, file); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			if err := writeLayoutCache(dir, key, fake); err != nil {
				t.Fatal(err)
			}
			if got, _ := cachedKernelLayout(dir, kernelBTF, scan); !reflect.DeepEqual(got, fake) {
				t.Fatalf("a good cache was not used: %+v", got)
			}
			spoil(t, dir, filepath.Join(dir, layoutCacheFile))
			if got, err := cachedKernelLayout(dir, kernelBTF, scan); err != nil || !reflect.DeepEqual(got, scanned) {
				t.Errorf("got %+v, %v; want the scan's %+v", got, err, scanned)
			}
		})
	}
	t.Run("scan error not cached", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "cache")
		broken := errors.New("broken")
		if _, err := cachedKernelLayout(dir, kernelBTF, func() (kernelLayout, error) { return kernelLayout{}, broken }); err != broken {
			t.Fatalf("error %v, want the scan's", err)
		}
		if _, err := os.Stat(filepath.Join(dir, layoutCacheFile)); err == nil {
			t.Error("a failed scan was cached")
		}
	})
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
