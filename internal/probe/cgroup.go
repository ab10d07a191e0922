//go:build linux

package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupPrefix names the directories statexec creates: statexec-<pid>-<random>
// (the pid is for people; liveness is the lock below).
//
// A run holds an exclusive flock on its cgroup directory for as long as it
// lives; the kernel releases it when the process dies, however it dies. A
// later run removes statexec-* directories whose lock it can take: their
// owner is dead. Unlike kill(pid, 0), that is not fooled by a reused pid
// nor by a live run in another PID namespace sharing the parent cgroup.
const cgroupPrefix = "statexec-"

// Bounds for the cleanup loops: a cgroup.kill is delivered synchronously,
// but the tasks still have to run their exit path before rmdir succeeds.
const (
	cgroupDrainTimeout = 5 * time.Second
	cgroupPollMin      = 500 * time.Microsecond
	cgroupPollMax      = 20 * time.Millisecond
)

// cgroup is the run's cgroup v2 directory.
type cgroup struct {
	path string
	dir  *os.File // O_DIRECTORY handle: the CgroupFD of CLONE_INTO_CGROUP
	id   uint64   // inode number == the kernel's cgroup id seen by BPF
}

// cgroup2Mount returns the mount point of the cgroup v2 hierarchy
// (/sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones).
func cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(data)) {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - cgroup2 cgroup2 rw
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) == 0 || f[0] != "cgroup2" {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return unescapeMountinfo(f[4]), nil
		}
	}
	return "", errors.New("no cgroup2 mount")
}

// unescapeMountinfo undoes the octal escapes (\040 for space ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// selfCgroup returns the current process's cgroup v2 path ("0::/path").
func selfCgroup() string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "/"
	}
	for line := range strings.Lines(string(data)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			return p
		}
	}
	return "/"
}

// cgroupParents lists where a run's cgroup may be created, best first:
// next to statexec in its own cgroup (delegated subtrees work there), then
// at the root of the hierarchy.
func cgroupParents(mount string) []string {
	parents := []string{}
	if own := filepath.Join(mount, filepath.Clean("/"+selfCgroup())); own != mount {
		parents = append(parents, own)
	}
	return append(parents, mount)
}

// cloneIntoCgroupKernel is the first kernel with clone3's
// CLONE_INTO_CGROUP, which starting the command in the cgroup needs.
const cloneIntoCgroupMajor, cloneIntoCgroupMinor = 5, 7

