// Package store keeps a run's samples on disk as they are taken, in an
// append-only spool next to the metrics file, and turns the spool into the
// final metrics file at the end (or after a crash, with Recover).
//
// Memory holds only what describes the series (names, labels, counts);
// the points themselves live in the spool, so a run of any length costs
// the same memory. A torn record at the end of a spool (statexec killed
// while writing) is detected by its checksum and ignored: at most the
// sample being written is lost.
package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// Record kinds in the spool.
const (
	recFamily = 'F'
	recSeries = 'S'
	recTick   = 'T'
	// recShift moves every tick before it on the time axis: the sync
	// modes learn their time origin (the sync instant) only after the
	// first samples were spooled.
	recShift = 'O'
)

// spoolMagic starts a spool. Version 2 added recShift; version 1 spools
// (which have none) are still read.
const (
	spoolMagic   = "statexec-spool-2\n"
	spoolMagicV1 = "statexec-spool-1\n"
)

// maxRecord bounds a record's size when reading a spool back, so that a
// corrupt length cannot make Recover allocate without limit.
const maxRecord = 64 << 20

type family struct {
	name string
	help string
	typ  dto.MetricType
	// series in first-seen order
	series []int
	// lastOrder[j] is the series of the family's j-th metric in the
	// previous tick: a registry gathers a family's metrics in the same
	// order every time, so the series is found without building its key.
	lastOrder []int
}

type series struct {
	family  int
	labels  []*dto.LabelPair
	bounds  []float64 // histogram bucket upper bounds
	nvals   int       // values per point
	points  int
	lastTs  int64
	hasLast bool
}

// Store is a run's sample store. It is not safe for concurrent use.
type Store struct {
	f        *os.File
	w        *bufio.Writer
	path     string
	families []*family
	famIndex map[string]int
	series   []*series
	serIndex map[string]int
	ticks    int
	// shiftMs is added to the timestamps of the shiftTicks first ticks
	// (see Shift).
	shiftMs    int64
	shiftTicks int
	shifted    bool
	err        error // first write error, sticky
	buf        []byte
	vals       []float64 // one point's values, reused
	tick       []byte    // one tick's record, reused
}

// ErrShifted is returned by a second Shift.
var ErrShifted = errors.New("store: time axis already shifted")

// ErrInUse means another live statexec holds the spool.
var ErrInUse = errors.New("store: spool in use by another statexec run")

// Create creates a new spool at path and locks it (flock) for the life of
// the store, so that another run can tell a live spool from a stale one.
// A stale spool at path must have been dealt with (see Stale) before.
func Create(path string) (*Store, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store: create spool: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, path)
		}
		return nil, fmt.Errorf("store: lock spool: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: create spool: %w", err)
	}
	s := newStore(path)
	s.f = f
	s.w = bufio.NewWriterSize(f, 64<<10)
	if _, err := s.w.WriteString(spoolMagic); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: write spool: %w", err)
	}
	return s, s.flush()
}

// Stale reports whether a spool exists at path that no live statexec
// holds: the spool of an interrupted run.
func Stale(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: open spool: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, fmt.Errorf("%w: %s", ErrInUse, path)
		}
		return false, fmt.Errorf("store: lock spool: %w", err)
	}
	return true, nil
}

func newStore(path string) *Store {
	return &Store{path: path, famIndex: map[string]int{}, serIndex: map[string]int{}}
}

// Path is the spool's path.
func (s *Store) Path() string { return s.path }

// Points is the number of points stored over all series.
func (s *Store) Points() int {
	n := 0
	for _, se := range s.series {
		n += se.points
	}
	return n
}

// Series is the number of series seen.
func (s *Store) Series() int { return len(s.series) }

// Ticks is the number of Append calls stored.
func (s *Store) Ticks() int { return s.ticks }

// Err is the first error met while writing the spool, if any. Appends
// after an error keep the in-memory index consistent but write nothing.
func (s *Store) Err() error { return s.err }

