//go:build linux

package probe

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of one /proc sample, so a fork bomb cannot make Collect unbounded.
const (
	maxTreeProcs      = 16384
	maxThreadsPerScan = 8192
	maxProcScan       = 1 << 20 // /proc entries read when there is no cgroup
	maxAbsorbDepth    = 64
)

// userHZ is USER_HZ, the unit of the times in /proc/PID/stat. It is 100 on
// every Linux ABI Go supports (the kernel exports it as a constant).
const userHZ = 100

// procID identifies a process across pid reuse.
type procID struct {
	pid   int
	start uint64 // starttime, field 22 of /proc/PID/stat
}

// procValues are one process's cumulative counters.
type procValues struct {
	// utime+cutime, stime+cstime in clock ticks: the process's threads,
	// dead or alive, plus the children it reaped.
	cpuTicks [2]uint64
	// /proc/PID/io read_bytes/write_bytes: like the CPU times they
	// include the process's dead threads and its reaped children.
	readBytes, writeBytes uint64
	// Context switches of the live threads only: the kernel exposes no
	// per-process total of dead threads or reaped children.
	vcs, ivcs uint64
}

func (v *procValues) add(o procValues, withInherited bool) {
	v.vcs += o.vcs
	v.ivcs += o.ivcs
	if withInherited {
		v.cpuTicks[0] += o.cpuTicks[0]
		v.cpuTicks[1] += o.cpuTicks[1]
		v.readBytes += o.readBytes
		v.writeBytes += o.writeBytes
	}
}

type procState struct {
	ppid int
	last procValues
	gen  uint64
}

// plainTotals are the tree's values from /proc and cgroup files.
type plainTotals struct {
	userSec, sysSec       float64
	readBytes, writeBytes uint64
	vcs, ivcs             uint64
	rss, rssPeak          uint64
	procs, threads        uint64
}

// plainSampler follows the command's tree through /proc. Counters of
// processes that are gone are kept: either a parent in the tree reaped them
// (then the parent's cutime/io include them) or their last values are banked.
type plainSampler struct {
	root     int
	cg       *cgroup // nil when there is no cgroup: walk ppid links instead
	pageSize uint64
	rd       fileReader
	fields   [][]byte // /proc/PID/stat's fields, reused
	// cgPids are the cgroup's processes as this sample read them (all of
	// them: the tcp sock_diag view uses them too), cgErr the read's
	// error.
	cgPids []int
	cgErr  error

	procs  map[procID]*procState
	banked procValues
	// bankedAlone are processes banked with their inherited counters
	// (no parent in the tree absorbs them): children of statexec, which
	// exiting may still see with their final values before reaping.
	bankedAlone map[procID]procValues
	gen         uint64
	out         plainTotals // never decreases (counters) / peak

	// floor is the root's rusage as seen by statexec when it reaped it
	// (RUSAGE_CHILDREN delta): the exact tree total for everything the
	// tree reaped itself. statexec has a single child, the command.
	floor       unix.Rusage
	haveFloor   bool
	usageBefore unix.Rusage
	haveBefore  bool
}

func newPlainSampler(cg *cgroup) *plainSampler {
	p := &plainSampler{
		cg:          cg,
		pageSize:    uint64(os.Getpagesize()),
		procs:       make(map[procID]*procState),
		bankedAlone: make(map[procID]procValues),
	}
	if cg != nil {
		p.rd.cgDir = cg.path
	}
	return p
}

// exiting banks the final counters of pid, an exited child of statexec
// that is about to be reaped (a zombie: its stat, io and status files are
// still there, and already include its dead threads and reaped children).
// statexec reaps it, so no parent in the tree absorbs its counters.
func (p *plainSampler) exiting(pid int) {
	st, ok := p.readStat(pid)
	if !ok {
		return
	}
	v := procValues{cpuTicks: [2]uint64{st.utime + st.cutime, st.stime + st.cstime}}
	v.readBytes, v.writeBytes = p.readIO(pid)
	v.vcs, v.ivcs, _ = p.readStatus(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	id := procID{pid, st.start}
	var before procValues // what is already counted of it
	if ps := p.procs[id]; ps != nil {
		// Still listed: count it here, not in bankVanished.
		before = ps.last
		p.banked.add(ps.last, true)
		delete(p.procs, id)
	} else if b, ok := p.bankedAlone[id]; ok {
		before = b
		delete(p.bankedAlone, id)
	} else {
		p.banked.add(v, true)
		return
	}
	p.banked.add(v.since(before), true)
}

// since is the growth of v over an earlier reading (0 where a field
// did not grow: a zombie's status lists only its main thread's switches).
func (v procValues) since(before procValues) procValues {
	d := func(a, b uint64) uint64 {
		if a > b {
			return a - b
		}
		return 0
	}
	return procValues{
		cpuTicks:   [2]uint64{d(v.cpuTicks[0], before.cpuTicks[0]), d(v.cpuTicks[1], before.cpuTicks[1])},
		readBytes:  d(v.readBytes, before.readBytes),
		writeBytes: d(v.writeBytes, before.writeBytes),
		vcs:        d(v.vcs, before.vcs),
		ivcs:       d(v.ivcs, before.ivcs),
	}
}

// beforeStart notes statexec's children's rusage just before the command
// starts, so that ended can tell the command's share.
func (p *plainSampler) beforeStart() {
	_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &p.usageBefore)
	p.haveBefore = true
}

