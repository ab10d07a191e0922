package probe

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

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

// TestKeptFilesFollowProcesses: a process's files are kept open between
// reads, a read after it was reaped fails (the descriptor names the old
// process, never a new one with its pid), and sweep and closeAll close
// what is kept.
func TestKeptFilesFollowProcesses(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	var r fileReader
	f := procFile{pid: pid, name: "stat"}
	first, err := r.readKept(f)
	if err != nil || !bytes.HasPrefix(first, []byte(strconv.Itoa(pid)+" (sleep)")) {
		t.Fatalf("read %q, %v", first, err)
	}
	k := r.kept[f]
	if k == nil {
		t.Fatal("not kept")
	}
	if _, err := r.readKept(f); err != nil || r.kept[f] != k {
		t.Fatalf("second read: %v, or reopened", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if data, err := r.readKept(f); err == nil {
		t.Fatalf("read of a reaped process gave %q", data)
	}
	if r.kept[f] != nil {
		t.Error("the reaped process's descriptor is still kept")
	}
	self := procFile{pid: os.Getpid(), name: "status"}
	if _, err := r.readKept(self); err != nil {
		t.Fatal(err)
	}
	r.sweep() // read in this period: kept
	if r.kept[self] == nil {
		t.Fatal("swept a file read since the last sweep")
	}
	r.sweep() // not read since: closed
	if len(r.kept) != 0 {
		t.Errorf("%d files kept after a sweep with no reads", len(r.kept))
	}
	if _, err := r.readKept(self); err != nil {
		t.Fatal(err)
	}
	r.closeAll()
	if len(r.kept) != 0 {
		t.Errorf("%d files kept after closeAll", len(r.kept))
	}
}
