// Package mail is the mail model shared by every stage: addresses, MIME
// building, VERP return paths, and SMTP outcomes with their
// temporary/permanent kind. Which errors are permanent is decided by one
// rule for the whole pipeline, exterr.IsPermanent; the errors of this
// package state their kind to it.
package mail

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mailbus/mailbus/pkg/exterr"
)

// SMTPError is a mail-domain outcome: what a remote server (or mailbus
// acting as one) said, with the enhanced status and whether trying again
// later can help. Read its kind with exterr.IsPermanent, which applies the
// reply code (PermanentReply) and, like maddy's exterrors, counts an error
// that states no kind as temporary: an unknown failure must never bounce a
// recipient.
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

// Permanent reports whether the reply is permanent by exterr.PermanentReply:
// a 5xx, or a 5.x.x enhanced code when no basic code is known. It is how an
// SMTPError states its kind to exterr.IsPermanent, which callers use.
func (e *SMTPError) Permanent() bool {
	return exterr.PermanentReply(e.Code, e.Enhanced)
}

// Permanentf builds a permanent local rejection with enhanced code enh.
func Permanentf(code int, enh, format string, args ...any) *SMTPError {
	return &SMTPError{Code: code, Enhanced: enh, Message: fmt.Sprintf(format, args...)}
}
