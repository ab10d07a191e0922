//go:build !linux

// statexec needs Linux: cgroup v2, eBPF, /proc and Linux process control.
// Elsewhere it builds to a binary that says so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "statexec: runs on Linux only")
	os.Exit(1)
}
