//go:build linux

package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// tcpDiag is the TCP view without BPF (plain backend, or a kernel without
// sock_ops): at each sample a sock_diag dump of the TCP sockets of the
// run's cgroup, in each network namespace the tree's processes are in. It
// sees only the sockets alive at the sample: a connection opened and
// closed between two samples leaves no trace, and the tcp_info sums drop
// when a socket closes. So it exports gauges of live sockets, never
// counters of the command.
type tcpDiag struct {
	cg *cgroup
	// off: the kernel refused the cgroup filter (no
	// INET_DIAG_BC_CGROUP_COND, before Linux 5.8); nothing is exported.
	off  bool
	last tcpDiagTotals
	buf  []byte
	fds  fdDirs

	conns, retrans, rtt, sent, received *prometheus.Desc
	series                              seriesSet
}

type tcpDiagTotals struct {
	states         [len(tcpStates)]uint64
	retrans        uint64
	rttSum, rttMax float64 // seconds
	rttN           uint64
	sent, received uint64
}

// tcpConnectionsHelp is the help of statexec_process_tcp_connections,
// the same from either source.
const tcpConnectionsHelp = "Live TCP sockets of the command's tree by state at the sample (TIME_WAIT sockets are kernel mini sockets not counted here)."

func newTCPDiag(cg *cgroup, d func(name, help string, labels ...string) *prometheus.Desc) *tcpDiag {
	return &tcpDiag{
		cg:       cg,
		buf:      make([]byte, 64<<10),
		conns:    d("statexec_process_tcp_connections", tcpConnectionsHelp, "state"),
		retrans:  d("statexec_process_tcp_live_retransmitted_segments", "Retransmitted segments summed over the command's tree's live TCP sockets at the sample (tcp_info total_retrans, sock_diag; plain backend). Not a counter: it drops when a socket closes."),
		rtt:      d("statexec_process_tcp_live_rtt_seconds", "Smoothed RTT (tcp_info rtt) over the command's tree's live TCP sockets at the sample, mean or max (sock_diag; plain backend).", "stat"),
		sent:     d("statexec_process_tcp_live_sent_bytes", "Bytes sent (tcp_info bytes_sent, retransmits included) summed over the command's tree's live TCP sockets at the sample (sock_diag; plain backend). Not a counter: it drops when a socket closes."),
		received: d("statexec_process_tcp_live_received_bytes", "Bytes received (tcp_info bytes_received) summed over the command's tree's live TCP sockets at the sample (sock_diag; plain backend). Not a counter: it drops when a socket closes."),
	}
}

func (d *tcpDiag) describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{d.conns, d.retrans, d.rtt, d.sent, d.received} {
		ch <- desc
	}
}

func (d *tcpDiag) collect(emit func(prometheus.Metric)) {
	if d.off {
		return
	}
	t, s := &d.last, &d.series
	for st, name := range tcpStates {
		if name != "" {
			emit(s.gauge(d.conns).With1(name).Set(float64(t.states[st])))
		}
	}
	emit(s.gauge(d.retrans).With0().Set(float64(t.retrans)))
	mean := 0.0
	if t.rttN > 0 {
		mean = t.rttSum / float64(t.rttN)
	}
	emit(s.gauge(d.rtt).With1("mean").Set(mean))
	emit(s.gauge(d.rtt).With1("max").Set(t.rttMax))
	emit(s.gauge(d.sent).With0().Set(float64(t.sent)))
	emit(s.gauge(d.received).With0().Set(float64(t.received)))
}

// sample dumps the sockets of the cgroup in each network namespace of its
// processes, pids (the cgroup's cgroup.procs as read at this sample, or
// the error reading it). On error it keeps the previous values.
func (d *tcpDiag) sample(pids []int, pidsErr error) error {
	if d.off {
		return nil
	}
	if pidsErr != nil {
		return fmt.Errorf("tcp sock_diag: %w", pidsErr)
	}
	// A dump walks the kernel's whole TCP hash table (1-3 ms of CPU
	// with 262,144 buckets): skip it while the tree holds no socket at
	// all and the last dump found none (the sockets it found are dumped
	// until they are gone, also once no process holds them).
	if !d.last.any() && !d.fds.haveSocket(pids) {
		return nil
	}
	var t tcpDiagTotals
	seen := make(map[[2]uint64]bool)
	for _, pid := range pids {
		nsPath := "/proc/" + strconv.Itoa(pid) + "/ns/net"
		var st unix.Stat_t
		if unix.Stat(nsPath, &st) != nil {
			continue // exited meanwhile
		}
		key := [2]uint64{st.Dev, st.Ino}
		if seen[key] {
			continue
		}
		seen[key] = true
		err := d.dumpNetns(nsPath, &t)
		if errors.Is(err, unix.EINVAL) {
			d.off = true
			return fmt.Errorf("tcp sock_diag: the kernel has no cgroup filter (needs Linux 5.8): %w", err)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("tcp sock_diag: %w", err)
		}
	}
	d.last = t
	return nil
}