func (p *plainSampler) started(pid int) {
	p.root = pid
	if !p.haveBefore { // PrepareCommand was not used
		p.beforeStart()
	}
}

func (p *plainSampler) ended() {
	var after unix.Rusage
	if unix.Getrusage(unix.RUSAGE_CHILDREN, &after) != nil {
		return
	}
	b := &p.usageBefore
	p.floor = unix.Rusage{
		Utime:  unix.NsecToTimeval(after.Utime.Nano() - b.Utime.Nano()),
		Stime:  unix.NsecToTimeval(after.Stime.Nano() - b.Stime.Nano()),
		Nvcsw:  after.Nvcsw - b.Nvcsw,
		Nivcsw: after.Nivcsw - b.Nivcsw,
	}
	// RUSAGE_CHILDREN's maxrss is the largest reaped child's peak; if it
	// grew, it is the command's (a lower bound of the tree's peak that
	// does not depend on sampling while it ran). But at exec the kernel
	// folds the peak of the old memory map into it, and the command's
	// was statexec's own until exec (vfork): a value not above
	// statexec's own peak may be statexec's, and is not used.
	if peak := uint64(after.Maxrss) * 1024; after.Maxrss > b.Maxrss && peak > p.selfPeak() {
		p.out.rssPeak = max(p.out.rssPeak, peak)
	}
	p.haveFloor = true
}

// selfPeak is statexec's own VmHWM: never less than what the command's
// exec folded into its maxrss.
func (p *plainSampler) selfPeak() uint64 {
	_, _, hwm := p.readStatus("/proc/self/status")
	return hwm
}

