package testkit

import (
	"os/exec"
	"syscall"
)

// setKafkaProcAttr asks the kernel to kill the broker's JVM when the test
// binary dies without calling StopKafka (a panic, a timeout, kill -9, or
// a package without a TestMain), so that no broker outlives its tests on
// the shared machine.
func setKafkaProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