// kernelAtLeast reports whether a kernel release ("5.4.0-150-generic",
// "6.18.44-fc") is at least major.minor; unparsable releases pass.
func kernelAtLeast(release string, wantMajor, wantMinor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return true
	}
	major, err1 := strconv.Atoi(parts[0])
	minorDigits := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	minor, err2 := strconv.Atoi(minorDigits)
	if err1 != nil || err2 != nil {
		return true
	}
	return major > wantMajor || major == wantMajor && minor >= wantMinor
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// createCgroup makes the run's cgroup directory.
func createCgroup() (*cgroup, error) {
	// Hybrid hosts with an older kernel (e.g. 5.4) have a cgroup2 mount
	// but cannot start a process inside a cgroup: without this check the
	// command itself would fail to start.
	if rel := kernelRelease(); !kernelAtLeast(rel, cloneIntoCgroupMajor, cloneIntoCgroupMinor) {
		return nil, fmt.Errorf("kernel %s lacks CLONE_INTO_CGROUP (needs %d.%d)", rel, cloneIntoCgroupMajor, cloneIntoCgroupMinor)
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	// Another run's CleanStale may take the lock of the fresh, still
	// unlocked directory (and remove it) before this run locks it: then
	// this run tries again under a new name.
	for range 5 {
		var cg *cgroup
		if cg, err = makeCgroupDir(mount); !errors.Is(err, errLostToCleanup) {
			return cg, err
		}
	}
	return nil, err
}

// errLostToCleanup: a concurrent CleanStale took the fresh directory.
var errLostToCleanup = errors.New("taken by a concurrent cleanup")

// makeCgroupDir makes and locks a directory of a new name under the
// first parent that allows it.
func makeCgroupDir(mount string) (*cgroup, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s%d-%s", cgroupPrefix, os.Getpid(), hex.EncodeToString(rnd[:]))
	var firstErr error
	for _, parent := range cgroupParents(mount) {
		path := filepath.Join(parent, name)
		if err := os.Mkdir(path, 0o755); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		cg, err := openCgroup(path)
		if err == nil {
			err = cg.lock()
			if err != nil {
				_ = cg.dir.Close()
			}
		}
		if err != nil {
			_ = os.Remove(path)
			return nil, err
		}
		return cg, nil
	}
	return nil, firstErr
}

// lock takes the run's lock on its directory. Between mkdir and this
// call another run's CleanStale may have taken the lock of the fresh,
// unlocked directory and removed it: then the lock fails or the path no
// longer names the directory, and this run must not use it.
func (c *cgroup) lock() error {
	if err := unix.Flock(c.fd(), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", c.path, errLostToCleanup)
		}
		return fmt.Errorf("lock %s: %w", c.path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(c.path, &st); err != nil || st.Ino != c.id {
		return fmt.Errorf("lock %s: %w", c.path, errLostToCleanup)
	}
	return nil
}

func openCgroup(path string) (*cgroup, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return &cgroup{path: path, dir: os.NewFile(uintptr(fd), path), id: st.Ino}, nil
}

// fd is the directory descriptor for SysProcAttr.CgroupFD.
func (c *cgroup) fd() int { return int(c.dir.Fd()) }

// remove kills every task left in the cgroup and removes the directory.
func (c *cgroup) remove() error {
	err := removeCgroupDir(c.path)
	if cerr := c.dir.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	return err
}

// maxCgroupDepth bounds the sub-cgroups removeCgroupDir descends into.
const maxCgroupDepth = 32

// removeCgroupDir writes 1 to cgroup.kill (SIGKILL to every task, including
// ones forked while it runs, in sub-cgroups too), waits until the cgroup is
// empty and removes it with the sub-cgroups the command may have made.
// Every loop is bounded by cgroupDrainTimeout.
func removeCgroupDir(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killed := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0) == nil
	return drainCgroupDir(path, killed, time.Now().Add(cgroupDrainTimeout), 0)
}

// removeSubCgroups removes the sub-directories of a cgroup (rmdir of a
// cgroup fails with EBUSY while it has children).
func removeSubCgroups(path string, killed bool, deadline time.Time, depth int) error {
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if depth >= maxCgroupDepth {
			return fmt.Errorf("remove %s: sub-cgroups deeper than %d", path, maxCgroupDepth)
		}
		if err := drainCgroupDir(filepath.Join(path, e.Name()), killed, deadline, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func drainCgroupDir(path string, killed bool, deadline time.Time, depth int) error {
	wait := cgroupPollMin
	for {
		pids, err := readPids(filepath.Join(path, "cgroup.procs"))
		if err == nil && len(pids) == 0 {
			if err := removeSubCgroups(path, killed, deadline, depth); err != nil {
				return err
			}
			// Zombies are not listed and do not keep the cgroup
			// populated; rmdir can still race with exiting tasks.
			err = syscall.Rmdir(path)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				return nil
			}
			if !errors.Is(err, syscall.EBUSY) {
				return &os.PathError{Op: "rmdir", Path: path, Err: err}
			}
		} else if errors.Is(err, os.ErrNotExist) {
			return nil
		} else if !killed {
			// Kernels before 5.14 have no cgroup.kill.
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove %s: tasks still present after %v", path, cgroupDrainTimeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, cgroupPollMax)
	}
}

// readPids reads a cgroup.procs / cgroup.threads file.
func readPids(path string) ([]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parsePids(data), nil
}

func parsePids(data []byte) []int { return appendPids(nil, data) }

// appendPids appends the pids of a cgroup.procs / cgroup.threads file
// (one decimal number a line) to dst.
func appendPids(dst []int, data []byte) []int {
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		if pid, err := strconv.Atoi(string(bytes.TrimSpace(line))); err == nil {
			dst = append(dst, pid)
		}
	}
	return dst
}

// CleanStale removes statexec-* cgroups whose statexec process no longer
// exists (it was killed with SIGKILL and could not clean up), killing
// whatever still runs in them: those whose lock it can take. root is the cgroup2 mount; "" finds it. It
// looks at the mount's top level and at the current process's own cgroup,
// the two places Start creates them. Start calls it.
func CleanStale(root string) error {
	if root == "" {
		m, err := cgroup2Mount()
		if err != nil {
			return fmt.Errorf("probe: clean stale cgroups: %w", err)
		}
		root = m
	}
	var errs []error
	for _, parent := range cgroupParents(root) {
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) {
				continue
			}
			if err := removeIfStale(filepath.Join(parent, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("probe: clean stale cgroups: %w", err)
	}
	return nil
}

// removeIfStale removes path if no live run holds its lock. The lock is
// held while removing, so that the directory's owner cannot be between
// mkdir and lock (see cgroup.lock).
func removeIfStale(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil // removed meanwhile, or not ours to open
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil // a live run holds it (EWOULDBLOCK)
	}
	return removeCgroupDir(path)
}
