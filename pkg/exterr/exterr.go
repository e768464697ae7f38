// Package exterr owns mailbus's one rule for telling a permanent failure
// from a temporary one. Every stage applies it through IsPermanent: the
// bus's retry middleware (a permanent handler error skips the retries and
// goes straight to mail.poison), the sender (a permanent SMTP reply bounces
// the recipient, a temporary one defers it) and the errors of the shared
// packages (mail's validation errors, limits.ErrInvalid), which declare
// their kind so that every caller reads it the same way.
//
// The rule, in order:
//
//  1. A cancelled or expired context is temporary, whatever else the error
//     says: the attempt was cut short (a shutdown, a per-attempt timeout),
//     which tells nothing about whether the next attempt can succeed.
//  2. Otherwise the outermost error in the chain that states its kind
//     decides. An error states it by having a method Permanent() bool:
//     errors marked with Permanent say true; *mail.SMTPError says what its
//     reply code says (see PermanentReply: a 5xx is permanent, a 4xx
//     temporary); mail's validation errors and limits.ErrInvalid say true.
//     Outermost first, so that a wrapper that knows better overrides its
//     cause.
//  3. An error that states no kind is temporary. As in maddy's exterrors
//     (IsTemporaryOrUnspec), an unknown failure (a network error, a
//     database outage, a bug) must never poison a record or bounce a
//     recipient: retrying it costs a little time, treating it as permanent
//     loses mail.
//
// The package has no dependencies, so that the transport (pkg/bus) can
// apply the rule without importing the mail model.
package exterr

import (
	"context"
	"errors"
)

// kinded is how an error states its kind (rule 2). It is not exported: an
// error type joins the rule by having the method.
type kinded interface {
	Permanent() bool
}

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() error   { return e.err }
func (e *permanentError) Permanent() bool { return true }

// Permanent marks err as permanent: a record that fails with it goes to the
// poison topic after one attempt instead of holding its partition through
// the whole backoff. Use it for what the same input will always fail with
// (malformed, missing tenant, unknown type, invalid request). The result
// matches err with errors.Is and errors.As, and says the same Error().
// Permanent(nil) is nil; an error already permanent is returned as it is.
// A context error stays temporary even when marked (rule 1).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether retrying cannot fix err, by the rule of the
// package comment. IsPermanent(nil) is false.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var k kinded
	if errors.As(err, &k) {
		return k.Permanent()
	}
	return false
}

// PermanentReply reports whether an SMTP reply is permanent: a 5xx basic
// code (RFC 5321 4.2.1), or, when no basic code is known (0), a 5.x.x
// enhanced status (RFC 3463). Everything else, 4xx, no code at all (no
// server replied) or a code out of range, is temporary.
func PermanentReply(code int, enhanced string) bool {
	if code != 0 {
		return code >= 500 && code < 600
	}
	return len(enhanced) >= 2 && enhanced[0] == '5' && enhanced[1] == '.'
}
