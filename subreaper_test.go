package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// denySubreaperEnv makes the test binary, started again by
// TestSubreaperFailureReported, refuse prctl(PR_SET_CHILD_SUBREAPER) to
// itself with a seccomp filter and exec the command named in its
// arguments, which inherits the filter.
const denySubreaperEnv = "STATEXEC_TEST_DENY_SUBREAPER"

// auditArch is the seccomp architecture of this build, 0 if unknown here.
func auditArch() uint32 {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64
	}
	return 0
}

// execDenyingSubreaper installs the filter and execs argv; it returns only
// on error. The filter is per thread: the thread is locked so that the
// exec happens on the thread that has it.
func execDenyingSubreaper(argv []string) error {
	runtime.LockOSThread()
	const (
		offNr   = 0  // seccomp_data.nr
		offArch = 4  // seccomp_data.arch
		offArg0 = 16 // seccomp_data.args[0], low 32 bits (little endian)
	)
	deny := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArch},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 5, K: auditArch()},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offNr},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: unix.SYS_PRCTL},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArg0},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.PR_SET_CHILD_SUBREAPER},
		{Code: unix.BPF_RET | unix.BPF_K, K: deny},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return syscall.Exec(argv[0], argv, os.Environ())
}

// TestSubreaperFailureReported: when statexec cannot become the child
// subreaper, it says so on stderr in one line and still runs the command.
func TestSubreaperFailureReported(t *testing.T) {
	if auditArch() == 0 {
		t.Skipf("no seccomp filter for %s in this test", runtime.GOARCH)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := newCmd(t, []string{denySubreaperEnv + "=1", "SE_SUMMARY=0"}, "exec", "sh", "-c", "exit 3")
	cmd.Args = append([]string{self}, cmd.Args...) // self statexec exec ...
	cmd.Path = self
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if code != 3 {
		t.Fatalf("exit %d (%v), want the command's 3; stderr:\n%s", code, err, stderr.String())
	}
	want := "statexec: become child subreaper: operation not permitted; orphaned descendants of the command are not reaped by statexec\n"
	if got := stderr.String(); got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
	testenvParse(t, fileOf(cmd.Env))

	// Without the filter, no such line.
	r := statexec(t, "", []string{"SE_SUMMARY=0"}, "exec", "sh", "-c", "exit 3")
	if r.code != 3 || strings.Contains(r.stderr, "subreaper") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
