package store

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// seedSpool is a real spool: two families, a histogram, three ticks.
func seedSpool(tb testing.TB) []byte {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "seed.spool")
	s, err := Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range 3 {
		s.Append(1704067200000+int64(i)*1000, []*dto.MetricFamily{
			counterFam("bytes_total", float64(i), lp("if", "lo")),
			gaugeFam("temp", map[string]float64{"a": float64(i), "b": -1}),
			histFam(uint64(i), float64(i)/2, 0, uint64(i)),
		})
	}
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzSpool: `statexec recover` reads spools users hand it, so no file may
// make Open or the export panic, and what Open reports is what it keeps.
func FuzzSpool(f *testing.F) {
	seed := seedSpool(f)
	f.Add(seed)
	f.Add(seed[:len(seed)-3])                       // torn tail
	f.Add(seed[:len(spoolMagic)])                   // header only
	f.Add(append(seed[:len(seed):len(seed)], 0x80)) // half a varint
	path := filepath.Join(f.TempDir(), "in.spool")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, rec, err := Open(path)
		if err != nil {
			return
		}
		if rec.Ticks != s.Ticks() || rec.Points != s.Points() {
			t.Fatalf("Open reported %+v, the store holds %d ticks, %d points", rec, s.Ticks(), s.Points())
		}
		// Either format may refuse what it cannot encode (a family of an
		// unknown type); neither may panic.
		s.Export(io.Discard, OpenMetrics)
		s.Export(io.Discard, Prometheus)
	})
}

// TestOpenCorruptLengthCostsLittle: a record length claiming 60 MiB in a
// 70-byte file (found by FuzzSpool, which it slowed to a crawl) must not
// make Open allocate 60 MiB.
func TestOpenCorruptLengthCostsLittle(t *testing.T) {
	data := append([]byte(spoolMagic), binary.AppendUvarint(nil, 60<<20)...)
	data = append(data, 1, 2, 3, 4, 5)
	path := filepath.Join(t.TempDir(), "corrupt.spool")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, rec, err := Open(path)
	runtime.ReadMemStats(&after)
	if err != nil || !rec.Torn || rec.Ticks != 0 {
		t.Fatalf("Open: %v, %+v; want a torn, empty spool", err, rec)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Errorf("Open allocated %d bytes for a %d-byte file", n, len(data))
	}
}
