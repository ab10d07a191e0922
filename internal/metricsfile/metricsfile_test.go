package metricsfile

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"
)

func TestOMTimestamps(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		err  string
	}{
		{"1704067200.123", 1704067200123, ""},
		{"1.704067200123e+09", 1704067200123, ""},
		{"1795619801.7", 1795619801700, ""},
		{"1795619801", 1795619801000, ""},
		{"-5.25", -5250, ""},
		{"-0.001", -1, ""},
		{"1e3", 1000000, ""},
		{".5", 500, ""},
		{"0", 0, ""},
		{"0e-999999", 0, ""},
		{"1704067200.1234", 0, "sub-millisecond"},
		{"1e-999999", 0, "sub-millisecond"},
		{"1704067200123", 0, "too big"},
		{"1e11", 0, "too big"},
		{"0x10", 0, "invalid timestamp"},
		{"inf", 0, "invalid timestamp"},
		{"1_000", 0, "invalid timestamp"},
		{"1.7040672001230000000000001e+09", 0, "sub-millisecond"},
		{"1.70406720012300000000000e+09", 1704067200123, ""}, // slow path, exact
	} {
		got, err := parseOMTimestamp(c.in)
		switch {
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%q: %d, %v; want %d", c.in, got, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: %d, %v; want an error about %q", c.in, got, err, c.err)
		}
	}
	// Every millisecond value reads back exactly in both spellings.
	rng := rand.New(rand.NewSource(1))
	for range 20000 {
		ms := rng.Int63n(2e12) - 1e12
		sign, abs := "", ms
		if ms < 0 {
			sign, abs = "-", -ms
		}
		plain := fmt.Sprintf("%s%d.%03d", sign, abs/1000, abs%1000)
		exp := fmt.Sprintf("%.12e", float64(ms)/1000)
		for _, s := range []string{plain, exp} {
			if got, err := parseOMTimestamp(s); err != nil || got != ms {
				t.Fatalf("%q: %d, %v; want %d", s, got, err, ms)
			}
		}
	}
}

func TestParseGroupsSeriesAndKeepsFileOrder(t *testing.T) {
	f, err := Parse([]byte(`# HELP a A.
# TYPE a gauge
a{x="1"} 1 10
a{x="2"} 2 10
a{x="1"} 3 11
a{ x="2"} 4 11
# EOF
`))
	if err == nil {
		t.Fatalf("space before a label name accepted: %+v", f)
	}
	f, err = Parse([]byte("# HELP a A.\n# TYPE a gauge\na{x=\"1\",y=\"z\"} 1 10\na{x=\"2\"} 2 10\na{y=\"z\",x=\"1\"} 3 11\n# EOF\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Two spellings of one label set are one series.
	if len(f.Series) != 2 || len(f.Series[0].Points) != 2 || f.Series[0].Points[1] != (Point{11000, 3}) {
		t.Fatalf("series %+v", f.Series)
	}
	want := []SampleRef{{0, 0}, {1, 0}, {0, 1}}
	for i, r := range f.Order {
		if r != want[i] {
			t.Fatalf("order %v, want %v", f.Order, want)
		}
	}
	// ...so the same instant twice under two spellings is caught.
	_, err = Parse([]byte("# HELP a A.\n# TYPE a gauge\na{x=\"1\",y=\"z\"} 1 10\na{y=\"z\",x=\"1\"} 3 10\n# EOF\n"))
	if err == nil || !strings.Contains(err.Error(), "line 4") || !strings.Contains(err.Error(), "strictly increasing") {
		t.Fatalf("repeated instant: %v", err)
	}
}
