package probe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// The tcp group's proofs run the command in a network namespace of its
// own, joined to a second one (the far end, outside the run) by a veth
// pair: the command is the only TCP user of its namespace, so that
// namespace's counters (nstat) are the truth.

const (
	tcpClientIP = "10.77.0.1"
	tcpServerIP = "10.77.0.2"
)

// tcpHelpers are the child's behaviours, run by runHelper.
var tcpHelpers = map[string]func() error{
	"tcp-refused": tcpRefusedHelper,
	"tcp-timeout": tcpTimeoutHelper,
	"tcp-rtt":     tcpRTTHelper,
	"tcp-hold":    tcpHoldHelper,
	"tcp-serve":   tcpServeHelper,
}

// tcpServeHelper listens on HELPER_ADDR, writes "listening" to
// HELPER_FILE, accepts one connection and reads it to its end.
func tcpServeHelper() error {
	ln, err := net.Listen("tcp", os.Getenv("HELPER_ADDR"))
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := os.WriteFile(os.Getenv("HELPER_FILE"), []byte("listening"), 0o644); err != nil {
		return err
	}
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.Copy(io.Discard, c)
	return err
}

// tcpRefusedHelper connects HELPER_N times to HELPER_ADDR, where nothing
// listens: every connect must be refused.
func tcpRefusedHelper() error {
	for i := 0; i < envInt("HELPER_N", 5); i++ {
		c, err := net.DialTimeout("tcp", os.Getenv("HELPER_ADDR"), 10*time.Second)
		if err == nil {
			c.Close()
			return errors.New("connect succeeded")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("connect: %w (want ECONNREFUSED)", err)
		}
	}
	return nil
}

// tcpTimeoutHelper connects once without a timeout of its own: the
// kernel gives up (tcp_syn_retries).
func tcpTimeoutHelper() error {
	var d net.Dialer
	c, err := d.Dial("tcp", os.Getenv("HELPER_ADDR"))
	if err == nil {
		c.Close()
		return errors.New("connect succeeded")
	}
	if !errors.Is(err, syscall.ETIMEDOUT) {
		return fmt.Errorf("connect: %w (want ETIMEDOUT)", err)
	}
	return nil
}

// tcpHoldHelper connects to HELPER_ADDR, writes "connected" to
// HELPER_FILE and holds the connection until the peer closes it.
func tcpHoldHelper() error {
	c, err := net.Dial("tcp", os.Getenv("HELPER_ADDR"))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := os.WriteFile(os.Getenv("HELPER_FILE"), []byte("connected"), 0o644); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

// tcpRTTReport is what tcp-rtt writes to HELPER_FILE.
type tcpRTTReport struct {
	ConnectNs []int64  // each blocking connect(2) as the command timed it
	RTTUs     []uint32 // the socket's tcpi_rtt after each round
}

// tcpMsg is one request of tcp-rtt: 33 ms at the test's 10 Mbit/s, so
// that the smoothed RTT settles near 24 ms, mid-bucket [16.8, 33.5) ms.
const tcpMsg = 40 << 10

// rawDial connects with a blocking connect(2), timed around the call.
func rawDial(ip string, port int) (net.Conn, int64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	sa := &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(ip).As4()}
	start := time.Now()
	err = unix.Connect(fd, sa)
	d := time.Since(start).Nanoseconds()
	if err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close()
	c, err := net.FileConn(f)
	return c, d, err
}

// tcpRTTHelper sends requests of tcpMsg bytes to HELPER_IP:7000 and
// waits for a 1-byte answer, for HELPER_MS, through the test's rate limit:
// each round has the same queueing delays, so the smoothed RTT is steady.
// It reads its socket's TCP_INFO after each round, and connects a second
// time right after a request was queued (a slow connect: its SYN waits
// behind the request).
func tcpRTTHelper() error {
	ip := os.Getenv("HELPER_IP")
	var rep tcpRTTReport
	c, d, err := rawDial(ip, 7000)
	if err != nil {
		return err
	}
	defer c.Close()
	rep.ConnectNs = append(rep.ConnectNs, d)
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	total := time.Duration(envInt("HELPER_MS", 3000)) * time.Millisecond
	start := time.Now()
	buf := make([]byte, tcpMsg)
	var c2 net.Conn
	for time.Since(start) < total {
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if c2 == nil && time.Since(start) > total/2 {
			// 8 ms after the request was queued, ~25 ms of it are
			// left: the SYN waits mid-bucket [16.8, 33.5) ms.
			time.Sleep(8 * time.Millisecond)
			if c2, d, err = rawDial(ip, 7000); err != nil {
				return err
			}
			defer c2.Close()
			rep.ConnectNs = append(rep.ConnectNs, d)
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return err
		}
		var info *unix.TCPInfo
		var ierr error
		if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
			return err
		}
		if ierr != nil {
			return ierr
		}
		rep.RTTUs = append(rep.RTTUs, info.Rtt)
	}
	if c2 == nil {
		return errors.New("no second connect")
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return os.WriteFile(os.Getenv("HELPER_FILE"), data, 0o644)
}

