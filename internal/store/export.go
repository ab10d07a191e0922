package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Format is the text format of the metrics file.
type Format int

const (
	// OpenMetrics is OpenMetrics 1.0 text: timestamps in seconds, # EOF.
	OpenMetrics Format = iota
	// Prometheus is the 0.0.4 text format: timestamps in milliseconds.
	Prometheus
)

// chunkPoints bounds how many points of one series are turned into
// protobufs at a time while exporting.
const chunkPoints = 512

// seriesBuffer bounds the memory used per series while sorting.
const seriesBuffer = 4 << 10

// memoryScratch is the largest sort done in memory rather than in a
// scratch file: short runs (most of them) then cost no file I/O but the
// spool read.
const memoryScratch = 8 << 20

// scratch holds the sorted points: a file, or memory for small runs.
type scratch interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
}

// memScratch is an in-memory scratch of a fixed size.
type memScratch []byte

func (m memScratch) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

func (m memScratch) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m memScratch) Close() error { return nil }

// newScratch returns a scratch for size bytes.
func newScratch(dir string, size int64) (scratch, error) {
	if size <= memoryScratch {
		return make(memScratch, size), nil
	}
	f, err := os.CreateTemp(dir, ".statexec-sort-*")
	if err != nil {
		return nil, fmt.Errorf("store: create scratch file: %w", err)
	}
	os.Remove(f.Name()) // anonymous: gone when closed, even after a crash
	return f, nil
}

