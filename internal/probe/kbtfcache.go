//go:build linux

package probe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"

	"golang.org/x/sys/unix"
)

// The kernel layout is the same at every run on one kernel build, and
// scanning the BTF (mapping 5+ MB of it and walking every type) is a
// measurable part of the eBPF start-up. Its result is kept in a file,
// keyed by the BTF file's identity and the kernel's release and version
// strings, and by the shape of kernelLayout (so that a statexec whose
// layout has new fields does not take an older one's values). The cache
// is only an optimisation: any problem with it means a scan.

// layoutCacheDir is where root keeps the cache: a directory only root
// can write, as statexec runs as root on benchmark hosts.
const layoutCacheDir = "/var/cache/statexec"

const layoutCacheFile = "kernel-layout.json"

// maxLayoutCache bounds what is read of the cache file.
const maxLayoutCache = 64 << 10

type layoutCache struct {
	Key    string       `json:"key"`
	Layout kernelLayout `json:"layout"`
}

// loadKernelLayout returns the kernel layout, from the cache when it is
// for this kernel and this statexec's layout, else from a scan (which is
// then cached).
func loadKernelLayout() (kernelLayout, error) {
	return cachedKernelLayout(layoutCacheDir, "/sys/kernel/btf/vmlinux", scanKernelLayout)
}

func cachedKernelLayout(dir, btfPath string, scan func() (kernelLayout, error)) (kernelLayout, error) {
	key, err := layoutKey(btfPath)
	if err != nil {
		return scan()
	}
	if l, ok := readLayoutCache(dir, key); ok {
		return l, nil
	}
	l, err := scan()
	if err == nil {
		_ = writeLayoutCache(dir, key, l)
	}
	return l, err
}

// layoutKey identifies the kernel build and the layout's shape.
func layoutKey(btfPath string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(btfPath, &st); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "btf dev=%d ino=%d size=%d mtime=%d.%d\n", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	for _, f := range []string{"/proc/sys/kernel/osrelease", "/proc/sys/kernel/version"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %q\n", f, b)
	}
	if err := writeShape(h, reflect.TypeFor[kernelLayout](), "kernelLayout", 0); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeShape writes the fields of struct type t, and of the structs its
// fields point to (a group's own layout, e.g. dropLayout), to w: a new
// field anywhere changes the cache key.
func writeShape(w io.Writer, t reflect.Type, name string, depth int) error {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || depth > 4 {
		return nil
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			// JSON would drop it: such a layout is not cached.
			return fmt.Errorf("%s.%s is not exported", name, f.Name)
		}
		fmt.Fprintf(w, "field %s.%s %s %d\n", name, f.Name, f.Type, f.Offset)
		if err := writeShape(w, f.Type, name+"."+f.Name, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// readLayoutCache reads the cache, trusting it only when the directory
// and the file belong to this user and no one else can write them, and
// the file is a regular one (not a link) holding this key.
func readLayoutCache(dir, key string) (kernelLayout, bool) {
	if !privateDir(dir) {
		return kernelLayout{}, false
	}
	fd, err := unix.Open(filepath.Join(dir, layoutCacheFile), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return kernelLayout{}, false
	}
	f := os.NewFile(uintptr(fd), layoutCacheFile)
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != uint32(os.Geteuid()) || st.Mode&0o022 != 0 {
		return kernelLayout{}, false
	}
	data, err := io.ReadAll(io.LimitReader(f, maxLayoutCache+1))
	if err != nil || len(data) > maxLayoutCache {
		return kernelLayout{}, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c layoutCache
	if dec.Decode(&c) != nil || c.Key != key {
		return kernelLayout{}, false
	}
	return c.Layout, true
}

// privateDir reports whether dir is a directory (not a link) of this user
// that no one else can write.
func privateDir(dir string) bool {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Uid == uint32(os.Geteuid()) && st.Mode&0o022 == 0
}

// writeLayoutCache writes the cache atomically (a new file renamed over
// the old one) in a 0700 directory, as a 0600 file.
func writeLayoutCache(dir, key string, l kernelLayout) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if !privateDir(dir) {
		return errors.New("cache directory not private")
	}
	data, err := json.Marshal(layoutCache{Key: key, Layout: l})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+layoutCacheFile+".tmp-*") // 0600
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, layoutCacheFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
