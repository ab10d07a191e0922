//go:build linux

package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statexec/statexec/internal/constmetric"
	"golang.org/x/sys/unix"
)

// perfSource counts perf events of the run's cgroup: perf_event_open with
// PERF_FLAG_PID_CGROUP (pid is the cgroup directory's fd), one fd per
// online CPU, counting only while a task of the cgroup runs on that CPU —
// what `perf stat -a -G <cgroup>` does. Not BPF: it works in both backends
// wherever perf events are allowed (root, or CAP_PERFMON).
//
// Two event groups: perf_sw (page faults, CPU migrations; software events,
// on every kernel) and perf_hw (cycles, instructions, cache and branch
// misses; only where the machine has a PMU, which most VMs lack). When the
// kernel has more hardware events than PMU counters it multiplexes them;
// the counts are then scaled by time enabled / time running, as perf stat
// does, and statexec_process_perf_events_running_ratio shows by how much.
type perfSource struct {
	groups [2]perfGroup
	buf    [perfReadSize]byte

	groupOn, offInfo, ratio *prometheus.Desc
	series                  seriesSet
}

// perfReadSize: value, time enabled, time running (PERF_FORMAT_TOTAL_TIME_*).
const perfReadSize = 24

type perfGroup struct {
	name   string
	events []perfEvent
	on     bool
	// reason is why the group is off: a short fixed word (bounded
	// label value), "" when it is on.
	reason string
}

type perfEvent struct {
	typ, config uint32
	// The exported series; label values in lv; m made at the first
	// collect.
	desc *prometheus.Desc
	lv   []string
	m    *constmetric.Metric
	fds  []int // one per online CPU; closed fds are -1
	// last is the scaled count, never decreasing; enabled and running
	// are summed over the CPUs (for the ratio gauge).
	last             uint64
	enabled, running uint64
}

func newPerfSource(cg *cgroup, desc func(name, help string, labels ...string) *prometheus.Desc, groupOn *prometheus.Desc, notice io.Writer) *perfSource {
	p := &perfSource{groupOn: groupOn}
	p.offInfo = desc("statexec_probe_group_disabled_info", "Why a probe group is off (reason: no_pmu, no_permission, unsupported, error); 1 for each group that is off.", "group", "reason")
	p.ratio = desc("statexec_process_perf_events_running_ratio", "Time the perf events of a group were counting over the time they were enabled while the command ran (1: exact; below 1 the kernel multiplexed them and the counts are scaled up, as perf stat does).", "group")
	faults := desc("statexec_process_page_faults_total", "Page faults of the command's tree, by kind (minor: no I/O; major: needed I/O) (perf software events of the cgroup).", "kind")
	p.groups[0] = perfGroup{name: "perf_sw", events: []perfEvent{
		{typ: unix.PERF_TYPE_SOFTWARE, config: unix.PERF_COUNT_SW_PAGE_FAULTS_MIN, desc: faults, lv: []string{"minor"}},
		{typ: unix.PERF_TYPE_SOFTWARE, config: unix.PERF_COUNT_SW_PAGE_FAULTS_MAJ, desc: faults, lv: []string{"major"}},
		{typ: unix.PERF_TYPE_SOFTWARE, config: unix.PERF_COUNT_SW_CPU_MIGRATIONS, desc: desc("statexec_process_cpu_migrations_total", "Moves of the command's tasks from one CPU to another (perf software event of the cgroup).")},
	}}
	p.groups[1] = perfGroup{name: "perf_hw", events: []perfEvent{
		{typ: unix.PERF_TYPE_HARDWARE, config: unix.PERF_COUNT_HW_CPU_CYCLES, desc: desc("statexec_process_cpu_cycles_total", "CPU cycles of the command's tree (perf hardware event of the cgroup; scaled when multiplexed).")},
		{typ: unix.PERF_TYPE_HARDWARE, config: unix.PERF_COUNT_HW_INSTRUCTIONS, desc: desc("statexec_process_instructions_total", "Instructions retired by the command's tree (perf hardware event of the cgroup; scaled when multiplexed).")},
		{typ: unix.PERF_TYPE_HARDWARE, config: unix.PERF_COUNT_HW_CACHE_MISSES, desc: desc("statexec_process_cache_misses_total", "Last-level cache misses of the command's tree (perf hardware event of the cgroup; scaled when multiplexed).")},
		{typ: unix.PERF_TYPE_HARDWARE, config: unix.PERF_COUNT_HW_BRANCH_MISSES, desc: desc("statexec_process_branch_misses_total", "Mispredicted branches of the command's tree (perf hardware event of the cgroup; scaled when multiplexed).")},
	}}
	cpus, err := onlineCPUs()
	if err != nil {
		p.groups[0].reason, p.groups[1].reason = "error", "error"
		if notice != nil {
			fmt.Fprintf(notice, "statexec: perf events unavailable (%s); their metrics are off\n", oneLine(err))
		}
		return p
	}
	for i := range p.groups {
		g := &p.groups[i]
		if i > 0 && !p.groups[0].on {
			// Without software events, hardware ones fail for the
			// same reason (permissions): one cause, said once.
			g.reason = p.groups[0].reason
			continue
		}
		err := g.open(cg, cpus)
		switch {
		case err == nil:
			g.on = true
			continue
		case g.name == "perf_hw" && isNoPMU(err):
			// Most VMs: normal, said by the info series only (a
			// notice every run would be noise).
			g.reason = "no_pmu"
			continue
		}
		g.reason = perfReason(err)
		// Without privileges (not root, no CAP_PERFMON) the eBPF
		// notice, or plain mode chosen on purpose, already says that
		// the run is measured from /proc only; the info series says
		// why perf events are off.
		if notice != nil && g.reason != "no_permission" {
			fmt.Fprintf(notice, "statexec: perf events %s unavailable (%s); their metrics are off\n", g.name, oneLine(err))
		}
	}
	return p
}

