//go:build linux

package probe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// pressureResources are the cgroup's PSI files, in export order.
var pressureResources = [...]string{"cpu", "io", "memory"}

// pressureSource reads the run's cgroup pressure stall information
// (cpu.pressure, io.pressure, memory.pressure): the time some (or all)
// of the cgroup's runnable tasks waited for a CPU, for I/O, or for memory
// reclaim. It is not a BPF group: the kernel keeps these per cgroup, so
// it works the same in both backends. The files stay open and are read
// with pread: one syscall per file per sample.
type pressureSource struct {
	files [len(pressureResources)]*os.File // nil: missing, unsupported, or closed
	// on: the resource is exported (fixed at start; stays after close,
	// so that the final values remain collectable).
	on [len(pressureResources)]bool
	// hasFull: the file has a "full" line (memory and io always; cpu
	// from Linux 5.13 on, at cgroup level).
	hasFull [len(pressureResources)]bool
	some    [len(pressureResources)]uint64 // total= in microseconds
	full    [len(pressureResources)]uint64
	buf     [256]byte
	started time.Time // session start: the wall time CPU pressure is shared of
	last    time.Time // time of the last successful sample

	waiting, stalled [len(pressureResources)]*prometheus.Desc
	series           seriesSet
}

// newPressureSource opens the PSI files of cg. Files that are missing or
// that the kernel refuses to read (built without PSI, or PSI disabled at
// boot: EOPNOTSUPP) are left out; notice gets one line naming them. It
// returns nil when none is readable.
func newPressureSource(cg *cgroup, desc func(name, help string, labels ...string) *prometheus.Desc, notice io.Writer) *pressureSource {
	p := &pressureSource{started: time.Now()}
	var missing []string
	var why error
	opened := false
	for i, res := range pressureResources {
		f, err := os.Open(filepath.Join(cg.path, res+".pressure"))
		if err == nil {
			var some, full uint64
			var hasFull bool
			if some, full, hasFull, err = p.read(f); err != nil {
				_ = f.Close()
			} else {
				p.files[i], p.on[i], p.hasFull[i] = f, true, hasFull
				p.some[i], p.full[i] = some, full
				opened = true
			}
		}
		if err != nil {
			missing = append(missing, res)
			if why == nil {
				why = err
			}
			continue
		}
		p.waiting[i] = desc("statexec_process_pressure_"+res+"_waiting_seconds_total",
			fmt.Sprintf("Time some runnable tasks of the command's cgroup were stalled waiting for %s (cgroup %s.pressure, some total).", pressureWhat[i], res))
		p.stalled[i] = desc("statexec_process_pressure_"+res+"_stalled_seconds_total",
			fmt.Sprintf("Time all non-idle tasks of the command's cgroup were stalled waiting for %s at once (cgroup %s.pressure, full total).", pressureWhat[i], res))
	}
	if len(missing) > 0 && notice != nil {
		fmt.Fprintf(notice, "statexec: pressure stall information unavailable for %v (%s); those metrics are off\n", missing, oneLine(why))
	}
	if !opened {
		return nil
	}
	// The counters start at the cgroup's creation: they are the run's.
	p.last = p.started
	return p
}

var pressureWhat = [...]string{"a CPU", "I/O", "memory"}

// read parses one PSI file: "some avg10=.. avg60=.. avg300=.. total=N",
// then the same for "full".
func (p *pressureSource) read(f *os.File) (some, full uint64, hasFull bool, err error) {
	n, err := f.ReadAt(p.buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return 0, 0, false, fmt.Errorf("read %s: %w (kernel booted without psi=1?)", f.Name(), err)
		}
		return 0, 0, false, err
	}
	return parsePressure(p.buf[:n])
}

// parsePressure reads the total= fields of a PSI file.
func parsePressure(data []byte) (some, full uint64, hasFull bool, err error) {
	haveSome := false
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		kind, rest, _ := bytes.Cut(line, []byte{' '})
		i := bytes.Index(rest, []byte("total="))
		if i < 0 {
			continue
		}
		v, perr := strconv.ParseUint(string(bytes.TrimSpace(rest[i+len("total="):])), 10, 64)
		if perr != nil {
			return 0, 0, false, fmt.Errorf("parse pressure line %q: %w", line, perr)
		}
		switch string(kind) {
		case "some":
			some, haveSome = v, true
		case "full":
			full, hasFull = v, true
		}
	}
	if !haveSome {
		return 0, 0, false, errors.New("pressure file has no some line")
	}
	return some, full, hasFull, nil
}

func (p *pressureSource) sample() error {
	var errs []error
	for i, f := range p.files {
		if f == nil {
			continue
		}
		some, full, _, err := p.read(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// The kernel's totals only grow; max guards a wrapped read.
		p.some[i], p.full[i] = max(p.some[i], some), max(p.full[i], full)
	}
	if len(errs) == 0 {
		p.last = time.Now()
	}
	return errors.Join(errs...)
}

func (p *pressureSource) describe(ch chan<- *prometheus.Desc) {
	for i, on := range p.on {
		if !on {
			continue
		}
		ch <- p.waiting[i]
		if p.hasFull[i] {
			ch <- p.stalled[i]
		}
	}
}

func (p *pressureSource) collect(emit func(prometheus.Metric)) {
	for i, on := range p.on {
		if !on {
			continue
		}
		emit(p.series.counter(p.waiting[i]).With0().Set(float64(p.some[i]) / 1e6))
		if p.hasFull[i] {
			emit(p.series.counter(p.stalled[i]).With0().Set(float64(p.full[i]) / 1e6))
		}
	}
}

// summarize: the share of the run's wall time that some task of the
// command waited for a CPU, and I/O and memory stalls when there were any.
func (p *pressureSource) summarize(s *Summary) {
	wall := p.last.Sub(p.started)
	if p.on[0] && wall > 0 {
		w := time.Duration(p.some[0]) * time.Microsecond
		s.Lines = append(s.Lines, fmt.Sprintf("cpu pressure: waited for a CPU %.1f%% of wall time (%s)", 100*w.Seconds()/wall.Seconds(), w.Round(time.Millisecond)))
	}
	for i := 1; i < len(p.on); i++ {
		if p.on[i] && p.some[i] >= 1000 { // from 1 ms on
			s.Lines = append(s.Lines, fmt.Sprintf("%s pressure: stalled on %s %s (all tasks at once %s)", pressureResources[i], pressureWhat[i],
				(time.Duration(p.some[i])*time.Microsecond).Round(time.Millisecond), (time.Duration(p.full[i])*time.Microsecond).Round(time.Millisecond)))
		}
	}
}

func (p *pressureSource) close() error {
	var errs []error
	for i, f := range p.files {
		if f != nil {
			errs = append(errs, f.Close())
			p.files[i] = nil
		}
	}
	return errors.Join(errs...)
}
