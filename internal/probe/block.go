//go:build linux

package probe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type block_counters block ../../bpf/block.bpf.c -- -I../../bpf

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

// blockGroup: latency of the tree's block I/O requests, creation to
// completion, from the block_io_start/block_rq_complete raw tracepoints
// (block_rq_issue instead of block_io_start on kernels without it).
type blockGroup struct {
	objs  blockObjects
	links links
	// marked: block_io_start is attached (Linux 6.5 on); without it only
	// requests that a task of the cgroup issues itself are seen, timed
	// from their issue.
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
	// The table of requests in flight (bpf/block.bpf.c): a power of two
	// of pairs of slots, indexed by slot_mask.
	pairs := blockInflightSize("/sys/block")
	spec.Maps["inflight"].MaxEntries = pairs
	vars["slot_mask"] = pairs - 1
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
	// Completion first: a request started between the two attaches
	// would otherwise keep its slot.
	if err := g.links.rawTracepoint(g.objs.OnBlockRqComplete, "block_rq_complete"); err != nil {
		return nil, err
	}
	// Older kernels have no block_io_start: then requests a task of the
	// cgroup issues are the run's, timed from their issue.
	g.marked = g.links.rawTracepoint(g.objs.OnBlockIoStart, "block_io_start") == nil
	if !g.marked {
		if err := g.links.rawTracepoint(g.objs.OnBlockRqIssue, "block_rq_issue"); err != nil {
			return nil, err
		}
	}
	g.latency = env.desc("statexec_process_disk_io_latency_seconds", "Latency of the command's block I/O requests from their creation to their completion, the I/O scheduler's queue included (as iostat's await), by operation (read or write; eBPF block_io_start/block_rq_complete; writeback by kernel threads is not the command's).", "op")
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
		sum.StartedMarked += c.StartedMarked
		sum.IssuedByCgroup += c.IssuedByCgroup
		sum.Evicted += c.Evicted
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

// blockInflightSize sizes the table of requests in flight, in pairs of
// slots, from the host's block queues: no more requests exist at once
// than the devices' request pools hold (nr_requests per hardware queue),
// and twice that many pairs (four slots a request) keep two requests of
// the run from meeting in one pair; a power of two, 1024..65536 pairs
// (32 KiB..2 MiB of kernel memory). A device added during the run may
// make requests meet: the one evicted is then not timed (counted).
func blockInflightSize(sysBlock string) uint32 {
	const lo, hi = 1024, 65536
	devs, err := os.ReadDir(sysBlock)
	if err != nil {
		return hi / 4
	}
	total := 0
	for _, d := range devs {
		n, err := readSysInt(filepath.Join(sysBlock, d.Name(), "queue", "nr_requests"))
		if err != nil {
			continue
		}
		queues := 1
		if mq, err := os.ReadDir(filepath.Join(sysBlock, d.Name(), "mq")); err == nil && len(mq) > 1 {
			queues = len(mq)
		}
		total += n * queues
	}
	pairs := uint32(lo)
	for int(pairs) < 2*total && pairs < hi {
		pairs <<= 1
	}
	return pairs
}

func readSysInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
