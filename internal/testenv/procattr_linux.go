package testenv

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the child die with the test process, so that a crashed or
// killed test binary leaves no victoria-metrics behind.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
