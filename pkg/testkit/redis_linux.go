package testkit

import (
	"os/exec"
	"syscall"
)

// setRedisProcAttr asks the kernel to kill redis-server when the test binary
// dies without running its cleanups (a panic, a timeout, kill -9), so that
// crashed test runs do not leave servers behind on the shared machine.
func setRedisProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
