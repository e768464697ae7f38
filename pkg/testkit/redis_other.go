//go:build !linux

package testkit

import "os/exec"

// setRedisProcAttr does nothing where there is no parent-death signal; the
// test cleanup still kills the server.
func setRedisProcAttr(*exec.Cmd) {}