// WriteFile exports the store to path atomically: a temporary file in the
// same directory is written, synced and renamed over path, so a failed or
// interrupted export leaves any previous file untouched.
func (s *Store) WriteFile(path string, format Format) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("store: create metrics file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// 64 KiB: writes of that size cost no more per byte than larger
	// ones, and a short run's export does not fault in a buffer four
	// times the size of its file.
	bw := bufio.NewWriterSize(tmp, 64<<10)
	// Sort in the output's directory: the spool's may be the full one.
	if err = s.export(bw, format, filepath.Dir(path)); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return fmt.Errorf("store: write metrics file: %w", err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("store: sync metrics file: %w", err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("store: chmod metrics file: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("store: close metrics file: %w", err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("store: rename metrics file: %w", err)
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Export writes every stored point to w: families in first-seen order,
// each series' points contiguous and in time order. It runs in time linear
// in the number of points and memory linear in the number of series.
func (s *Store) Export(w io.Writer, format Format) error {
	return s.export(w, format, filepath.Dir(s.path))
}

func (s *Store) export(w io.Writer, format Format, scratchDir string) error {
	if s.flush() != nil {
		// The spool could not be written completely (disk full): export
		// what it holds, as recovery would.
		r, _, err := Open(s.path)
		if err != nil {
			return err
		}
		s = r
	}
	scratch, offsets, err := s.sortPoints(scratchDir)
	if err != nil {
		return err
	}
	defer scratch.Close()
	// One read buffer for every series of every family: a new one per
	// family cost a page fault per 4 KiB, a third of a short run's export.
	r := bufio.NewReaderSize(nil, 64<<10)
	for _, fam := range s.families {
		if err := s.exportFamily(w, format, fam, scratch, offsets, r); err != nil {
			return err
		}
	}
	if format == OpenMetrics {
		if _, err := expfmt.FinalizeOpenMetrics(w); err != nil {
			return fmt.Errorf("store: write metrics file: %w", err)
		}
	}
	return nil
}

func pointSize(se *series) int64 { return int64(8 + 8*se.nvals) }

// sortPoints copies every point from the spool into a scratch in which
// each series owns one contiguous region, in export order.
func (s *Store) sortPoints(dir string) (scratch, []int64, error) {
	offsets := make([]int64, len(s.series))
	var total int64
	for _, fam := range s.families {
		for _, si := range fam.series {
			offsets[si] = total
			total += int64(s.series[si].points) * pointSize(s.series[si])
		}
	}
	scratch, err := newScratch(dir, total)
	if err != nil {
		return nil, nil, err
	}
	cursor := append([]int64(nil), offsets...)
	bufs := make([][]byte, len(s.series))
	flushSeries := func(si int) error {
		if len(bufs[si]) == 0 {
			return nil
		}
		if _, err := scratch.WriteAt(bufs[si], cursor[si]); err != nil {
			return fmt.Errorf("store: write scratch file: %w", err)
		}
		cursor[si] += int64(len(bufs[si]))
		bufs[si] = bufs[si][:0]
		return nil
	}
	err = s.scanTicks(func(ts int64, si int, vals []byte) error {
		b := binary.LittleEndian.AppendUint64(bufs[si], uint64(ts))
		bufs[si] = append(b, vals...)
		if len(bufs[si]) >= seriesBuffer {
			return flushSeries(si)
		}
		return nil
	})
	for si := range bufs {
		if err == nil {
			err = flushSeries(si)
		}
	}
	if err != nil {
		scratch.Close()
		return nil, nil, err
	}
	return scratch, offsets, nil
}

// scanTicks reads the spool from the start and calls fn for each point
// of the s.ticks first ticks. vals is only valid during the call.
func (s *Store) scanTicks(fn func(ts int64, si int, vals []byte) error) error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("store: open spool: %w", err)
	}
	defer f.Close()
	rr := &recordReader{r: bufio.NewReaderSize(f, 256<<10)}
	if err := readMagic(rr.r); err != nil {
		return err
	}
	for ticks := 0; ticks < s.ticks; {
		rec, err := rr.next()
		if err != nil {
			return fmt.Errorf("store: read spool: tick %d of %d: %w", ticks, s.ticks, err)
		}
		if rec[0] != recTick {
			continue
		}
		ticks++
		shifted := fn
		if ticks <= s.shiftTicks {
			shifted = func(ts int64, si int, vals []byte) error { return fn(ts+s.shiftMs, si, vals) }
		}
		if err := s.forPoints(rec, shifted); err != nil {
			return err
		}
	}
	return nil
}

// forPoints decodes one tick record.
func (s *Store) forPoints(rec []byte, fn func(ts int64, si int, vals []byte) error) error {
	d := decoder{b: rec[1:]}
	ts := d.varint()
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		si := d.uvarint()
		if d.err != nil || si >= uint64(len(s.series)) {
			return errors.New("store: corrupt spool: unknown series")
		}
		vals := d.bytes(8 * s.series[si].nvals)
		if d.err != nil {
			break
		}
		if err := fn(ts, int(si), vals); err != nil {
			return err
		}
	}
	if d.err != nil {
		return fmt.Errorf("store: corrupt spool: %w", d.err)
	}
	return nil
}

func (s *Store) exportFamily(w io.Writer, format Format, fam *family, scratch scratch, offsets []int64, r *bufio.Reader) error {
	first := true
	var out bytes.Buffer
	var tsBuf []byte
	for _, si := range fam.series {
		se := s.series[si]
		r.Reset(io.NewSectionReader(scratch, offsets[si], int64(se.points)*pointSize(se)))
		point := make([]byte, pointSize(se))
		for left := se.points; left > 0; {
			n := min(left, chunkPoints)
			left -= n
			mf := &dto.MetricFamily{Name: ptr(fam.name), Help: ptr(fam.help), Type: fam.typ.Enum()}
			for range n {
				if _, err := io.ReadFull(r, point); err != nil {
					return fmt.Errorf("store: read scratch file: %w", err)
				}
				mf.Metric = append(mf.Metric, decodePoint(fam.typ, se, point))
			}
			out.Reset()
			var err error
			if format == OpenMetrics {
				_, err = expfmt.MetricFamilyToOpenMetrics(&out, mf)
			} else {
				_, err = expfmt.MetricFamilyToText(&out, mf)
			}
			if err != nil {
				return fmt.Errorf("store: encode %s: %w", fam.name, err)
			}
			b := out.Bytes()
			if !first {
				b = dropComments(b)
			}
			first = false
			if format == OpenMetrics {
				if b, err = plainTimestamps(tsBuf[:0], b); err != nil {
					return fmt.Errorf("store: encode %s: %w", fam.name, err)
				}
				tsBuf = b
			}
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("store: write metrics file: %w", err)
			}
		}
	}
	return nil
}