// tcpNet is two network namespaces joined by a veth pair: the command's
// (client) and the far end (server).
type tcpNet struct {
	client, server string // namespace names
}

var tcpNetSeq atomic.Int32

func newTCPNet(t *testing.T) *tcpNet {
	t.Helper()
	requireRoot(t)
	for _, tool := range []string{"ip", "nsenter", "nft", "nstat", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/install-deps.sh): %v", tool, err)
		}
	}
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, tcpNetSeq.Add(1))
	n := &tcpNet{client: "tcpc" + id, server: "tcps" + id}
	mustRun(t, "ip", "netns", "add", n.client)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.client).Run() })
	mustRun(t, "ip", "netns", "add", n.server)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.server).Run() })
	mustRun(t, "ip", "link", "add", n.client, "netns", n.client, "type", "veth", "peer", "name", n.server, "netns", n.server)
	for _, side := range []struct{ ns, ip string }{{n.client, tcpClientIP}, {n.server, tcpServerIP}} {
		n.run(t, side.ns, "ip", "addr", "add", side.ip+"/24", "dev", side.ns)
		n.run(t, side.ns, "ip", "link", "set", side.ns, "up")
		n.run(t, side.ns, "ip", "link", "set", "lo", "up")
	}
	return n
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run runs a command in namespace ns (nsenter --net: `ip netns exec`
// remounts /sys and hides the cgroup2 mount).
func (n *tcpNet) run(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return mustRun(t, "nsenter", append([]string{"--net=/run/netns/" + ns}, args...)...)
}

// nft loads a ruleset into namespace ns.
func (n *tcpNet) nft(t *testing.T, ns, ruleset string) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", ns, err, out)
	}
}

// nstat reads one counter of namespace ns (absolute value).
func (n *tcpNet) nstat(t *testing.T, ns, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(n.run(t, ns, "nstat", "-az", name), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("nstat %s: %q", name, line)
			}
			return v
		}
	}
	t.Fatalf("nstat: no %s", name)
	return 0
}

