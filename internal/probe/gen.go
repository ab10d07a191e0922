//go:build linux

package probe

// The BPF objects are generated and committed so that building statexec
// needs no clang. CI regenerates them and fails on a diff.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type tree_counters statexec ../../bpf/statexec.bpf.c -- -I../../bpf