// plainTimestamps appends text to dst with every sample line's timestamp
// rewritten from expfmt's exponent notation (1.795619801704e+09) to a plain
// decimal (1795619801.704): some readers (Python's prometheus_client 0.16)
// read the exponent form as 1 s and a fraction. The timestamp is the last
// field of a sample line; expfmt wrote it as ms/1000 in shortest form, so
// rounding it times 1000 gives back the exact millisecond.
func plainTimestamps(dst, text []byte) ([]byte, error) {
	for len(text) > 0 {
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line = text[:i]
			text = text[i+1:]
		} else {
			text = nil
		}
		sp := bytes.LastIndexByte(line, ' ')
		if len(line) == 0 || line[0] == '#' || sp < 0 {
			dst = append(append(dst, line...), '\n')
			continue
		}
		sec, err := strconv.ParseFloat(string(line[sp+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("timestamp of %q: %w", line, err)
		}
		dst = append(dst, line[:sp+1]...)
		dst = AppendTimestamp(dst, int64(math.Round(sec*1000)))
		dst = append(dst, '\n')
	}
	return dst, nil
}

// AppendTimestamp appends ms as OpenMetrics seconds in plain decimal with
// only the digits needed: 1795619801.704, 1795619801.7, 1795619801,
// -0.005, -1.5.
func AppendTimestamp(dst []byte, ms int64) []byte {
	u := uint64(ms) // two's complement: right for math.MinInt64 too
	if ms < 0 {
		dst = append(dst, '-')
		u = -u
	}
	dst = strconv.AppendUint(dst, u/1000, 10)
	frac := u % 1000
	if frac == 0 {
		return dst
	}
	digits := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	n := 3
	for digits[n-1] == '0' {
		n--
	}
	return append(append(dst, '.'), digits[:n]...)
}

// dropComments removes the leading # HELP / # TYPE lines of a family's
// continuation chunk: a family's header must appear once.
func dropComments(b []byte) []byte {
	for len(b) > 0 && b[0] == '#' {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil
		}
		b = b[i+1:]
	}
	return b
}

func decodePoint(t dto.MetricType, se *series, p []byte) *dto.Metric {
	ts := int64(binary.LittleEndian.Uint64(p))
	val := func(i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(p[8+8*i:])) }
	m := &dto.Metric{Label: se.labels, TimestampMs: &ts}
	switch t {
	case dto.MetricType_COUNTER:
		m.Counter = &dto.Counter{Value: ptr(val(0))}
	case dto.MetricType_GAUGE:
		m.Gauge = &dto.Gauge{Value: ptr(val(0))}
	case dto.MetricType_UNTYPED:
		m.Untyped = &dto.Untyped{Value: ptr(val(0))}
	case dto.MetricType_HISTOGRAM:
		h := &dto.Histogram{SampleCount: ptr(uint64(val(0))), SampleSum: ptr(val(1))}
		for i, b := range se.bounds {
			h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: ptr(b), CumulativeCount: ptr(uint64(val(2 + i)))})
		}
		m.Histogram = h
	}
	return m
}

// decoder reads the fields of one record.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errors.New("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = errors.New("short record")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes(int(d.uvarint()))) }

func (d *decoder) float() float64 {
	b := d.bytes(8)
	if b == nil {
		return 0
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(b))
}

func readMagic(r *bufio.Reader) error {
	magic := make([]byte, len(spoolMagic))
	if _, err := io.ReadFull(r, magic); err != nil || (string(magic) != spoolMagic && string(magic) != spoolMagicV1) {
		return errors.New("store: not a statexec spool")
	}
	return nil
}
