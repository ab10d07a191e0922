//go:build linux

package modes

import (
	"os/signal"
	"syscall"
)

func ignoreTTOU()  { signal.Ignore(syscall.SIGTTOU) }
func restoreTTOU() { signal.Reset(syscall.SIGTTOU) }
