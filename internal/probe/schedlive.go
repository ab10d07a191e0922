//go:build linux

package probe

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// taskTotals are sums of the scheduler's per-task counters.
type taskTotals struct {
	cpuNs      uint64 // se.sum_exec_runtime
	runDelayNs uint64 // sched_info.run_delay
	pcount     uint64 // sched_info.pcount
	nvcsw      uint64
	nivcsw     uint64
}

func (t *taskTotals) add(o taskTotals) {
	t.cpuNs += o.cpuNs
	t.runDelayNs += o.runDelayNs
	t.pcount += o.pcount
	t.nvcsw += o.nvcsw
	t.nivcsw += o.nivcsw
}

// maxOpenTasks bounds the /proc files kept open (two per thread): beyond
// it, the files of further threads are opened for each read.
const maxOpenTasks = 1024

// liveTasks sums the counters of the live threads of one cgroup (not of
// its sub-cgroups) at the instant of the read:
//
//   - cgroup.threads lists them;
//   - /proc/<tid>/schedstat gives sum_exec_runtime, run_delay and pcount;
//     the kernel brings a running task's sum_exec_runtime up to date for
//     the read (task_sched_runtime), so a busy thread that is never
//     switched out counts to the nanosecond;
//   - /proc/<tid>/status gives the voluntary and involuntary switches
//     (per thread; as cheap as /proc/<tid>/sched, which not every kernel
//     has), read again only for a thread that ran since the last read.
//
// The files stay open and are re-read with pread: measured here, a
// pread of schedstat costs ~2 us, of status ~4.5 us, an open+read+close
// 8-20 us.
type liveTasks struct {
	threads *os.File // cgroup.threads
	fd      int      // its descriptor (os.File.Fd would reset its mode each time)
	list    []byte   // its text
	buf     []byte   // a task file's text
	files   map[uint32]*taskFiles
	gen     uint64
	path    []byte // scratch for /proc/<tid>/<file>
}

type taskFiles struct {
	schedstat, status int
	gen               uint64 // the last read that listed the task
	// last is the previous read: while sum_exec_runtime and pcount stay
	// put, the task has not run, so its switch counts have not moved
	// either and status (the costlier file) is not read again.
	last taskTotals
	read bool
}

func newLiveTasks(cgroupDir string) (*liveTasks, error) {
	f, err := os.Open(filepath.Join(cgroupDir, "cgroup.threads"))
	if err != nil {
		return nil, err
	}
	return &liveTasks{threads: f, fd: int(f.Fd()), list: make([]byte, 4096), buf: make([]byte, 4096), files: map[uint32]*taskFiles{}}, nil
}

// read sums the listed threads but those in skip (tasks the exit bank
// already has).
func (l *liveTasks) read(skip map[uint32]struct{}) (taskTotals, error) {
	var sum taskTotals
	list, err := preadAll(l.fd, &l.list)
	if err != nil {
		return sum, fmt.Errorf("read cgroup.threads: %w", err)
	}
	l.gen++
	for len(list) > 0 {
		line, rest, _ := bytes.Cut(list, []byte{'\n'})
		list = rest
		tid64, err := strconv.ParseUint(string(line), 10, 32)
		if err != nil {
			continue
		}
		tid := uint32(tid64)
		if _, ok := skip[tid]; ok {
			continue
		}
		if t, ok := l.readTask(tid); ok {
			sum.add(t)
		}
	}
	for tid, f := range l.files {
		if f.gen != l.gen {
			f.close()
			delete(l.files, tid)
		}
	}
	return sum, nil
}