// isNoPMU: what perf_event_open says for a hardware event on a machine
// without a PMU driver (ENOENT), or one whose PMU lacks the event.
func isNoPMU(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV)
}

func perfReason(err error) string {
	switch {
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		return "no_permission"
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || isNoPMU(err):
		return "unsupported"
	}
	return "error"
}

// open opens every event of the group on every CPU, or none.
func (g *perfGroup) open(cg *cgroup, cpus []int) error {
	for i := range g.events {
		e := &g.events[i]
		attr := unix.PerfEventAttr{
			Type:        e.typ,
			Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
			Config:      uint64(e.config),
			Read_format: unix.PERF_FORMAT_TOTAL_TIME_ENABLED | unix.PERF_FORMAT_TOTAL_TIME_RUNNING,
		}
		for _, cpu := range cpus {
			fd, err := unix.PerfEventOpen(&attr, cg.fd(), cpu, -1, unix.PERF_FLAG_PID_CGROUP|unix.PERF_FLAG_FD_CLOEXEC)
			if err != nil {
				g.close()
				return fmt.Errorf("perf_event_open(type %d, config %d, cpu %d): %w", e.typ, e.config, cpu, err)
			}
			e.fds = append(e.fds, fd)
		}
	}
	return nil
}

func (g *perfGroup) close() {
	for i := range g.events {
		for _, fd := range g.events[i].fds {
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		}
		g.events[i].fds = nil
	}
}

// onlineCPUs parses /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() ([]int, error) {
	data, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, err
	}
	return parseCPUList(strings.TrimSpace(string(data)))
}

