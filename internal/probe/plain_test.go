package probe

import "testing"

func TestParseIOStat(t *testing.T) {
	for _, c := range []struct {
		in          string
		read, write uint64
	}{
		{"", 0, 0},
		{"8:0 rbytes=4096 wbytes=67108864 rios=1 wios=64 dbytes=0 dios=0\n", 4096, 67108864},
		// Two devices are summed; unknown keys (cost.*, bfq stats) ignored.
		{"8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n" +
			"259:0 rbytes=10 wbytes=20 rios=30 wios=40 dbytes=50 dios=60 cost.vrate=100.00\n", 11, 22},
		{"8:0 rbytes=x wbytes=7\n", 0, 7},
	} {
		r, w := parseIOStat([]byte(c.in))
		if r != c.read || w != c.write {
			t.Errorf("parseIOStat(%q) = %d, %d; want %d, %d", c.in, r, w, c.read, c.write)
		}
	}
}