// sample reads the tree once and returns the updated totals. The error
// says that a cgroup file could not be read (the totals then keep what
// the other sources gave); files of processes that exit while they are
// read are not errors.
func (p *plainSampler) sample() (plainTotals, error) {
	if p.root == 0 {
		return p.out, nil
	}
	p.gen++
	var pids []int
	var errs []error
	if p.cg != nil {
		data, err := p.rd.readKept(procFile{name: "cgroup.procs"})
		p.cgPids = p.cgPids[:0]
		if err == nil {
			p.cgPids = appendPids(p.cgPids, data)
		}
		pids, p.cgErr = p.cgPids, err
		errs = append(errs, err)
	} else {
		pids = p.walkTree()
	}
	if len(pids) > maxTreeProcs {
		pids = pids[:maxTreeProcs]
	}

	var live procValues
	var rss, hwm, threads, procs uint64
	threadBudget := maxThreadsPerScan
	for _, pid := range pids {
		st, ok := p.readStatKept(pid)
		if !ok {
			continue
		}
		procs++
		threads += st.threads
		rss += st.rssPages * p.pageSize
		v := procValues{
			cpuTicks: [2]uint64{st.utime + st.cutime, st.stime + st.cstime},
		}
		v.readBytes, v.writeBytes = parseIO(p.rd.readKept(procFile{pid: pid, name: "io"}))
		var h uint64
		if st.threads > 1 && threadBudget > 0 {
			v.vcs, v.ivcs, h = p.readThreadsStatus(pid, &threadBudget)
		} else {
			v.vcs, v.ivcs, h = parseStatus(p.rd.readKept(procFile{pid: pid, name: "status"}))
		}
		hwm = max(hwm, h)
		id := procID{pid, st.start}
		ps := p.procs[id]
		if ps == nil {
			ps = &procState{}
			p.procs[id] = ps
		}
		ps.ppid, ps.last, ps.gen = st.ppid, v, p.gen
		live.add(v, true)
	}
	p.bankVanished()
	p.rd.sweep()

	total := p.banked
	total.add(live, true)
	o := &p.out
	// cpu.stat is exact (scheduler runtime, split like rusage) and
	// includes every task that ever ran in the cgroup; the tick-based
	// /proc times are only the fallback, not mixed in.
	cpuStat := false
	if p.cg != nil {
		if u, s, ok := parseCPUStat(p.rd.readKept(procFile{name: "cpu.stat"})); ok {
			o.userSec, o.sysSec = max(o.userSec, u), max(o.sysSec, s)
			cpuStat = true
		} else {
			errs = append(errs, errors.New("read cgroup cpu.stat"))
		}
		data, err := p.rd.readKept(procFile{name: "cgroup.threads"})
		if err == nil {
			threads = uint64(bytes.Count(data, []byte{'\n'}))
		}
		errs = append(errs, err)
	}
	if !cpuStat {
		o.userSec = max(o.userSec, float64(total.cpuTicks[0])/userHZ)
		o.sysSec = max(o.sysSec, float64(total.cpuTicks[1])/userHZ)
	}
	readBytes, writeBytes := total.readBytes, total.writeBytes
	if p.cg != nil {
		// With the io controller on (cgroup v2 hosts that delegate
		// it), the block layer's own per-cgroup count covers every
		// process that ever ran in the cgroup, reaped or not.
		if data, err := p.rd.readKept(procFile{name: "io.stat"}); err == nil {
			readBytes, writeBytes = parseIOStat(data)
		}
	}
	o.readBytes = max(o.readBytes, readBytes)
	o.writeBytes = max(o.writeBytes, writeBytes)
	o.vcs = max(o.vcs, total.vcs)
	o.ivcs = max(o.ivcs, total.ivcs)
	if p.haveFloor {
		f := &p.floor
		if !cpuStat {
			o.userSec = max(o.userSec, time.Duration(f.Utime.Nano()).Seconds())
			o.sysSec = max(o.sysSec, time.Duration(f.Stime.Nano()).Seconds())
		}
		o.vcs = max(o.vcs, uint64(f.Nvcsw))
		o.ivcs = max(o.ivcs, uint64(f.Nivcsw))
	}
	o.rss, o.procs, o.threads = rss, procs, threads
	// A single process's high-water mark is a lower bound of the tree's
	// peak and catches spikes between two samples.
	o.rssPeak = max(o.rssPeak, rss, hwm)
	return *o, errors.Join(errs...)
}

// bankVanished keeps the last values of processes not seen in this sample.
// CPU time and I/O move into the parent's counters when a parent in the
// tree reaps the process, so those are banked only when no such parent
// absorbed them; context switches are always banked.
func (p *plainSampler) bankVanished() {
	byPid := make(map[int]*procState, len(p.procs))
	for id, ps := range p.procs {
		byPid[id.pid] = ps
	}
	var absorbed func(ps *procState, depth int) bool
	absorbed = func(ps *procState, depth int) bool {
		parent := byPid[ps.ppid]
		if parent == nil || parent == ps || depth > maxAbsorbDepth {
			return false
		}
		return parent.gen == p.gen || absorbed(parent, depth+1)
	}
	var gone []procID
	for id, ps := range p.procs {
		if ps.gen != p.gen {
			alone := !absorbed(ps, 0)
			p.banked.add(ps.last, alone)
			if alone && len(p.bankedAlone) < maxTreeProcs {
				p.bankedAlone[id] = ps.last
			}
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		delete(p.procs, id)
	}
}

// walkTree lists the root and its descendants, plus descendants of
// processes seen before (orphans reparented away from the tree).
func (p *plainSampler) walkTree() []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(maxProcScan)
	_ = d.Close()
	children := make(map[int][]int)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if ppid, ok := p.readPpid(pid); ok {
			children[ppid] = append(children[ppid], pid)
		}
	}
	queue := []int{p.root}
	for id := range p.procs {
		queue = append(queue, id.pid)
	}
	seen := make(map[int]bool)
	var out []int
	for len(queue) > 0 && len(out) < maxTreeProcs {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		queue = append(queue, children[pid]...)
	}
	return out
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime uint64
	threads                      uint64
	start                        uint64
	rssPages                     uint64
}

// statFields returns the fields after "(comm)" of /proc/PID/stat; field n
// of proc(5) is index n-3.
func (p *plainSampler) statFields(pid int) [][]byte {
	return p.parseStatFields(p.rd.read(filepath.Join("/proc", strconv.Itoa(pid), "stat")))
}

