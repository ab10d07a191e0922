//go:build linux

package probe

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
)

// A probe group is one set of eBPF programs (bpf/<name>.bpf.c beside
// internal/probe/<name>.go) with its metrics. Each group loads, attaches,
// degrades and closes on its own: a kernel without one hook loses only
// that group's series, with one notice line naming it.
//
// A group's methods other than close are called with the session's lock
// held, sample before collect and summarize.
type group interface {
	// sample reads the group's counters; on error it keeps the previous
	// values (counters must not drop to zero).
	sample() error
	// describe and collect export the last sample.
	describe(ch chan<- *prometheus.Desc)
	collect(emit func(prometheus.Metric))
	// summarize adds the group's totals to the end-of-run summary.
	summarize(s *Summary)
	close() error
}

// groupSpec is how to load one group.
type groupSpec struct {
	name string
	// required groups make the eBPF backend: when one fails, every group
	// is closed and the session falls back to the plain backend, as
	// statexec did before groups existed. An optional group that fails is
	// left out with a notice.
	required bool
	load     func(env *loadEnv) (group, error)
	// optIn groups load only when asked for (nil: always).
	optIn func(env *loadEnv) bool
}

// groupSpecs lists every group, in the order they are exported.
func groupSpecs() []groupSpec {
	return []groupSpec{
		{name: "sched", required: true, load: loadSchedGroup},
		{name: "net", required: true, load: loadNetGroup},
		// runq: opt-in (SE_RUNQUEUE_HISTOGRAM), a program on every
		// context switch of the host.
		{name: "runq", load: loadRunqGroup, optIn: func(env *loadEnv) bool { return env.runqHistogram }},
		// Group tcp: optional, a kernel without sock_ops loses only it.
		{name: "tcp", required: false, load: loadTCPGroup},
		// netobs: drops by reason, DNS.
		{name: "drop", load: loadDropGroup},
		{name: "dns", load: loadDNSGroup},
		// benchhost: block I/O latency, optional (raw tracepoints).
		{name: "block", required: false, load: loadBlockGroup},
	}
}

// loadEnv is what every group's loader needs.
type loadEnv struct {
	cg *cgroup
	// desc makes a metric description with the session's const labels.
	desc func(name, help string, labels ...string) *prometheus.Desc
	// runqHistogram asks for the opt-in group runq.
	runqHistogram bool

	layoutOnce sync.Once
	layoutC    chan layoutResult
	layout     kernelLayout
	layoutErr  error
}

type layoutResult struct {
	l   kernelLayout
	err error
}

// newLoadEnv starts scanning the kernel BTF at once: the groups parse
// their ELF objects meanwhile.
func newLoadEnv(cg *cgroup, desc func(name, help string, labels ...string) *prometheus.Desc) *loadEnv {
	env := &loadEnv{cg: cg, desc: desc, layoutC: make(chan layoutResult, 1)}
	go func() {
		l, err := loadKernelLayout()
		env.layoutC <- layoutResult{l, err}
	}()
	return env
}

// kernelLayout waits for the BTF scan; safe from several goroutines.
func (env *loadEnv) kernelLayout() (kernelLayout, error) {
	env.layoutOnce.Do(func() {
		r := <-env.layoutC
		env.layout, env.layoutErr = r.l, r.err
	})
	return env.layout, env.layoutErr
}

// loadedGroup is one group's load outcome.
type loadedGroup struct {
	spec groupSpec
	g    group
	err  error
}

// loadGroups loads every group concurrently (each parses its ELF object
// and runs the verifier; on two CPUs that halves the wait) and returns
// the outcomes in groupSpecs order.
func loadGroups(env *loadEnv) []loadedGroup {
	// Only needed before memcg accounting of BPF memory (< 5.11). Its
	// error is ignored: without privileges it fails for the same reason
	// the loads will, and their errors name the real cause.
	_ = rlimit.RemoveMemlock()
	var specs []groupSpec
	for _, sp := range groupSpecs() {
		if sp.optIn == nil || sp.optIn(env) {
			specs = append(specs, sp)
		}
	}
	out := make([]loadedGroup, len(specs))
	var wg sync.WaitGroup
	for i, sp := range specs {
		out[i].spec = sp
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := sp.load(env)
			out[i].g, out[i].err = g, err
		}()
	}
	wg.Wait()
	// The layout scan is waited for even when no group asked for it, so
	// that its goroutine never outlives the load.
	_, _ = env.kernelLayout()
	return out
}

// setVariables sets the .rodata constants of a group's object before load.
// Every name must exist in the object: a missing one is a build mistake.
func setVariables(spec *ebpf.CollectionSpec, vars map[string]any) error {
	for name, value := range vars {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object has no variable %s", name)
		}
		if err := v.Set(value); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// commonVariables are the constants of bpf/common.h; every object has them.
func commonVariables(cg *cgroup, l kernelLayout) map[string]any {
	return map[string]any{
		"target_cgid":  cg.id,
		"off_cgroups":  l.Cgroups,
		"off_dfl_cgrp": l.DflCgrp,
		"off_kn":       l.Kn,
		"off_kn_id":    l.KnID,
		"off_sk_cgrp":  l.SkCgrp,
	}
}

// loadError turns a verifier/permission failure into a short cause.
func loadError(err error) error {
	if errors.Is(err, os.ErrPermission) {
		// cilium's message suggests raising RLIMIT_MEMLOCK, which is
		// not the cause on kernels that account BPF memory.
		return fmt.Errorf("load BPF: %w (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)", os.ErrPermission)
	}
	return fmt.Errorf("load BPF: %w", err)
}

// links holds a group's attachments; close detaches them all.
type links []link.Link

func (ls *links) rawTracepoint(prog *ebpf.Program, name string) error {
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s: %w", name, err)
	}
	*ls = append(*ls, l)
	return nil
}

func (ls *links) cgroup(cg *cgroup, prog *ebpf.Program, attach ebpf.AttachType) error {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.path, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s: %w", prog, err)
	}
	*ls = append(*ls, l)
	return nil
}

func (ls *links) close() error {
	var errs []error
	for _, l := range *ls {
		errs = append(errs, l.Close())
	}
	*ls = nil
	return errors.Join(errs...)
}