// any reports whether the dump found a socket.
func (t *tcpDiagTotals) any() bool {
	for _, n := range t.states {
		if n > 0 {
			return true
		}
	}
	return false
}

// maxFdChecks bounds the descriptors haveSocket looks at; past it the
// tree is assumed to hold sockets (the dump then decides).
const maxFdChecks = 4096

// fdDirs reads the tree's /proc/PID/fd directories at every sample
// through descriptors kept open (as fileReader does for files): each
// process costs a seek, one getdents and one readlinkat per descriptor,
// instead of an open, a close, four fcntl, two epoll_ctl and a second
// getdents through os.File, and nothing is allocated.
type fdDirs struct {
	kept keptFDs[int] // by pid; an fd of an exited process fails
	gen  uint64
	buf  []byte
	link [64]byte
}

// haveSocket reports whether one of the processes pids has a socket open
// (any kind: the dump tells TCP from the rest).
func (f *fdDirs) haveSocket(pids []int) bool {
	defer f.sweep()
	budget := maxFdChecks
	for _, pid := range pids {
		data, fd, kept := f.list(pid)
		if fd < 0 {
			continue // exited, or not ours to read
		}
		found, over := f.scan(data, fd, &budget)
		if !kept {
			unix.Close(fd)
		}
		if found || over {
			return true
		}
	}
	return false
}

// scan looks for a socket among the entries data of the fd directory fd;
// over says that the budget ran out first.
func (f *fdDirs) scan(data []byte, fd int, budget *int) (found, over bool) {
	for len(data) >= direntNameOff {
		reclen := int(binary.NativeEndian.Uint16(data[16:18]))
		if reclen <= direntNameOff || reclen > len(data) {
			break
		}
		name := data[direntNameOff:reclen] // NUL-terminated, padded
		data = data[reclen:]
		if name[0] == '.' {
			continue // . and ..
		}
		if *budget--; *budget < 0 {
			return false, true
		}
		if f.isSocket(fd, name) {
			return true, false
		}
	}
	return false, false
}

// maxFdDirBytes bounds what readDir reads of one directory: more than
// maxFdChecks entries (32 bytes each for a descriptor's number).
const maxFdDirBytes = 256 << 10

// direntNameOff is where d_name starts in a linux_dirent64 (d_ino 8,
// d_off 8, d_reclen 2, d_type 1).
const direntNameOff = 19

// list returns pid's fd directory entries (linux_dirent64 records) and
// the directory's descriptor (-1: the process exited, or is not ours to
// read); kept false means that the caller closes it after use.
func (f *fdDirs) list(pid int) (data []byte, fd int, kept bool) {
	if f.buf == nil {
		f.buf = make([]byte, 8<<10)
	}
	if k := f.kept[pid]; k != nil {
		k.gen = f.gen
		if data, ok := f.readDir(k.fd); ok {
			return data, k.fd, true
		}
		unix.Close(k.fd)
		delete(f.kept, pid)
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, false
	}
	kept = len(f.kept) < maxKeptFiles // past the bound, opened at each sample
	if kept {
		if f.kept == nil {
			f.kept = keptFDs[int]{}
		}
		f.kept[pid] = &keptFD{fd: fd, gen: f.gen}
	}
	data, ok := f.readDir(fd)
	if !ok {
		if !kept {
			unix.Close(fd)
		}
		return nil, -1, false
	}
	return data, fd, kept
}

// readDir reads a directory's entries from its start.
func (f *fdDirs) readDir(fd int) ([]byte, bool) {
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, false
	}
	n := 0
	for {
		m, err := unix.Getdents(fd, f.buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// A process that exited (or a pid now another
			// process's: the descriptor names the old one).
			return nil, false
		}
		n += m
		// getdents stops only when the next entry does not fit: room
		// for the longest name left over means the directory ended,
		// which saves the call that returns 0.
		if m == 0 || len(f.buf)-n >= direntNameOff+unix.NAME_MAX+8 {
			return f.buf[:n], true
		}
		if n >= maxFdDirBytes {
			// More entries than haveSocket looks at anyway.
			return f.buf[:n], true
		}
		f.buf = append(f.buf, make([]byte, len(f.buf))...)
	}
}

// isSocket tells whether the descriptor named name (NUL-terminated, as
// getdents writes it) in the fd directory dirfd is a socket.
func (f *fdDirs) isSocket(dirfd int, name []byte) bool {
	if bytes.IndexByte(name, 0) <= 0 {
		return false
	}
	// readlinkat with the name where getdents put it: no string made.
	n, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])),
		uintptr(unsafe.Pointer(&f.link[0])), uintptr(len(f.link)), 0, 0)
	return e == 0 && n > 7 && string(f.link[:7]) == "socket:"
}