func (p *plainSampler) parseStatFields(data []byte, err error) [][]byte {
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 > len(data) {
		return nil
	}
	p.fields = fieldsInto(p.fields[:0], data[i+2:])
	return p.fields
}

// fieldsInto is bytes.Fields appending to dst (reused between calls).
func fieldsInto(dst [][]byte, data []byte) [][]byte {
	for {
		i := 0
		for i < len(data) && (data[i] == ' ' || data[i] == '\n' || data[i] == '\t') {
			i++
		}
		data = data[i:]
		if len(data) == 0 {
			return dst
		}
		j := 0
		for j < len(data) && data[j] != ' ' && data[j] != '\n' && data[j] != '\t' {
			j++
		}
		dst = append(dst, data[:j])
		data = data[j:]
	}
}

func (p *plainSampler) readPpid(pid int) (int, bool) {
	f := p.statFields(pid)
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(string(f[1]))
	return ppid, err == nil
}

func (p *plainSampler) readStat(pid int) (procStat, bool) {
	return statOf(p.statFields(pid))
}

// readStatKept is readStat through a file kept open between samples.
func (p *plainSampler) readStatKept(pid int) (procStat, bool) {
	return statOf(p.parseStatFields(p.rd.readKept(procFile{pid: pid, name: "stat"})))
}

func statOf(f [][]byte) (procStat, bool) {
	if len(f) < 22 {
		return procStat{}, false
	}
	u := func(n int) uint64 { return parseUint(f[n-3]) }
	ppid, _ := strconv.Atoi(string(f[1]))
	return procStat{
		ppid:     ppid,
		utime:    u(14),
		stime:    u(15),
		cutime:   u(16),
		cstime:   u(17),
		threads:  u(20),
		start:    u(22),
		rssPages: u(24),
	}, true
}

// readStatus returns voluntary/nonvoluntary context switches and VmHWM in
// bytes from a status file (of a process or of one thread).
func (p *plainSampler) readStatus(path string) (vcs, ivcs, hwm uint64) {
	return parseStatus(p.rd.read(path))
}

func parseStatus(data []byte, err error) (vcs, ivcs, hwm uint64) {
	if err != nil {
		return 0, 0, 0
	}
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		switch string(key) {
		case "VmHWM":
			hwm = parseUint(bytes.TrimSuffix(bytes.TrimSpace(val), []byte(" kB"))) * 1024
		case "voluntary_ctxt_switches":
			vcs = parseUint(val)
		case "nonvoluntary_ctxt_switches":
			ivcs = parseUint(val)
		}
	}
	return vcs, ivcs, hwm
}

// readThreadsStatus sums the context switches of every live thread.
func (p *plainSampler) readThreadsStatus(pid int, budget *int) (vcs, ivcs, hwm uint64) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	d, err := os.Open(dir)
	if err != nil {
		return 0, 0, 0
	}
	tids, _ := d.Readdirnames(*budget)
	_ = d.Close()
	*budget -= len(tids)
	for _, name := range tids {
		tid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		v, iv, h := parseStatus(p.rd.readKept(procFile{pid: pid, tid: tid, name: "status"}))
		vcs += v
		ivcs += iv
		hwm = max(hwm, h)
	}
	return vcs, ivcs, hwm
}

// readIO returns read_bytes/write_bytes (bytes that reached the storage
// layer) from /proc/PID/io.
func (p *plainSampler) readIO(pid int) (read, write uint64) {
	return parseIO(p.rd.read(filepath.Join("/proc", strconv.Itoa(pid), "io")))
}

func parseIO(data []byte, err error) (read, write uint64) {
	if err != nil {
		return 0, 0
	}
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		key, val, _ := bytes.Cut(line, []byte{':'})
		switch string(key) {
		case "read_bytes":
			read = parseUint(val)
		case "write_bytes":
			write = parseUint(val)
		}
	}
	return read, write
}

// parseIOStat sums rbytes and wbytes over the devices of a cgroup v2
// io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" a line).
func parseIOStat(data []byte) (read, write uint64) {
	for _, f := range bytes.Fields(data) {
		key, val, ok := bytes.Cut(f, []byte{'='})
		if !ok {
			continue
		}
		switch string(key) {
		case "rbytes":
			read += parseUint(val)
		case "wbytes":
			write += parseUint(val)
		}
	}
	return read, write
}

