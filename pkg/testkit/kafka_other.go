//go:build !linux

package testkit

import "os/exec"

// setKafkaProcAttr does nothing where there is no parent-death signal;
// StopKafka still stops the broker.
func setKafkaProcAttr(*exec.Cmd) {}
