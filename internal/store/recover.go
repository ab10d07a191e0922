package store

import (
	"bufio"
	"fmt"
	"io"
	"os"

	dto "github.com/prometheus/client_model/go"
)

// Recovered describes what Open found in a spool.
type Recovered struct {
	Ticks  int
	Points int
	// Torn is true when the spool ended in an incomplete record (the
	// writer was killed mid-write); that record is ignored.
	Torn bool
}

// Open reads an existing spool (of an interrupted run) so that it can be
// exported. The returned store is read-only.
func Open(path string) (*Store, Recovered, error) {
	var rec Recovered
	f, err := os.Open(path)
	if err != nil {
		return nil, rec, fmt.Errorf("store: open spool: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	if err := readMagic(r); err != nil {
		return nil, rec, fmt.Errorf("%w: %s", err, path)
	}
	s := newStore(path)
	rr := &recordReader{r: r}
	for {
		b, err := rr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rec.Torn = true
			break
		}
		if err := s.replay(b); err != nil {
			// A record that passed its checksum but does not decode is
			// corruption, not a torn tail: stop here too, keep the rest.
			rec.Torn = true
			break
		}
	}
	rec.Ticks = s.ticks
	rec.Points = s.Points()
	return s, rec, nil
}

// replay applies one spool record to the in-memory index.
func (s *Store) replay(b []byte) error {
	d := decoder{b: b[1:]}
	switch b[0] {
	case recFamily:
		name, help := d.string(), d.string()
		typ := dto.MetricType(d.uvarint())
		if d.err != nil {
			return d.err
		}
		s.famIndex[name] = len(s.families)
		s.families = append(s.families, &family{name: name, help: help, typ: typ})
	case recSeries:
		fi := d.uvarint()
		n := d.uvarint()
		if d.err != nil || fi >= uint64(len(s.families)) || n > 1<<16 {
			return fmt.Errorf("bad series record")
		}
		se := &series{family: int(fi), nvals: 1}
		for range n {
			se.labels = append(se.labels, &dto.LabelPair{Name: ptr(d.string()), Value: ptr(d.string())})
		}
		nb := d.uvarint()
		if nb > 1<<16 {
			return fmt.Errorf("bad series record")
		}
		for range nb {
			se.bounds = append(se.bounds, d.float())
		}
		if d.err != nil {
			return d.err
		}
		if s.families[fi].typ == dto.MetricType_HISTOGRAM {
			se.nvals = 2 + len(se.bounds)
		}
		s.addSeries(seriesKey(int(fi), se.labels), se)
	case recTick:
		counted := map[int]int{}
		if err := s.forPoints(b, func(_ int64, si int, _ []byte) error {
			counted[si]++
			return nil
		}); err != nil {
			return err
		}
		for si, n := range counted {
			s.series[si].points += n
		}
		s.ticks++
	case recShift:
		delta := d.varint()
		ticks := d.uvarint()
		if d.err != nil || ticks > uint64(s.ticks) {
			return fmt.Errorf("bad shift record")
		}
		return s.setShift(delta, int(ticks))
	default:
		return fmt.Errorf("unknown record %q", b[0])
	}
	return nil
}