// parseCPUStat returns user and system seconds from a cgroup's cpu.stat.
func parseCPUStat(data []byte, err error) (user, sys float64, ok bool) {
	if err != nil {
		return 0, 0, false
	}
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		key, val, _ := bytes.Cut(line, []byte{' '})
		switch string(key) {
		case "user_usec":
			user = float64(parseUint(val)) / 1e6
		case "system_usec":
			sys = float64(parseUint(val)) / 1e6
		}
	}
	return user, sys, true
}

func parseUint(b []byte) uint64 {
	v, _ := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	return v
}

// fileReader reads small /proc and cgroup files into one reused buffer,
// with plain open/read/close: os.ReadFile's fstat, poller registration and
// allocation were most of a sample's cost. The files of the tree's
// processes and of the cgroup are kept open between samples and re-read
// from offset 0 (pread): one system call per file per sample. What a read
// returns is valid until the next read.
type fileReader struct {
	buf   []byte
	cgDir string // the cgroup's directory, for procFile{pid: 0}
	kept  keptFDs[procFile]
	// missing are cgroup files that do not exist (io.stat without the
	// io controller): not looked for again.
	missing map[procFile]bool
	gen     uint64
}

// procFile names a file kept open: /proc/PID/NAME, or
// /proc/PID/task/TID/NAME, or the cgroup's NAME when pid is 0.
type procFile struct {
	pid, tid int
	name     string
}

type keptFD struct {
	fd  int
	gen uint64 // the last sweep period it was read in
}

const (
	readerInitial  = 16 << 10
	readerMaxReads = 64
	// maxKeptFiles bounds the descriptors kept open: past it, files are
	// opened at each read as before.
	maxKeptFiles = 512
)

func (r *fileReader) read(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	return r.readFD(fd, path)
}

// readFD reads fd whole from offset 0.
func (r *fileReader) readFD(fd int, path string) ([]byte, error) {
	if r.buf == nil {
		r.buf = make([]byte, readerInitial)
	}
	n := 0
	for range readerMaxReads {
		if n == len(r.buf) {
			r.buf = append(r.buf, make([]byte, len(r.buf))...)
		}
		k, err := unix.Pread(fd, r.buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		n += k
		// proc and cgroup files fill the buffer unless they end: a
		// short read is the end, and saves a read that returns 0.
		if k == 0 || n < len(r.buf) {
			break
		}
	}
	return r.buf[:n], nil
}

func (r *fileReader) path(f procFile) string {
	switch {
	case f.pid == 0:
		return r.cgDir + "/" + f.name
	case f.tid == 0:
		return "/proc/" + strconv.Itoa(f.pid) + "/" + f.name
	}
	return "/proc/" + strconv.Itoa(f.pid) + "/task/" + strconv.Itoa(f.tid) + "/" + f.name
}

// readKept reads f through a descriptor kept open. A descriptor of a
// process that is gone fails (ESRCH, even when its pid is reused: it
// names the old process), and the file is then opened anew.
func (r *fileReader) readKept(f procFile) ([]byte, error) {
	if k := r.kept[f]; k != nil {
		k.gen = r.gen
		if data, err := r.readFD(k.fd, f.name); err == nil {
			return data, nil
		}
		unix.Close(k.fd)
		delete(r.kept, f)
	}
	if r.missing[f] {
		return nil, &os.PathError{Op: "open", Path: r.path(f), Err: unix.ENOENT}
	}
	path := r.path(f)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if f.pid == 0 && err == unix.ENOENT {
			if r.missing == nil {
				r.missing = map[procFile]bool{}
			}
			r.missing[f] = true
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if len(r.kept) >= maxKeptFiles {
		defer unix.Close(fd)
		return r.readFD(fd, path)
	}
	if r.kept == nil {
		r.kept = keptFDs[procFile]{}
	}
	r.kept[f] = &keptFD{fd: fd, gen: r.gen}
	return r.readFD(fd, path)
}

// sweep closes the kept files not read since the previous sweep (of
// processes and threads that are gone).
func (r *fileReader) sweep() {
	r.kept.sweep(r.gen)
	r.gen++
}

// closeAll closes every kept file.
func (r *fileReader) closeAll() { r.kept.closeAll() }

// keptFDs are descriptors kept open between samples (files, fd
// directories), by what they name.
type keptFDs[K comparable] map[K]*keptFD

// sweep closes those not used in period gen.
func (m keptFDs[K]) sweep(gen uint64) {
	for key, k := range m {
		if k.gen != gen {
			unix.Close(k.fd)
			delete(m, key)
		}
	}
}

// closeAll closes them all.
func (m keptFDs[K]) closeAll() {
	for key, k := range m {
		unix.Close(k.fd)
		delete(m, key)
	}
}
