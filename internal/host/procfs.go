package host

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/net"
	"golang.org/x/sys/unix"
)

// The host collectors' sources read /proc/stat, /proc/meminfo,
// /proc/net/dev and /proc/diskstats themselves, into gopsutil's types
// with gopsutil's arithmetic (tests compare both on the same files):
// gopsutil opens each file anew, splits it into a string per line and
// allocates every result, and its disk counters also read udev's database
// and sysfs for serial numbers and labels statexec does not export. Here
// each file stays open and is re-read from offset 0 (pread) at every
// sample, into a buffer and results that are reused.

// procRoot is where proc is mounted: HOST_PROC, as gopsutil honours it,
// else /proc.
func procRoot() string {
	if p := os.Getenv("HOST_PROC"); p != "" {
		return p
	}
	return "/proc"
}

// keptFile is a file kept open and re-read whole at each read.
type keptFile struct {
	path string
	f    *os.File // keeps fd open (and closes it when collected)
	fd   int
	buf  []byte
}

func newKeptFile(path string) *keptFile { return &keptFile{path: path, fd: -1} }

// read returns the file's content, valid until the next read. The file is
// opened at the first read, and again after an error.
func (k *keptFile) read() ([]byte, error) {
	if k.f == nil {
		f, err := os.Open(k.path)
		if err != nil {
			return nil, err
		}
		k.f, k.fd = f, int(f.Fd())
	}
	if k.buf == nil {
		k.buf = make([]byte, 8<<10)
	}
	n := 0
	for range 64 { // bounded: a file growing without end is cut there
		m, err := unix.Pread(k.fd, k.buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			k.f.Close()
			k.f, k.fd = nil, -1
			return nil, &os.PathError{Op: "read", Path: k.path, Err: err}
		}
		n += m
		// proc and sysfs files fill the buffer unless they end: a short
		// read is the end, and saves a read that returns 0.
		if n < len(k.buf) || m == 0 {
			break
		}
		k.buf = append(k.buf, make([]byte, len(k.buf))...)
	}
	return k.buf[:n], nil
}

// reuse returns s when it equals b (the name read last time), else a new
// string: names are the same from one sample to the next.
func reuse(s string, b []byte) string {
	if s == string(b) {
		return s
	}
	return string(b)
}

// nextLine cuts the first line off data.
func nextLine(data []byte) (line, rest []byte) {
	line, rest, _ = bytes.Cut(data, []byte{'\n'})
	return line, rest
}

// fields splits line at blanks into dst (reused), at most len(dst) fields.
func fields(dst [][]byte, line []byte) [][]byte {
	dst = dst[:0]
	for len(line) > 0 && len(dst) < cap(dst) {
		i := 0
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		line = line[i:]
		if len(line) == 0 {
			break
		}
		j := 0
		for j < len(line) && line[j] != ' ' && line[j] != '\t' {
			j++
		}
		dst = append(dst, line[:j])
		line = line[j:]
	}
	return dst
}

func parseU64(b []byte) (uint64, error) {
	return strconv.ParseUint(string(b), 10, 64)
}

// statSource reads per-CPU times from /proc/stat as cpu.TimesWithContext
// does (ticks / cpu.ClocksPerSec; lines that do not parse are skipped).
type statSource struct {
	file *keptFile
	out  []cpu.TimesStat
	f    [][]byte
}

func newStatSource(root string) *statSource {
	return &statSource{file: newKeptFile(filepath.Join(root, "stat")), f: make([][]byte, 0, 16)}
}

func (s *statSource) times(_ context.Context, _ bool) ([]cpu.TimesStat, error) {
	data, err := s.file.read()
	if err != nil {
		return nil, err
	}
	_, data = nextLine(data) // the total over all CPUs
	prev := s.out
	out := s.out[:0]
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		if !bytes.HasPrefix(line, []byte("cpu")) {
			break
		}
		f := fields(s.f, line)
		if len(f) < 8 {
			continue
		}
		var v [10]uint64
		ok := true
		for i := range v {
			if i+1 >= len(f) {
				break
			}
			if v[i], err = parseU64(f[i+1]); err != nil {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		name := ""
		if len(out) < len(prev) {
			name = prev[len(out)].CPU
		}
		t := func(x uint64) float64 { return float64(x) / cpu.ClocksPerSec }
		out = append(out, cpu.TimesStat{
			CPU: reuse(name, f[0]), User: t(v[0]), Nice: t(v[1]), System: t(v[2]), Idle: t(v[3]), Iowait: t(v[4]),
			Irq: t(v[5]), Softirq: t(v[6]), Steal: t(v[7]), Guest: t(v[8]), GuestNice: t(v[9]),
		})
	}
	s.out = out
	return out, nil
}

// meminfoSource reads /proc/meminfo into the fields statexec exports, with
// mem.VirtualMemoryWithContext's arithmetic (Cached includes
// SReclaimable; Used = Total - Available). Without MemAvailable (before
// Linux 3.14) it asks gopsutil, which estimates it.
type meminfoSource struct {
	file *keptFile
	out  mem.VirtualMemoryStat
}

func newMeminfoSource(root string) *meminfoSource {
	return &meminfoSource{file: newKeptFile(filepath.Join(root, "meminfo"))}
}

func (s *meminfoSource) virtualMemory(ctx context.Context) (*mem.VirtualMemoryStat, error) {
	data, err := s.file.read()
	if err != nil {
		return nil, err
	}
	v := &s.out
	*v = mem.VirtualMemoryStat{}
	haveAvailable := false
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		var dst *uint64
		switch string(key) {
		case "MemTotal":
			dst = &v.Total
		case "MemFree":
			dst = &v.Free
		case "MemAvailable":
			dst, haveAvailable = &v.Available, true
		case "Buffers":
			dst = &v.Buffers
		case "Cached":
			dst = &v.Cached
		case "SReclaimable":
			dst = &v.Sreclaimable
		default:
			continue
		}
		n, err := parseU64(bytes.TrimSuffix(bytes.TrimSpace(val), []byte(" kB")))
		if err != nil {
			return nil, err
		}
		*dst = n * 1024
	}
	if !haveAvailable {
		return mem.VirtualMemoryWithContext(ctx)
	}
	v.Cached += v.Sreclaimable
	v.Used = v.Total - v.Available
	if v.Total > 0 {
		v.UsedPercent = float64(v.Used) / float64(v.Total) * 100
	}
	return v, nil
}

