//go:build linux

package syncctl

import (
	"context"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// connRTT is the kernel's smoothed round-trip estimate of the request's TCP
// connection (from the handshake on), 0 if unknown.
func connRTT(ctx context.Context) time.Duration {
	tc, ok := ctx.Value(connKey{}).(*net.TCPConn)
	if !ok {
		return 0
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var rtt time.Duration
	sc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			rtt = time.Duration(info.Rtt) * time.Microsecond
		}
	})
	return rtt
}
