// Package mail is the mail model shared by every stage: addresses, MIME
// building, VERP return paths, and SMTP outcomes with their
// temporary/permanent kind.
package mail

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SMTPError is a mail-domain outcome: what a remote server (or mailbus
// acting as one) said, with the enhanced status and whether trying again
// later can help. Like maddy's exterrors, an error that is not an SMTPError
// counts as temporary: an unknown failure must never bounce a recipient.
type SMTPError struct {
	// Code is the basic reply code (e.g. 550); 0 when no server replied.
	Code int
	// Enhanced is the RFC 3463 status ("5.1.1"); empty when unknown.
	Enhanced string
	// Message is the server's own words, or a local description.
	Message string
	// Stage is the SMTP step that failed: connect, greeting, ehlo,
	// starttls, auth, mail, rcpt, data, dot.
	Stage string
	// Err is the underlying cause, if any.
	Err error
}

func (e *SMTPError) Error() string {
	var b strings.Builder
	if e.Stage != "" {
		b.WriteString(e.Stage)
		b.WriteString(": ")
	}
	if e.Code != 0 {
		b.WriteString(strconv.Itoa(e.Code))
		b.WriteByte(' ')
	}
	if e.Enhanced != "" {
		b.WriteString(e.Enhanced)
		b.WriteByte(' ')
	}
	b.WriteString(e.Message)
	if e.Err != nil && e.Message == "" {
		b.WriteString(e.Err.Error())
	}
	return strings.TrimSpace(b.String())
}

func (e *SMTPError) Unwrap() error { return e.Err }

// Permanent reports whether the reply is a 5xx (or a 5.x.x enhanced code
// when no basic code is known).
func (e *SMTPError) Permanent() bool {
	if e.Code >= 500 && e.Code < 600 {
		return true
	}
	if e.Code == 0 && strings.HasPrefix(e.Enhanced, "5.") {
		return true
	}
	return false
}

// IsPermanent reports whether err is a permanent mail-domain failure: an
// SMTPError with a 5xx reply, or a validation error of this package
// (AddressError, HeaderError, MessageError), which any error type with a
// Permanent() bool method can join. All other errors are temporary.
func IsPermanent(err error) bool {
	var se *SMTPError
	if errors.As(err, &se) {
		return se.Permanent()
	}
	var p interface{ Permanent() bool }
	if errors.As(err, &p) {
		return p.Permanent()
	}
	return false
}

// Permanentf builds a permanent local rejection with enhanced code enh.
func Permanentf(code int, enh, format string, args ...any) *SMTPError {
	return &SMTPError{Code: code, Enhanced: enh, Message: fmt.Sprintf(format, args...)}
}
