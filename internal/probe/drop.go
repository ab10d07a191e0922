//go:build linux

package probe

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel drop ../../bpf/drop.bpf.c -- -I../../bpf

// dropGroup: packets of the run's sockets that the kernel dropped, by
// drop reason (raw tracepoint kfree_skb, reasons from the kernel BTF).
type dropGroup struct {
	objs    dropObjects
	links   links
	reasons []string // by value; "" for values that are no drop reason
	args    uint32   // kfree_skb's arguments: 4 with rx_sk, else 3
	ncpu    int
	keys    []uint32
	cpus    []uint64 // reused batch buffer: len(keys) * ncpu
	last    []uint64 // drops per slot, summed over CPUs

	drops  *prometheus.Desc
	series seriesSet
	names  []string // reused by collect
}

// dropOtherReason labels the slot for reasons outside the enum
// (subsystem reasons) and values that name no drop.
const dropOtherReason = "other"

func loadDropGroup(env *loadEnv) (group, error) {
	spec, err := loadDrop()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	l, err := env.kernelLayout()
	if err != nil {
		return nil, err
	}
	d := l.Drop
	if d == nil {
		return nil, errors.New("kernel has no kfree_skb tracepoint with drop reasons (Linux 5.17 or later)")
	}
	slots := len(d.Reasons) + 1
	spec.Maps["drops"].MaxEntries = uint32(slots)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	g := &dropGroup{reasons: d.Reasons, ncpu: ncpu, keys: make([]uint32, slots), cpus: make([]uint64, slots*ncpu), last: make([]uint64, slots)}
	// The tracepoint has rx_sk since Linux 6.11: a program that reads
	// the 4th argument fails to attach before (the kernel checks the
	// context size), so it is loaded again without. Trying is cheaper
	// than finding the tracepoint's prototype in the BTF (a scan of a
	// third of it).
	for _, args := range []uint32{4, 3} {
		if err = g.load(spec, commonVariables(env.cg, l), d, args); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	g.drops = env.desc("statexec_process_network_drops_total", "Packets of the command tree's sockets that the kernel dropped, by drop reason (kfree_skb; the kernel's SKB_DROP_REASON_ names without the prefix, other for subsystem reasons).", "reason")
	return g, nil
}

// load loads and attaches the program for a kfree_skb with args
// arguments; on failure nothing stays loaded.
func (g *dropGroup) load(spec *ebpf.CollectionSpec, vars map[string]any, d *dropLayout, args uint32) (err error) {
	for name, v := range map[string]any{
		"kfree_skb_args":  args,
		"nreasons":        uint32(len(d.Reasons)),
		"consumed_reason": d.Consumed,
		"off_skb_sk":      d.SkbSk,
		"off_skc_state":   d.SkcState,
	} {
		vars[name] = v
	}
	if err := setVariables(spec, vars); err != nil {
		return err
	}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return loadError(err)
	}
	if err := g.links.rawTracepoint(g.objs.OnKfreeSkb, "kfree_skb"); err != nil {
		_ = g.close()
		g.objs = dropObjects{}
		return err
	}
	g.args = args
	return nil
}

func (g *dropGroup) sample() error {
	// One syscall for every slot; the array has them all, so a batch
	// shorter than the keys is an error.
	var cursor ebpf.MapBatchCursor
	n, err := g.objs.Drops.BatchLookup(&cursor, g.keys, g.cpus, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read BPF drop counters: %w", err)
	}
	if n != len(g.keys) {
		return fmt.Errorf("read BPF drop counters: %d of %d slots", n, len(g.keys))
	}
	for i, k := range g.keys {
		if int(k) >= len(g.last) {
			continue
		}
		var sum uint64
		for _, v := range g.cpus[i*g.ncpu : (i+1)*g.ncpu] {
			sum += v
		}
		g.last[k] = sum
	}
	return nil
}

// byReason sums the slots by label: only reasons that occurred (a count
// never goes back to zero, so a reason once exported stays).
func (g *dropGroup) byReason() map[string]uint64 {
	out := map[string]uint64{}
	for i, n := range g.last {
		if n == 0 {
			continue
		}
		name := dropOtherReason
		if i < len(g.reasons) && g.reasons[i] != "" {
			name = g.reasons[i]
		}
		out[name] += n
	}
	return out
}

func (g *dropGroup) describe(ch chan<- *prometheus.Desc) { ch <- g.drops }

func (g *dropGroup) collect(emit func(prometheus.Metric)) {
	by := g.byReason()
	// In a fixed order: the same metrics in the same order at every
	// tick let the sampler reuse its gather.
	g.names = g.names[:0]
	for reason := range by {
		g.names = append(g.names, reason)
	}
	sort.Strings(g.names)
	for _, reason := range g.names {
		emit(g.series.counter(g.drops).With1(reason).Set(float64(by[reason])))
	}
}

func (g *dropGroup) summarize(s *Summary) {
	if line := dropSummary(g.byReason()); line != "" {
		s.Lines = append(s.Lines, line)
	}
}

// dropSummary: "drops: 120 packets (NETFILTER_DROP 118, TCP_CSUM 2)",
// the three commonest reasons; "" without drops.
func dropSummary(by map[string]uint64) string {
	var total uint64
	type rc struct {
		reason string
		n      uint64
	}
	var list []rc
	for r, n := range by {
		total += n
		list = append(list, rc{r, n})
	}
	if total == 0 {
		return ""
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].n != list[j].n {
			return list[i].n > list[j].n
		}
		return list[i].reason < list[j].reason
	})
	var parts []string
	for i, e := range list {
		if i == 3 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", e.reason, e.n))
	}
	return fmt.Sprintf("drops: %d packets (%s)", total, strings.Join(parts, ", "))
}

func (g *dropGroup) close() error {
	err := g.links.close()
	return errors.Join(err, g.objs.Close())
}
