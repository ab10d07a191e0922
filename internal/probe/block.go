//go:build linux

package probe

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type block_counters block ../../bpf/block.bpf.c -- -I../../bpf

// blockHistSlots mirrors BLOCK_HIST_SLOTS in bpf/block.bpf.c.
const blockHistSlots = len(blockBlockCounters{}.Hist[0])

// Exposed bucket bounds of the disk latency histogram: 1.024 us .. 34 s
// (slot k is [2^k, 2^(k+1)) ns; slots below fold into the first bucket,
// the last one is +Inf only).
const (
	blockMinLeLog2 = 10
	blockMaxLeLog2 = 35
)

var blockOps = [2]string{"read", "write"}

// blockGroup: latency of the tree's block I/O requests, issue to
// completion, from the block_rq_issue/block_rq_complete raw tracepoints
// (block_io_start marks the requests the tree creates).
type blockGroup struct {
	objs  blockObjects
	links links
	// marked: block_io_start is attached (Linux 6.5 on); without it only
	// requests that a task of the cgroup issues itself are seen.
	marked bool
	cpus   []blockBlockCounters
	last   blockBlockCounters

	latency *prometheus.Desc
	hists   [len(blockOps)]*log2Hist
}

func loadBlockGroup(env *loadEnv) (_ group, err error) {
	spec, err := loadBlock()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	if !l.HaveRequest {
		return nil, errors.New("kernel BTF has no struct request")
	}
	vars := commonVariables(env.cg, l)
	vars["off_rq_cmd_flags"] = l.RqCmdFlags
	if err := setVariables(spec, vars); err != nil {
		return nil, err
	}
	g := &blockGroup{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, loadError(err)
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	// Complete before issue: a request issued between the two attaches
	// would otherwise stay in the map.
	if err := g.links.rawTracepoint(g.objs.OnBlockRqComplete, "block_rq_complete"); err != nil {
		return nil, err
	}
	if err := g.links.rawTracepoint(g.objs.OnBlockRqIssue, "block_rq_issue"); err != nil {
		return nil, err
	}
	// Optional: older kernels have no block_io_start.
	g.marked = g.links.rawTracepoint(g.objs.OnBlockIoStart, "block_io_start") == nil
	if !g.marked {
		if err := g.objs.IssueFallback.Set(true); err != nil {
			return nil, fmt.Errorf("set issue_fallback: %w", err)
		}
	}
	g.latency = env.desc("statexec_process_disk_io_latency_seconds", "Latency of the command's block I/O requests from issue to the device to completion, by operation (read or write; eBPF block_rq_issue/complete; writeback by kernel threads is not the command's).", "op")
	return g, nil
}

func (g *blockGroup) sample() error {
	if err := g.objs.Counters.Lookup(uint32(0), &g.cpus); err != nil {
		return fmt.Errorf("read BPF block counters: %w", err)
	}
	var sum blockBlockCounters
	for i := range g.cpus {
		c := &g.cpus[i]
		for op := range c.Hist {
			for k := range c.Hist[op] {
				sum.Hist[op][k] += c.Hist[op][k]
			}
			sum.SumNs[op] += c.SumNs[op]
		}
		sum.IssuedMarked += c.IssuedMarked
		sum.IssuedByCgroup += c.IssuedByCgroup
		sum.CompletedUnissued += c.CompletedUnissued
		sum.UpdateFailed += c.UpdateFailed
		sum.CompletedTimed += c.CompletedTimed
	}
	g.last = sum
	return nil
}

func (g *blockGroup) describe(ch chan<- *prometheus.Desc) { ch <- g.latency }

func (g *blockGroup) collect(emit func(prometheus.Metric)) {
	for op, name := range blockOps {
		if g.hists[op] == nil {
			g.hists[op] = newLog2Hist(g.latency, len(g.last.Hist[op]), blockMinLeLog2, blockMaxLeLog2, name)
		}
		emit(g.hists[op].set(g.last.Hist[op][:], float64(g.last.SumNs[op])/1e9))
	}
}

func (g *blockGroup) summarize(s *Summary) {
	for op, name := range blockOps {
		h := &g.last.Hist[op]
		var n uint64
		for _, c := range h {
			n += c
		}
		if n == 0 {
			continue
		}
		s.Lines = append(s.Lines, fmt.Sprintf("disk %s latency: p50 %v, p99 %v (%d requests)", name,
			log2Quantile(h[:], 0.50).Round(time.Microsecond), log2Quantile(h[:], 0.99).Round(time.Microsecond), n))
	}
}

func (g *blockGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
