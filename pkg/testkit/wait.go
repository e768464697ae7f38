package testkit

import (
	"fmt"
	"testing"
	"time"
)

// WaitTimeout bounds every wait of a test for something that happens
// asynchronously: a record on a topic, a message at an SMTP server, a
// server that starts listening, a log line. It is a guard against hangs,
// not a performance expectation: CI runs on a busy shared two-core machine
// (another test run beside this one), where what takes milliseconds alone
// can take seconds, and a test that assumed it had come would fail a whole
// run. A test waits by polling for the condition it needs (Eventually) or
// by receiving with this deadline, never by sleeping and looking once.
const WaitTimeout = 60 * time.Second

// pollInterval is how often Eventually looks again.
const pollInterval = 20 * time.Millisecond

// Eventually calls cond until it returns true and fails t if it has not
// after timeout (WaitTimeout is the usual one). format and args say what
// was awaited, for the failure.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("testkit: waited %s for %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(pollInterval)
	}
}

// Receive waits up to WaitTimeout for a value on ch, or for ch to be
// closed (then it returns the zero value), and fails t, saying what was
// awaited, when neither comes.
func Receive[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(WaitTimeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("testkit: waited %s for %s", WaitTimeout, what)
	}
	panic("unreachable")
}