// inNetns runs f on a thread that joined namespace ns; sockets f makes
// stay in ns. The thread is never handed back to other goroutines.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends with the goroutine
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// startNS starts the test binary as helper in namespace ns, inside s's
// cgroup (s nil: outside the run).
func startNS(t *testing.T, s *Session, ns string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if s != nil {
		s.PrepareCommand(cmd.SysProcAttr)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	if s != nil {
		s.CommandStarted(cmd.Process.Pid)
	}
	return cmd
}

func waitNS(t *testing.T, s *Session, cmd *exec.Cmd) {
	t.Helper()
	err := cmd.Wait()
	if s != nil {
		s.CommandEnded()
	}
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
}

// startTCPGroup starts an eBPF session whose tcp group must be on.
func startTCPGroup(t *testing.T) *Session {
	t.Helper()
	s := startEBPF(t)
	if s.group("tcp") == nil {
		t.Fatal("tcp group did not load")
	}
	return s
}

// histogram gathers one histogram family of s.
func histogram(t *testing.T, s *Session, name string) *dto.Histogram {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no histogram %s", name)
	return nil
}

// bucketOf returns the upper bound of the histogram bucket holding v.
func bucketOf(h *dto.Histogram, v float64) float64 {
	for _, b := range h.GetBucket() {
		if v <= b.GetUpperBound() {
			return b.GetUpperBound()
		}
	}
	return math.Inf(1)
}

// medianBucket returns the upper bound of the bucket holding the median.
func medianBucket(h *dto.Histogram) float64 {
	half := float64(h.GetSampleCount()) / 2
	for _, b := range h.GetBucket() {
		if float64(b.GetCumulativeCount()) >= half {
			return b.GetUpperBound()
		}
	}
	return math.Inf(1)
}

func TestTCPConnectFailures(t *testing.T) {
	n := newTCPNet(t)
	s := startTCPGroup(t)
	addr := net.JoinHostPort(tcpServerIP, "9")

	// Noise: the same refused connects from this process (outside the
	// run), in the command's namespace, at the same time.
	var noiseErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		noiseErr = inNetns(n.client, func() error {
			for i := 0; i < 5; i++ {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					c.Close()
					return errors.New("noise connect succeeded")
				}
			}
			return nil
		})
	})
	cmd := startNS(t, s, n.client, helperEnv+"=tcp-refused", "HELPER_ADDR="+addr, "HELPER_N=5")
	waitNS(t, s, cmd)
	wg.Wait()
	if noiseErr != nil {
		t.Fatal(noiseErr)
	}
	m := metrics(t, s)
	check := func(key string, want float64) {
		t.Helper()
		if got := m[key]; got != want {
			t.Errorf("%s = %v, want %v", key, got, want)
		}
	}
	check("statexec_process_tcp_connections_failed_total{error=ECONNREFUSED}", 5)
	check("statexec_process_tcp_connections_failed_total{error=other}", 0)
	check("statexec_process_tcp_resets_total{direction=received}", 5)
	check("statexec_process_tcp_resets_total{direction=sent}", 0)
	check("statexec_process_tcp_connections_opened_total{direction=active}", 0)
	check("statexec_process_tcp_connections{state=syn_sent}", 0)
	sum := s.Summary()
	want := "5 ECONNREFUSED, last to " + addr
	if !strings.Contains(tcpSummaryLine(sum.Lines), want) {
		t.Errorf("summary lines %q lack %q", sum.Lines, want)
	}

	// A connect whose SYNs are dropped, with one SYN retry: the kernel
	// itself gives up after ~3 s.
	n.run(t, n.client, "sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1")
	n.nft(t, n.server, `table inet tcpsyn { chain in { type filter hook prerouting priority 0; tcp dport 8 drop; }
}`)
	s2 := startTCPGroup(t)
	retrans0 := n.nstat(t, n.client, "TcpRetransSegs")
	timeouts0 := n.nstat(t, n.client, "TcpExtTCPTimeouts")
	cmd = startNS(t, s2, n.client, helperEnv+"=tcp-timeout", "HELPER_ADDR="+net.JoinHostPort(tcpServerIP, "8"))
	waitNS(t, s2, cmd)
	m = metrics(t, s2)
	if got := m["statexec_process_tcp_connections_failed_total{error=ETIMEDOUT}"]; got != 1 {
		t.Errorf("ETIMEDOUT failures = %v, want 1 (%v)", got, m)
	}
	// The SYN retransmits and their timeouts, as the namespace counted.
	if got, want := m["statexec_process_tcp_retransmitted_segments_total"], n.nstat(t, n.client, "TcpRetransSegs")-retrans0; got != want || got == 0 {
		t.Errorf("retransmitted segments = %v, namespace TcpRetransSegs delta %v", got, want)
	}
	if got, want := m["statexec_process_tcp_retransmit_timeouts_total"], n.nstat(t, n.client, "TcpExtTCPTimeouts")-timeouts0; got != want || got == 0 {
		t.Errorf("retransmit timeouts = %v, namespace TcpExtTCPTimeouts delta %v", got, want)
	}
	t.Logf("summary: %q", s2.Summary().Lines)
}