// ErrRejected marks an Append error about some metrics only: their
// samples were left out, the rest of the tick is stored, and later ticks
// are not affected.
var ErrRejected = errors.New("its samples are not recorded")

// Append stores one sample of every metric in mfs at timestamp tsMs.
// A point whose timestamp is not after its series' previous point is
// dropped: timestamps of a series only increase. A family the store cannot
// take (a type that changed, or is not supported) is left out and reported
// with an error wrapping ErrRejected, after the rest of the tick is stored;
// any other error is the spool's, and then this and later ticks are lost.
func (s *Store) Append(tsMs int64, mfs []*dto.MetricFamily) error {
	count := 0
	body := s.tick[:0]
	var rejected []error
	for _, mf := range mfs {
		fi, err := s.familyFor(mf)
		if err != nil {
			// Skip the family before any of its series is counted: a
			// point counted but not written would be exported as a
			// phantom "0 0" sample.
			rejected = append(rejected, err)
			continue
		}
		fam := s.families[fi]
		for j, m := range mf.Metric {
			si := -1
			if j < len(fam.lastOrder) {
				if c := fam.lastOrder[j]; sameLabels(m.Label, s.series[c].labels) {
					si = c
				}
			}
			if si < 0 {
				si = s.seriesFor(fi, mf, m)
				if j < len(fam.lastOrder) {
					fam.lastOrder[j] = si
				} else if j == len(fam.lastOrder) {
					fam.lastOrder = append(fam.lastOrder, si)
				}
			}
			se := s.series[si]
			vals, ok := s.values(mf.GetType(), m, se)
			if !ok {
				continue
			}
			if se.hasLast && tsMs <= se.lastTs {
				continue
			}
			se.lastTs, se.hasLast = tsMs, true
			se.points++
			body = binary.AppendUvarint(body, uint64(si))
			for _, v := range vals {
				body = binary.LittleEndian.AppendUint64(body, math.Float64bits(v))
			}
			count++
		}
	}
	// The header goes after the body in the buffer, then the two swap
	// places on the way out (writeRecord takes the parts in order).
	head := len(body)
	body = append(body, recTick)
	body = binary.AppendVarint(body, tsMs)
	body = binary.AppendUvarint(body, uint64(count))
	s.tick = body
	s.ticks++
	s.writeRecord(body[head:], body[:head])
	if err := s.flush(); err != nil {
		return err
	}
	return errors.Join(rejected...)
}

// Shift moves every tick stored so far by deltaMs on the time axis; later
// ticks are stored with their final timestamps. It is recorded in the
// spool, so that a recovered spool is shifted the same way. Only one
// shift is allowed per store.
//
// ErrShifted means nothing was done (a second shift); any other error is
// the spool's write error, after the shift was applied.
func (s *Store) Shift(deltaMs int64) error {
	if s.shifted {
		return ErrShifted
	}
	if err := s.setShift(deltaMs, s.ticks); err != nil {
		return err
	}
	rec := binary.AppendVarint([]byte{recShift}, deltaMs)
	rec = binary.AppendUvarint(rec, uint64(s.ticks))
	s.writeRecord(rec)
	return s.flush()
}

// setShift applies a shift of the ticks first ticks to the index.
func (s *Store) setShift(deltaMs int64, ticks int) error {
	if ticks != s.ticks || s.shifted {
		return errors.New("store: bad shift record")
	}
	s.shiftMs, s.shiftTicks, s.shifted = deltaMs, ticks, true
	for _, se := range s.series {
		if se.hasLast {
			se.lastTs += deltaMs
		}
	}
	return nil
}