// readTask reads one thread's counters; false when it is gone (exited
// and reaped since the list was read: the exit bank has it, or will).
func (l *liveTasks) readTask(tid uint32) (taskTotals, bool) {
	f, cached := l.files[tid]
	for attempt := 0; attempt < 2; attempt++ {
		if f == nil {
			var err error
			if f, err = l.open(tid); err != nil {
				return taskTotals{}, false
			}
			if len(l.files) < maxOpenTasks {
				l.files[tid] = f
				cached = true
			}
		}
		t, err := l.readFiles(f)
		if err == nil {
			f.gen = l.gen
			if !cached {
				f.close()
			}
			return t, true
		}
		// A kept file of a dead task fails with ESRCH; its tid may
		// have been reused by the task now listed: open anew once.
		f.close()
		delete(l.files, tid)
		f, cached = nil, false
	}
	return taskTotals{}, false
}

// readOnce reads a task's counters without keeping its files open.
func (l *liveTasks) readOnce(tid uint32) (taskTotals, bool) {
	f, err := l.open(tid)
	if err != nil {
		return taskTotals{}, false
	}
	defer f.close()
	t, err := l.readFiles(f)
	return t, err == nil
}

func (l *liveTasks) open(tid uint32) (*taskFiles, error) {
	sched, err := l.openProc(tid, "schedstat")
	if err != nil {
		return nil, err
	}
	status, err := l.openProc(tid, "status")
	if err != nil {
		unix.Close(sched)
		return nil, err
	}
	return &taskFiles{schedstat: sched, status: status}, nil
}

func (l *liveTasks) openProc(tid uint32, name string) (int, error) {
	p := append(l.path[:0], "/proc/"...)
	p = strconv.AppendUint(p, uint64(tid), 10)
	p = append(p, '/')
	p = append(p, name...)
	l.path = p
	return unix.Open(string(p), unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

func (l *liveTasks) readFiles(f *taskFiles) (taskTotals, error) {
	var t taskTotals
	b, err := preadAll(f.schedstat, &l.buf)
	if err != nil {
		return t, err
	}
	// "sum_exec_runtime run_delay pcount\n", in ns.
	fields := [3]*uint64{&t.cpuNs, &t.runDelayNs, &t.pcount}
	for i := range fields {
		var v []byte
		b = bytes.TrimLeft(b, " ")
		v, b, _ = bytes.Cut(b, []byte{' '})
		if *fields[i], err = strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64); err != nil {
			return t, fmt.Errorf("schedstat: %w", err)
		}
	}
	if f.read && t.cpuNs == f.last.cpuNs && t.pcount == f.last.pcount {
		t.nvcsw, t.nivcsw = f.last.nvcsw, f.last.nivcsw
		return t, nil
	}
	if b, err = preadAll(f.status, &l.buf); err != nil {
		return t, err
	}
	if t.nvcsw, err = statusField(b, "\nvoluntary_ctxt_switches:"); err != nil {
		return t, err
	}
	if t.nivcsw, err = statusField(b, "\nnonvoluntary_ctxt_switches:"); err != nil {
		return t, err
	}
	f.last, f.read = t, true
	return t, nil
}

// statusField parses the number after key (a line start) in a status file.
func statusField(b []byte, key string) (uint64, error) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, fmt.Errorf("status: no %s", key[1:])
	}
	v, _, _ := bytes.Cut(b[i+len(key):], []byte{'\n'})
	return strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
}

// preadAll reads a whole (small) file from its start into *buf, growing
// it as needed: seq_file-backed proc and cgroup files regenerate their
// text for a read at offset 0, and fill the buffer as far as they can,
// so a short read is the whole text.
func preadAll(fd int, buf *[]byte) ([]byte, error) {
	for {
		n, err := unix.Pread(fd, *buf, 0)
		if err != nil {
			return nil, err
		}
		if n < len(*buf) {
			return (*buf)[:n], nil
		}
		if len(*buf) >= 1<<24 {
			return nil, errors.New("file too large")
		}
		*buf = make([]byte, 2*len(*buf))
	}
}

func (f *taskFiles) close() {
	unix.Close(f.schedstat)
	unix.Close(f.status)
}

func (l *liveTasks) close() error {
	for tid, f := range l.files {
		f.close()
		delete(l.files, tid)
	}
	return l.threads.Close()
}
