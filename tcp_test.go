package main

// End-to-end check of the tcp connections gauge through the binary and
// its file, in both backends (plain: sock_diag snapshots).

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/statexec/statexec/internal/testenv"
)

// TestTCPConnectionGaugeInFile: a command that holds one TCP connection
// for a second shows it in state="established" in the samples taken
// meanwhile, and 0 at the end; the listener's side (this process,
// outside the run) is never counted.
func TestTCPConnectionGaugeInFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the run's cgroup")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash (/dev/tcp)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	for _, backend := range []string{"ebpf", "plain"} {
		t.Run(backend, func(t *testing.T) {
			r := statexec(t, "", []string{"SE_PROBES=" + backend, "SE_INTERVAL=100ms"},
				"exec", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+"; sleep 1; exec 3<&-")
			if r.code != 0 {
				t.Fatalf("exit %d\n%s", r.code, r.stderr)
			}
			s := testenv.ParseFile(t, r.file).Series("statexec_process_tcp_connections", map[string]string{"state": "established"})
			if len(s) == 0 {
				t.Fatalf("no statexec_process_tcp_connections{state=established} samples\n%s", r.stderr)
			}
			var open int
			for _, p := range s {
				if p.Value > 1 {
					t.Errorf("established = %v: more than the command's one connection", p.Value)
				}
				if p.Value == 1 {
					open++
				}
			}
			t.Logf("%d of %d samples saw the connection established", open, len(s))
			if open < 3 {
				t.Errorf("only %d samples saw the connection held for 1 s at 100 ms intervals", open)
			}
			if last := s[len(s)-1].Value; last != 0 {
				t.Errorf("established = %v at the end, want 0", last)
			}
		})
	}
}