// sweep closes the directories of processes not looked at this time.
func (f *fdDirs) sweep() {
	f.kept.sweep(f.gen)
	f.gen++
}

// close closes every kept directory.
func (f *fdDirs) close() { f.kept.closeAll() }

// dumpNetns opens a sock_diag socket in the network namespace at nsPath
// and adds its IPv4 and IPv6 TCP sockets of the cgroup to t.
func (d *tcpDiag) dumpNetns(nsPath string, t *tcpDiagTotals) error {
	fd, err := socketInNetns(nsPath)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := d.dump(fd, family, t); err != nil {
			return err
		}
	}
	return nil
}

// socketInNetns makes a NETLINK_SOCK_DIAG socket in the namespace at
// nsPath: a socket belongs to the namespace of the thread that made it,
// so a locked thread joins the namespace, makes it and goes back. A
// thread that cannot go back is not reused (it ends with its goroutine).
func socketInNetns(nsPath string) (int, error) {
	newSocket := func() (int, error) {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	}
	var self, target unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err == nil {
		if err := unix.Stat(nsPath, &target); err != nil {
			return -1, err
		}
		if self.Dev == target.Dev && self.Ino == target.Ino {
			return newSocket()
		}
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := func() (int, error) {
			home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, err
			}
			defer unix.Close(home)
			ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, err
			}
			defer unix.Close(ns)
			if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
				return -1, fmt.Errorf("join network namespace: %w", err)
			}
			fd, err := newSocket()
			if unix.Setns(home, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			return fd, err
		}()
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

const (
	inetDiagReqBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagInfo         = 2  // INET_DIAG_INFO
	inetDiagBcCgroupCond = 13 // INET_DIAG_BC_CGROUP_COND
	inetDiagMsgLen       = 72 // sizeof(struct inet_diag_msg)
	inetDiagReqLen       = 56 // sizeof(struct inet_diag_req_v2)
	maxDiagReads         = 4096
)

// dump sends one SOCK_DIAG_BY_FAMILY dump request for TCP sockets of
// family whose cgroup is the run's, and reads the answer.
func (d *tcpDiag) dump(fd int, family uint8, t *tcpDiagTotals) error {
	const bcLen = 4 + 8 // inet_diag_bc_op + cgroup id
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqLen+unix.SizeofRtAttr+bcLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // seq
	r := req[unix.SizeofNlMsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = 1 << (inetDiagInfo - 1)  // ask for tcp_info
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	a := r[inetDiagReqLen:]
	ne.PutUint16(a[0:], unix.SizeofRtAttr+bcLen)
	ne.PutUint16(a[2:], inetDiagReqBytecode)
	// One condition: accept (jump to the end, +12) when the socket's
	// cgroup is ours, else reject (jump past the end, +16).
	op := a[unix.SizeofRtAttr:]
	op[0] = inetDiagBcCgroupCond
	op[1] = bcLen
	ne.PutUint16(op[2:], bcLen+4)
	ne.PutUint64(op[4:], d.cg.id)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	for range maxDiagReads {
		n, _, err := unix.Recvfrom(fd, d.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag read: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag read: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(ne.Uint32(m.Data)); code < 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-code))
					}
				}
				return nil
			case unix.SOCK_DIAG_BY_FAMILY:
				addSocket(m.Data, t)
			}
		}
	}
	return errors.New("sock_diag: answer too long")
}

// addSocket adds one inet_diag_msg (and its tcp_info) to t.
func addSocket(b []byte, t *tcpDiagTotals) {
	if len(b) < inetDiagMsgLen {
		return
	}
	state := int(b[1])
	if state > 0 && state < len(t.states) && tcpStates[state] != "" {
		t.states[state]++
	}
	ne := binary.NativeEndian
	for attrs := b[inetDiagMsgLen:]; len(attrs) >= unix.SizeofRtAttr; {
		l := int(ne.Uint16(attrs))
		if l < unix.SizeofRtAttr || l > len(attrs) {
			return
		}
		if ne.Uint16(attrs[2:]) == inetDiagInfo {
			var ti unix.TCPInfo
			// The kernel's tcp_info may be shorter (older) or longer
			// (newer) than ours: what both have is read.
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ti)), unix.SizeofTCPInfo), attrs[unix.SizeofRtAttr:l])
			t.retrans += uint64(ti.Total_retrans)
			t.sent += ti.Bytes_sent
			t.received += ti.Bytes_received
			if ti.Rtt > 0 && state != 10 { // a listener has no RTT
				rtt := float64(ti.Rtt) / 1e6
				t.rttSum += rtt
				t.rttN++
				t.rttMax = max(t.rttMax, rtt)
			}
		}
		step := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if step >= len(attrs) {
			return
		}
		attrs = attrs[step:]
	}
}