func (s *Store) familyFor(mf *dto.MetricFamily) (int, error) {
	name := mf.GetName()
	if fi, ok := s.famIndex[name]; ok {
		if s.families[fi].typ != mf.GetType() {
			return 0, fmt.Errorf("store: metric %s changed type from %s to %s: %w",
				name, s.families[fi].typ, mf.GetType(), ErrRejected)
		}
		return fi, nil
	}
	switch mf.GetType() {
	case dto.MetricType_COUNTER, dto.MetricType_GAUGE, dto.MetricType_UNTYPED, dto.MetricType_HISTOGRAM:
	default:
		return 0, fmt.Errorf("store: metric %s: type %s not supported: %w", name, mf.GetType(), ErrRejected)
	}
	fi := len(s.families)
	s.families = append(s.families, &family{name: name, help: mf.GetHelp(), typ: mf.GetType()})
	s.famIndex[name] = fi
	rec := []byte{recFamily}
	rec = appendString(rec, name)
	rec = appendString(rec, mf.GetHelp())
	rec = binary.AppendUvarint(rec, uint64(mf.GetType()))
	s.writeRecord(rec)
	return fi, nil
}

// sameLabels tells whether labels, without those with an empty value,
// are want.
func sameLabels(labels, want []*dto.LabelPair) bool {
	i := 0
	for _, l := range labels {
		if l.GetValue() == "" {
			continue
		}
		if i >= len(want) || want[i].GetName() != l.GetName() || want[i].GetValue() != l.GetValue() {
			return false
		}
		i++
	}
	return i == len(want)
}

func seriesKey(fi int, labels []*dto.LabelPair) string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(fi))
	for _, l := range labels {
		b.WriteByte(0)
		b.WriteString(l.GetName())
		b.WriteByte(0)
		b.WriteString(l.GetValue())
	}
	return b.String()
}

// nonEmpty returns labels without those whose value is empty: in
// Prometheus an empty label is an absent one, and VictoriaMetrics and
// promtool drop it on import, so writing it would make the file disagree
// with every database it is loaded into.
func nonEmpty(labels []*dto.LabelPair) []*dto.LabelPair {
	for i, l := range labels {
		if l.GetValue() == "" {
			kept := append([]*dto.LabelPair(nil), labels[:i]...)
			for _, l := range labels[i+1:] {
				if l.GetValue() != "" {
					kept = append(kept, l)
				}
			}
			return kept
		}
	}
	return labels
}

func (s *Store) seriesFor(fi int, mf *dto.MetricFamily, m *dto.Metric) int {
	labels := nonEmpty(m.Label)
	key := seriesKey(fi, labels)
	if si, ok := s.serIndex[key]; ok {
		return si
	}
	se := &series{family: fi, nvals: 1}
	for _, l := range labels {
		se.labels = append(se.labels, &dto.LabelPair{Name: ptr(l.GetName()), Value: ptr(l.GetValue())})
	}
	if mf.GetType() == dto.MetricType_HISTOGRAM {
		for _, b := range m.GetHistogram().GetBucket() {
			se.bounds = append(se.bounds, b.GetUpperBound())
		}
		se.nvals = 2 + len(se.bounds)
	}
	return s.addSeries(key, se)
}

func (s *Store) addSeries(key string, se *series) int {
	si := len(s.series)
	s.series = append(s.series, se)
	s.serIndex[key] = si
	s.families[se.family].series = append(s.families[se.family].series, si)
	if s.f != nil {
		rec := []byte{recSeries}
		rec = binary.AppendUvarint(rec, uint64(se.family))
		rec = binary.AppendUvarint(rec, uint64(len(se.labels)))
		for _, l := range se.labels {
			rec = appendString(rec, l.GetName())
			rec = appendString(rec, l.GetValue())
		}
		rec = binary.AppendUvarint(rec, uint64(len(se.bounds)))
		for _, b := range se.bounds {
			rec = binary.LittleEndian.AppendUint64(rec, math.Float64bits(b))
		}
		s.writeRecord(rec)
	}
	return si
}

