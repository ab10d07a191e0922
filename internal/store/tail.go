package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"

	dto "github.com/prometheus/client_model/go"
)

// Tail reads a spool while a Store appends to it (remote write follows a
// run this way): it returns the records written completely so far and
// remembers where it stopped. A record still being written (its bytes not
// all in the file yet) is left for the next call. It never touches the
// writer's state, so the run does not wait for it.
type Tail struct {
	s     *Store // index of families and series, from the records read
	f     *os.File
	off   int64  // file offset of buf[0]
	buf   []byte // bytes read from the file, from off
	pos   int    // bytes of buf consumed
	chunk []byte // read buffer, kept between calls
	// ticksRead counts tick records returned: a shift record after
	// them would move samples already handed out.
	ticksRead int
	magic     bool
	// The shift found ahead by FindShift: added to the shiftTicks first
	// ticks, its record skipped when reached.
	shiftMs    int64
	shiftTicks int
	shiftKnown bool
}

// SeriesInfo describes one series of a spool.
type SeriesInfo struct {
	Family string
	Type   dto.MetricType
	Labels []*dto.LabelPair
	Bounds []float64 // histogram bucket upper bounds
}

// OpenTail opens the spool at path for following from its start.
func OpenTail(path string) (*Tail, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("store: open spool: %w", err)
	}
	return &Tail{s: newStore(path), f: f}, nil
}

// Close closes the tail's file.
func (t *Tail) Close() error { return t.f.Close() }

// Series describes series si of a point returned by Next.
func (t *Tail) Series(si int) SeriesInfo {
	se := t.s.series[si]
	fam := t.s.families[se.family]
	return SeriesInfo{Family: fam.name, Type: fam.typ, Labels: se.labels, Bounds: se.bounds}
}

// Next reads the records completed since the last call, calling fn for
// every point of every tick, and returns the number of values (a
// histogram point has 2+len(bounds)) handed out. It stops after the tick
// that brings the count to max or more, so that a caller can bound its
// batches; the rest is returned by the next call. vals is only valid
// during the call.
func (t *Tail) Next(max int, fn func(si int, tsMs int64, vals []float64)) (int, error) {
	if err := t.fill(); err != nil {
		return 0, err
	}
	defer t.compact()
	if !t.magic {
		if len(t.buf) < len(spoolMagic) {
			return 0, nil
		}
		if m := string(t.buf[:len(spoolMagic)]); m != spoolMagic && m != spoolMagicV1 {
			return 0, errors.New("store: not a statexec spool")
		}
		t.consume(len(spoolMagic))
		t.magic = true
	}
	n := 0
	var vals []float64
	for n < max {
		rec, size, err := frame(t.buf[t.pos:])
		if err != nil {
			return n, fmt.Errorf("store: read spool at byte %d: %w", t.off+int64(t.pos), err)
		}
		if rec == nil {
			break // incomplete: the writer is still at it
		}
		switch rec[0] {
		case recTick:
			t.s.ticks++
			t.ticksRead++
			var delta int64
			if t.shiftKnown && t.s.ticks <= t.shiftTicks {
				delta = t.shiftMs
			}
			err = t.s.forPoints(rec, func(ts int64, si int, raw []byte) error {
				ts += delta
				vals = vals[:0]
				for i := 0; i+8 <= len(raw); i += 8 {
					vals = append(vals, math.Float64frombits(binary.LittleEndian.Uint64(raw[i:])))
				}
				fn(si, ts, vals)
				n += len(vals)
				return nil
			})
		case recShift:
			if t.shiftKnown {
				break // applied ahead (FindShift)
			}
			if t.ticksRead > 0 {
				err = errors.New("the time axis was shifted after its samples were read")
			} else {
				err = t.s.replay(rec)
			}
		default:
			err = t.s.replay(rec)
		}
		if err != nil {
			return n, fmt.Errorf("store: read spool at byte %d: %w", t.off+int64(t.pos), err)
		}
		t.consume(size)
	}
	return n, nil
}

// FindShift looks ahead, from where the tail stands to the end of what
// is written, for the record that shifts the time axis (the sync modes
// write it at the sync instant, after the ticks it moves), so that Next
// hands those ticks out with their final timestamps. Call it once the
// shift is written, before Next returns any tick; found is false when
// the spool has none (yet).
func (t *Tail) FindShift() (found bool, err error) {
	if t.ticksRead > 0 {
		return false, errors.New("store: FindShift after ticks were read")
	}
	r := bufio.NewReaderSize(io.NewSectionReader(t.f, t.off+int64(t.pos), math.MaxInt64>>1), 256<<10)
	if !t.magic {
		if err := readMagic(r); err != nil {
			return false, err
		}
	}
	rr := &recordReader{r: r}
	ticks := t.s.ticks
	for {
		rec, err := rr.next()
		if err != nil {
			return false, nil // the end of what is complete: no shift
		}
		switch rec[0] {
		case recTick:
			ticks++
		case recShift:
			d := decoder{b: rec[1:]}
			delta, n := d.varint(), d.uvarint()
			if d.err != nil || n != uint64(ticks) {
				return false, errors.New("store: bad shift record")
			}
			t.shiftMs, t.shiftTicks, t.shiftKnown = delta, ticks, true
			return true, nil
		}
	}
}

// fill appends what the file holds after the buffered bytes.
func (t *Tail) fill() error {
	if t.chunk == nil {
		t.chunk = make([]byte, 64<<10)
	}
	for {
		k, err := t.f.ReadAt(t.chunk, t.off+int64(len(t.buf)))
		t.buf = append(t.buf, t.chunk[:k]...)
		if err == io.EOF || (err == nil && k < len(t.chunk)) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("store: read spool: %w", err)
		}
		if len(t.buf) >= 4<<20 {
			return nil // enough for one call; the rest comes next time
		}
	}
}

func (t *Tail) consume(n int) { t.pos += n }

// compact drops the consumed bytes, keeping an incomplete record.
func (t *Tail) compact() {
	t.off += int64(t.pos)
	t.buf = append(t.buf[:0], t.buf[t.pos:]...)
	t.pos = 0
}

// frame returns the first record of b and the bytes it takes, or a nil
// record when b does not hold all of it yet.
func frame(b []byte) ([]byte, int, error) {
	n, k := binary.Uvarint(b)
	if k == 0 {
		return nil, 0, nil
	}
	if k < 0 || n == 0 || n > maxRecord {
		return nil, 0, errors.New("corrupt record length")
	}
	end := k + 4 + int(n)
	if len(b) < end {
		return nil, 0, nil
	}
	rec := b[k+4 : end]
	if crc32.ChecksumIEEE(rec) != binary.LittleEndian.Uint32(b[k:]) {
		return nil, 0, errors.New("record checksum mismatch")
	}
	return rec, end, nil
}