// iperfServer starts iperf3 -s in namespace ns (outside the run) and
// waits until it listens.
func (n *tcpNet) iperfServer(t *testing.T, ns string, port int) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "iperf3", "-s", "-p", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatalf("iperf3 -s: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for i := 0; ; i++ {
		if strings.Contains(n.run(t, ns, "ss", "-Hltn"), ":"+strconv.Itoa(port)) {
			return
		}
		if i == 200 {
			t.Fatal("iperf3 server not listening after 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTCPRetransmitsUnderLoss(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skipf("needs iperf3: %v", err)
	}
	n := newTCPNet(t)
	// Noise: a second pair of namespaces with the same loss, an iperf3
	// client there outside the run, concurrently.
	noise := newTCPNet(t)
	loss := `table inet tcploss { chain in { type filter hook prerouting priority 0; meta l4proto tcp numgen random mod 100 < 2 drop; }
}`
	for _, nn := range []*tcpNet{n, noise} {
		nn.nft(t, nn.server, loss)
		nn.iperfServer(t, nn.server, 5201)
	}
	s := startTCPGroup(t)
	before := n.nstat(t, n.client, "TcpRetransSegs")

	noiseCmd := exec.Command("nsenter", "--net=/run/netns/"+noise.client, "iperf3", "-c", tcpServerIP, "-t", "3")
	if err := noiseCmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The bare command: iperf3 itself is the run's process.
	cmd := exec.Command("nsenter", "--net=/run/netns/"+n.client, "iperf3", "-c", tcpServerIP, "-t", "3")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	s.PrepareCommand(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.CommandStarted(cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var series []float64
	const key = "statexec_process_tcp_retransmitted_segments_total"
	for running := true; running; {
		select {
		case err := <-done:
			s.CommandEnded()
			if err != nil {
				t.Fatalf("iperf3: %v", err)
			}
			running = false
		case <-time.After(100 * time.Millisecond):
		}
		series = append(series, metrics(t, s)[key])
	}
	if err := noiseCmd.Wait(); err != nil {
		t.Fatalf("noise iperf3: %v", err)
	}
	truth := n.nstat(t, n.client, "TcpRetransSegs") - before
	noiseTruth := noise.nstat(t, noise.client, "TcpRetransSegs")
	for i := 1; i < len(series); i++ {
		if series[i] < series[i-1] {
			t.Errorf("retransmits went backwards at sample %d: %v", i, series)
		}
	}
	got := series[len(series)-1]
	t.Logf("retransmitted segments %v, namespace TcpRetransSegs %v (noise namespace: %v), %d samples", got, truth, noiseTruth, len(series))
	if truth < 20 {
		t.Fatalf("only %v retransmits under 2%% loss: the loss rule did not work", truth)
	}
	if !within(got, truth, 0.02) {
		t.Errorf("retransmitted segments = %v, namespace TcpRetransSegs delta = %v: off by more than 2%%", got, truth)
	}
	m := metrics(t, s)
	if m["statexec_process_tcp_connections_opened_total{direction=active}"] != 2 {
		// iperf3: a control connection and one data connection.
		t.Errorf("opened active = %v, want 2", m["statexec_process_tcp_connections_opened_total{direction=active}"])
	}
	t.Logf("summary: %q", s.Summary().Lines)
}

func TestTCPRTTAndConnectTime(t *testing.T) {
	n := newTCPNet(t)
	// A rate limit on the command's egress: RTT is the queueing delay of
	// its requests (0-33 ms per segment).
	n.run(t, n.client, "tc", "qdisc", "add", "dev", n.client, "root", "tbf", "rate", "10mbit", "burst", "16kb", "latency", "200ms")
	var ln net.Listener
	if err := inNetns(n.server, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(tcpServerIP, "7000"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Answer each request of tcpMsg bytes with one byte.
			go func() {
				defer c.Close()
				buf := make([]byte, tcpMsg)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf[:1]); err != nil {
						return
					}
				}
			}()
		}
	}()
	s := startTCPGroup(t)
	file := t.TempDir() + "/rtt.json"
	cmd := startNS(t, s, n.client, helperEnv+"=tcp-rtt", "HELPER_IP="+tcpServerIP, "HELPER_MS=3000", "HELPER_FILE="+file)
	waitNS(t, s, cmd)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rep tcpRTTReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}

	rtt := histogram(t, s, "statexec_process_tcp_rtt_seconds")
	samples := append([]uint32(nil), rep.RTTUs...)
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	own := float64(samples[len(samples)/2]) / 1e6
	t.Logf("rtt: %d samples, mean %.3f ms, median bucket le %.4g s; the socket's median tcpi_rtt %.3f ms (min %.3f, max %.3f)",
		rtt.GetSampleCount(), 1e3*rtt.GetSampleSum()/float64(rtt.GetSampleCount()), medianBucket(rtt), own*1e3, float64(samples[0])/1e3, float64(samples[len(samples)-1])/1e3)
	if own < 0.005 {
		t.Fatalf("tcpi_rtt median %.3f ms: the rate limit made no queue", own*1e3)
	}
	if got, want := medianBucket(rtt), bucketOf(rtt, own); got != want {
		t.Errorf("rtt median bucket le %g s, the socket's tcpi_rtt %.4f s is in le %g", got, own, want)
	}

	conn := histogram(t, s, "statexec_process_tcp_connect_duration_seconds")
	var ownSum float64
	for _, ns := range rep.ConnectNs {
		ownSum += float64(ns) / 1e9
	}
	t.Logf("connect: %d in histogram, sum %.6f s; the command timed %v ns", conn.GetSampleCount(), conn.GetSampleSum(), rep.ConnectNs)
	if conn.GetSampleCount() != uint64(len(rep.ConnectNs)) {
		t.Fatalf("connect count %d, the command made %d", conn.GetSampleCount(), len(rep.ConnectNs))
	}
	// The slow connect (its SYN behind most of a request): the kernel's
	// time is inside the command's (socket creation and the wakeup after
	// the handshake are around it; on a busy machine the wakeup alone
	// took 5 ms), so it is in the bucket of the command's own timing or
	// in the one below: within a bucket.
	slow := float64(rep.ConnectNs[1]) / 1e9
	var twoBelow, at uint64
	var prev []uint64
	for _, b := range conn.GetBucket() {
		if b.GetUpperBound() == bucketOf(conn, slow) {
			at = b.GetCumulativeCount()
			if len(prev) >= 2 {
				twoBelow = prev[len(prev)-2]
			}
		}
		prev = append(prev, b.GetCumulativeCount())
	}
	if at-twoBelow < 1 {
		t.Errorf("no connect within a bucket of the command's slow connect (%.4f s): %v", slow, conn.GetBucket())
	}
	if got := conn.GetSampleSum(); got > ownSum || got < ownSum/2 {
		t.Errorf("connect duration sum %.6f s, the command's own %.6f s: not within a factor of 2 below", got, ownSum)
	}
}

