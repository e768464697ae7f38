package mail

import (
	"errors"
	"fmt"
)

// ErrInvalid is matched (with errors.Is) by every validation error of this
// package: a bad address, a forbidden header, a malformed or oversized
// message. Such errors are the producer's to fix; retrying cannot help, so
// they state that they are permanent (exterr.IsPermanent).
var ErrInvalid = errors.New("invalid mail")

// ErrTooLarge is matched (with errors.Is) by the error for a message over
// the size limit. It also matches ErrInvalid.
var ErrTooLarge = errors.New("message too large")

// AddressError says why an address was rejected, in words a person can act
// on: `invalid address "bob@": missing domain`.
type AddressError struct {
	// Input is the text that was parsed.
	Input string
	// Reason says what is wrong with it.
	Reason string
}

func (e *AddressError) Error() string {
	return fmt.Sprintf("invalid address %q: %s", clip(e.Input), e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *AddressError) Is(target error) bool { return target == ErrInvalid }

// Permanent reports true: an invalid address stays invalid.
func (e *AddressError) Permanent() bool { return true }

// HeaderError says why a header field was rejected.
type HeaderError struct {
	// Name is the field name as given.
	Name string
	// Reason says what is wrong and, when possible, what to do instead.
	Reason string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("invalid header %q: %s", clip(e.Name), e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *HeaderError) Is(target error) bool { return target == ErrInvalid }

// Permanent reports true: the same header would be rejected again.
func (e *HeaderError) Permanent() bool { return true }

// MessageError says why a message (built or raw) was rejected.
type MessageError struct {
	// Reason says what is wrong with the message.
	Reason string
	// Size and Limit are set (in octets) when the message is too large.
	Size, Limit int64
}

func (e *MessageError) Error() string {
	return "invalid message: " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) true, and errors.Is(err,
// ErrTooLarge) true for a size error.
func (e *MessageError) Is(target error) bool {
	return target == ErrInvalid || (target == ErrTooLarge && e.Limit > 0)
}

// Permanent reports true: the same message would be rejected again.
func (e *MessageError) Permanent() bool { return true }

func messageErrorf(format string, args ...any) *MessageError {
	return &MessageError{Reason: fmt.Sprintf(format, args...)}
}

// clip keeps error messages readable when the input is huge.
func clip(s string) string {
	const max = 120
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