// netDevSource reads /proc/net/dev as net.IOCountersWithContext does.
type netDevSource struct {
	file *keptFile
	out  []net.IOCountersStat
	f    [][]byte
}

func newNetDevSource(root string) *netDevSource {
	return &netDevSource{file: newKeptFile(filepath.Join(root, "net", "dev")), f: make([][]byte, 0, 16)}
}

func (s *netDevSource) ioCounters(_ context.Context, _ bool) ([]net.IOCountersStat, error) {
	data, err := s.file.read()
	if err != nil {
		return nil, err
	}
	_, data = nextLine(data) // two header lines
	_, data = nextLine(data)
	prev := s.out
	out := s.out[:0]
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		i := bytes.LastIndexByte(line, ':')
		if i < 0 {
			continue
		}
		name := bytes.TrimSpace(line[:i])
		if len(name) == 0 {
			continue
		}
		f := fields(s.f, line[i+1:])
		if len(f) < 13 {
			continue
		}
		var v [13]uint64
		for _, k := range []int{0, 1, 2, 3, 4, 8, 9, 10, 11, 12} {
			if v[k], err = parseU64(f[k]); err != nil {
				s.out = out
				return out, err
			}
		}
		old := ""
		if len(out) < len(prev) {
			old = prev[len(out)].Name
		}
		out = append(out, net.IOCountersStat{
			Name: reuse(old, name), BytesRecv: v[0], PacketsRecv: v[1], Errin: v[2], Dropin: v[3], Fifoin: v[4],
			BytesSent: v[8], PacketsSent: v[9], Errout: v[10], Dropout: v[11], Fifoout: v[12],
		})
	}
	s.out = out
	return out, nil
}

// diskstatsSource reads /proc/diskstats as disk.IOCountersWithContext
// does (sectors of 512 bytes; devices whose counters are all zero are
// left out), without the serial numbers and labels.
type diskstatsSource struct {
	file  *keptFile
	out   map[string]disk.IOCountersStat
	names map[string]string // interned device names
	f     [][]byte
}

// diskSectorSize is the unit of /proc/diskstats' sector counts, whatever
// the device's own sector size.
const diskSectorSize = 512

func newDiskstatsSource(root string) *diskstatsSource {
	return &diskstatsSource{
		file:  newKeptFile(filepath.Join(root, "diskstats")),
		out:   map[string]disk.IOCountersStat{},
		names: map[string]string{},
		f:     make([][]byte, 0, 24),
	}
}

var errDiskstatsNames = errors.New("diskstats: too many devices")

func (s *diskstatsSource) ioCounters(_ context.Context, _ ...string) (map[string]disk.IOCountersStat, error) {
	data, err := s.file.read()
	if err != nil {
		return nil, err
	}
	clear(s.out)
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		f := fields(s.f, line)
		if len(f) < 14 {
			continue
		}
		var v [11]uint64
		for i := range v {
			if v[i], err = parseU64(f[3+i]); err != nil {
				return s.out, err
			}
		}
		if v == [11]uint64{} {
			continue
		}
		name, ok := s.names[string(f[2])]
		if !ok {
			if len(s.names) >= 1<<16 {
				return s.out, errDiskstatsNames
			}
			name = string(f[2])
			s.names[name] = name
		}
		s.out[name] = disk.IOCountersStat{
			Name: name, ReadCount: v[0], MergedReadCount: v[1], ReadBytes: v[2] * diskSectorSize, ReadTime: v[3],
			WriteCount: v[4], MergedWriteCount: v[5], WriteBytes: v[6] * diskSectorSize, WriteTime: v[7],
			IopsInProgress: v[8], IoTime: v[9], WeightedIO: v[10],
		}
	}
	return s.out, nil
}