// values flattens one metric's point into a buffer valid until the next
// call; ok is false if its shape does not match the series (a histogram
// whose buckets changed).
func (s *Store) values(t dto.MetricType, m *dto.Metric, se *series) ([]float64, bool) {
	v := s.vals[:0]
	defer func() { s.vals = v[:0] }()
	switch t {
	case dto.MetricType_COUNTER:
		v = append(v, m.GetCounter().GetValue())
		return v, true
	case dto.MetricType_GAUGE:
		v = append(v, m.GetGauge().GetValue())
		return v, true
	case dto.MetricType_UNTYPED:
		v = append(v, m.GetUntyped().GetValue())
		return v, true
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		if len(h.GetBucket()) != len(se.bounds) {
			return nil, false
		}
		v = append(v, float64(h.GetSampleCount()), h.GetSampleSum())
		for i, b := range h.GetBucket() {
			if b.GetUpperBound() != se.bounds[i] {
				return nil, false
			}
			v = append(v, float64(b.GetCumulativeCount()))
		}
		return v, true
	}
	return nil, false
}

// writeRecord frames the concatenation of parts as length, CRC-32,
// payload.
func (s *Store) writeRecord(parts ...[]byte) {
	if s.w == nil || s.err != nil {
		return
	}
	n, crc := 0, uint32(0)
	for _, p := range parts {
		n += len(p)
		crc = crc32.Update(crc, crc32.IEEETable, p)
	}
	s.buf = binary.AppendUvarint(s.buf[:0], uint64(n))
	s.buf = binary.LittleEndian.AppendUint32(s.buf, crc)
	if _, err := s.w.Write(s.buf); err != nil {
		s.err = fmt.Errorf("store: write spool: %w", err)
		return
	}
	for _, p := range parts {
		if _, err := s.w.Write(p); err != nil {
			s.err = fmt.Errorf("store: write spool: %w", err)
			return
		}
	}
}

// flush pushes buffered records to the kernel, so that they survive the
// process being killed.
func (s *Store) flush() error {
	if s.w == nil {
		return s.err
	}
	if s.err == nil {
		if err := s.w.Flush(); err != nil {
			s.err = fmt.Errorf("store: write spool: %w", err)
		}
	}
	return s.err
}

// Close closes the spool file (it stays on disk; see Remove).
func (s *Store) Close() error {
	if s.f == nil {
		return nil
	}
	s.flush()
	err := s.f.Close()
	s.f = nil
	return err
}

// Remove closes and deletes the spool.
func (s *Store) Remove() error {
	s.Close()
	return os.Remove(s.path)
}

func appendString(b []byte, str string) []byte {
	b = binary.AppendUvarint(b, uint64(len(str)))
	return append(b, str...)
}

func ptr[T any](v T) *T { return &v }

// recordReader reads framed records; a torn or corrupt record ends it.
type recordReader struct {
	r   *bufio.Reader
	buf []byte
}

var errTorn = errors.New("torn record")

func (rr *recordReader) next() ([]byte, error) {
	n, err := binary.ReadUvarint(rr.r)
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil || n == 0 || n > maxRecord {
		return nil, errTorn
	}
	var crc [4]byte
	if _, err := io.ReadFull(rr.r, crc[:]); err != nil {
		return nil, errTorn
	}
	if n <= uint64(cap(rr.buf)) {
		rr.buf = rr.buf[:n]
		if _, err := io.ReadFull(rr.r, rr.buf); err != nil {
			return nil, errTorn
		}
	} else {
		// Grow with the bytes that are really there: a corrupt length
		// in a short file must not cost maxRecord of memory.
		b := bytes.NewBuffer(rr.buf[:0])
		if _, err := io.CopyN(b, rr.r, int64(n)); err != nil {
			return nil, errTorn
		}
		rr.buf = b.Bytes()
	}
	if crc32.ChecksumIEEE(rr.buf) != binary.LittleEndian.Uint32(crc[:]) {
		return nil, errTorn
	}
	return rr.buf, nil
}