// TestTCPConnectionsGauge: an open connection of the command is in the
// established gauge while it is open, in both backends (plain: sock_diag
// in the command's namespace), and leaves it when it closes.
func TestTCPConnectionsGauge(t *testing.T) {
	for _, mode := range []Mode{ModeEBPF, ModePlain} {
		t.Run(string(mode), func(t *testing.T) {
			n := newTCPNet(t)
			var ln net.Listener
			if err := inNetns(n.server, func() (err error) {
				ln, err = net.Listen("tcp", net.JoinHostPort(tcpServerIP, "7001"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 2)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					accepted <- c
				}
			}()
			// Noise: a connection of this process (outside the run) in
			// the command's namespace, open throughout.
			var noise net.Conn
			if err := inNetns(n.client, func() (err error) {
				noise, err = net.Dial("tcp", net.JoinHostPort(tcpServerIP, "7001"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer noise.Close()
			noisePeer := <-accepted
			defer noisePeer.Close()
			s, err := Start(Options{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			if mode == ModeEBPF && s.group("tcp") == nil {
				t.Fatal("tcp group did not load")
			}
			if mode == ModePlain && s.tcpDiag == nil {
				t.Fatal("no sock_diag view in plain mode")
			}
			file := t.TempDir() + "/connected"
			cmd := startNS(t, s, n.client, helperEnv+"=tcp-hold", "HELPER_ADDR="+net.JoinHostPort(tcpServerIP, "7001"), "HELPER_FILE="+file)
			waitFile(t, file)
			m := metrics(t, s)
			for _, name := range tcpStates {
				want := 0.0
				if name == "established" {
					want = 1
				}
				if name == "" {
					continue
				}
				if got := m["statexec_process_tcp_connections{state="+name+"}"]; got != want {
					t.Errorf("connections{state=%s} = %v with one connection open, want %v", name, got, want)
				}
			}
			if mode == ModePlain {
				if m["statexec_process_tcp_live_rtt_seconds{stat=max}"] <= 0 {
					t.Errorf("no RTT of the live socket: %v", m)
				}
			}
			c := <-accepted
			c.Close()
			waitNS(t, s, cmd)
			// The client's close ends in LAST_ACK until the server's ACK
			// arrives: wait (bounded) for every state to be empty.
			var live float64
			for i := 0; i < 200; i++ {
				m = metrics(t, s)
				live = 0
				for _, name := range tcpStates {
					if name != "" {
						live += m["statexec_process_tcp_connections{state="+name+"}"]
					}
				}
				if live == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if live != 0 {
				t.Errorf("%v sockets still counted after the command closed its connection and exited: %v", live, m)
			}
		})
	}
}

// TestTCPRefusedIPv6: refused connects over IPv6 loopback are counted and
// the summary names the IPv6 peer.
func TestTCPRefusedIPv6(t *testing.T) {
	s := startTCPGroup(t)
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close() // now a closed port
	runChild(t, s, helperEnv+"=tcp-refused", "HELPER_ADDR="+addr, "HELPER_N=3")
	m := metrics(t, s)
	if got := m["statexec_process_tcp_connections_failed_total{error=ECONNREFUSED}"]; got != 3 {
		t.Errorf("ECONNREFUSED failures = %v, want 3", got)
	}
	if got := m["statexec_process_tcp_resets_total{direction=received}"]; got != 3 {
		t.Errorf("resets received = %v, want 3", got)
	}
	lines := s.Summary().Lines
	if !strings.Contains(tcpSummaryLine(lines), "last to "+addr+")") {
		t.Errorf("summary %q does not name the peer %s", lines, addr)
	}
}

// waitFile waits (bounded) until the helper created path.
func waitFile(t *testing.T, path string) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if i == 1000 {
			t.Fatalf("%s not created in 10 s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTCPPassive: a command that listens is in state="listen" while it
// does (both backends); the connection it accepts is opened passive
// (eBPF) and established while open; nothing is left once it exited.
func TestTCPPassive(t *testing.T) {
	for _, mode := range []Mode{ModeEBPF, ModePlain} {
		t.Run(string(mode), func(t *testing.T) {
			n := newTCPNet(t)
			s, err := Start(Options{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			if mode == ModeEBPF && s.group("tcp") == nil {
				t.Fatal("tcp group did not load")
			}
			file := t.TempDir() + "/listening"
			addr := net.JoinHostPort(tcpClientIP, "7002")
			cmd := startNS(t, s, n.client, helperEnv+"=tcp-serve", "HELPER_ADDR="+addr, "HELPER_FILE="+file)
			waitFile(t, file)
			state := func(m map[string]float64, name string) float64 {
				return m["statexec_process_tcp_connections{state="+name+"}"]
			}
			m := metrics(t, s)
			if state(m, "listen") != 1 || state(m, "established") != 0 {
				t.Errorf("listening: listen %v, established %v; want 1, 0", state(m, "listen"), state(m, "established"))
			}
			// The far end (outside the run) connects.
			var c net.Conn
			if err := inNetns(n.server, func() (err error) {
				c, err = net.Dial("tcp", addr)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			// Established on the command's side once accept() returned
			// a socket; the kernel makes it before accept, so poll.
			for i := 0; i < 500 && state(m, "established") != 1; i++ {
				time.Sleep(10 * time.Millisecond)
				m = metrics(t, s)
			}
			if state(m, "established") != 1 {
				t.Errorf("accepted connection not in established: %v", m)
			}
			c.Close()
			waitNS(t, s, cmd)
			m = metrics(t, s)
			if mode == ModeEBPF {
				if got := m["statexec_process_tcp_connections_opened_total{direction=passive}"]; got != 1 {
					t.Errorf("opened passive = %v, want 1", got)
				}
				if got := m["statexec_process_tcp_connections_opened_total{direction=active}"]; got != 0 {
					t.Errorf("opened active = %v, want 0", got)
				}
			}
			if state(m, "listen") != 0 {
				t.Errorf("listen = %v after the command exited", state(m, "listen"))
			}
		})
	}
}

// BenchmarkTCPDiagSample: what the plain TCP view adds to each sample,
// with a tree (sh and a sleep in statexec's own namespace) that holds no
// socket (the dump is skipped) and one that holds a TCP connection (one
// netlink socket and two filtered dumps, each a walk of the kernel's TCP
// hash table).
func BenchmarkTCPDiagSample(b *testing.B) {
	requireRoot(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
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
	for _, tc := range []struct{ name, script string }{
		{"no-socket", "sleep 60 & wait"},
		{"one-connection", "exec 3<>/dev/tcp/127.0.0.1/" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "; sleep 60 & wait"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Start(Options{Mode: ModePlain})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if s.tcpDiag == nil {
				b.Fatal("no sock_diag view")
			}
			cmd := exec.Command("bash", "-c", tc.script)
			cmd.SysProcAttr = &syscall.SysProcAttr{}
			s.PrepareCommand(cmd.SysProcAttr)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			s.CommandStarted(cmd.Process.Pid)
			cpu := func() time.Duration {
				var ru unix.Rusage
				_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
				return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			}
			start := cpu()
			for b.Loop() {
				// The cgroup's processes, as the plain sampler reads
				// them for it at each sample.
				pids, err := readPids(filepath.Join(s.cg.path, "cgroup.procs"))
				if err := s.tcpDiag.sample(pids, err); err != nil {
					b.Fatal(err)
				}
			}
			// CPU time: the wall time of a busy machine says little.
			b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(s.tcpDiag.last.states[1]), "established")
		})
	}
}

// tcpSummaryLine is the tcp group's summary line among every group's.
func tcpSummaryLine(lines []string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, "tcp: ") {
			return l
		}
	}
	return ""
}