func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("parse CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("parse CPU list %q: %w", s, err)
			}
		}
		if a < 0 || b < a || b-a > 1<<16 {
			return nil, fmt.Errorf("parse CPU list %q: bad range", s)
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// scalePerfCount is perf stat's estimate of a multiplexed count: the value
// counted while running, extrapolated to the whole time enabled
// (tools/perf/util/evsel.c perf_counts_values__scale, in double as perf
// does). Not running at all gives 0: nothing is known.
func scalePerfCount(value, enabled, running uint64) uint64 {
	if running == 0 {
		return 0
	}
	if running >= enabled {
		return value
	}
	v := float64(value) * float64(enabled) / float64(running)
	if v >= math.MaxUint64 {
		return math.MaxUint64
	}
	return uint64(v)
}

func (p *perfSource) sample() error {
	var errs []error
	for gi := range p.groups {
		g := &p.groups[gi]
		if !g.on {
			continue
		}
	events:
		for i := range g.events {
			e := &g.events[i]
			if e.fds == nil {
				continue
			}
			// Summed over the CPUs and scaled once, as perf stat
			// does for a system-wide count.
			var val, ena, run uint64
			for _, fd := range e.fds {
				n, err := unix.Read(fd, p.buf[:])
				if err != nil || n != perfReadSize {
					errs = append(errs, fmt.Errorf("read perf event: %d bytes, %v", n, err))
					continue events
				}
				val += binary.NativeEndian.Uint64(p.buf[0:])
				ena += binary.NativeEndian.Uint64(p.buf[8:])
				run += binary.NativeEndian.Uint64(p.buf[16:])
			}
			// Counters never go back, even when a new estimate
			// of a multiplexed count is lower.
			e.last = max(e.last, scalePerfCount(val, ena, run))
			e.enabled, e.running = ena, run
		}
	}
	return errors.Join(errs...)
}

func (p *perfSource) describe(ch chan<- *prometheus.Desc) {
	ch <- p.groupOn
	ch <- p.offInfo
	ch <- p.ratio
	for gi := range p.groups {
		if !p.groups[gi].on {
			continue
		}
		for _, e := range p.groups[gi].events {
			ch <- e.desc
		}
	}
}

func (p *perfSource) collect(emit func(prometheus.Metric)) {
	for gi := range p.groups {
		g := &p.groups[gi]
		s := &p.series
		if !g.on {
			emit(s.gauge(p.groupOn).With1(g.name).Set(0))
			emit(s.gauge(p.offInfo).With2(g.name, g.reason).Set(1))
			continue
		}
		emit(s.gauge(p.groupOn).With1(g.name).Set(1))
		emit(s.gauge(p.ratio).With1(g.name).Set(g.runningRatio()))
		for i := range g.events {
			e := &g.events[i]
			if e.m == nil {
				e.m = constmetric.New(e.desc, prometheus.CounterValue, e.lv...)
			}
			emit(e.m.Set(float64(e.last)))
		}
	}
}

// runningRatio is the lowest running/enabled of the group's events; 1
// before any event was enabled (the command has not run yet).
func (g *perfGroup) runningRatio() float64 {
	r := 1.0
	for _, e := range g.events {
		if e.enabled > 0 {
			r = min(r, float64(e.running)/float64(e.enabled))
		}
	}
	return r
}

// count is the last scaled count of event i of group gi (0 when off).
func (p *perfSource) count(gi, i int) uint64 {
	if !p.groups[gi].on {
		return 0
	}
	return p.groups[gi].events[i].last
}

func (p *perfSource) summarize(s *Summary) {
	if p.groups[0].on {
		minor, major, migr := p.count(0, 0), p.count(0, 1), p.count(0, 2)
		s.Lines = append(s.Lines, fmt.Sprintf("page faults: %d minor, %d major; CPU migrations: %d", minor, major, migr))
	}
	if p.groups[1].on {
		cycles, instr := p.count(1, 0), p.count(1, 1)
		line := fmt.Sprintf("cpu: %d instructions, %d cycles", instr, cycles)
		if cycles > 0 {
			line += fmt.Sprintf(", IPC %.2f", float64(instr)/float64(cycles))
		}
		line += fmt.Sprintf(", %d cache misses, %d branch misses", p.count(1, 2), p.count(1, 3))
		if r := p.groups[1].runningRatio(); r < 1 {
			line += fmt.Sprintf(" (multiplexed: counted %.0f%% of the time, scaled)", 100*r)
		}
		s.Lines = append(s.Lines, line)
	}
}

func (p *perfSource) close() error {
	for gi := range p.groups {
		p.groups[gi].close()
	}
	return nil
}
