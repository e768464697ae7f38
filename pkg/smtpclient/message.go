package smtpclient

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/mailbus/mailbus/pkg/mail"
)

// Message is one envelope to deliver.
type Message struct {
	// From is the reverse path (MAIL FROM); empty for the null sender <>.
	From string
	// To are the recipients (RCPT TO), at least one.
	To []string
	// Prefix is written before Data: the DKIM-Signature fields the signer
	// made, kept apart so the message is not copied to prepend them.
	Prefix []byte
	// Data is the RFC 5322 message with CRLF line ends.
	Data []byte
	// DSN parameters, sent only to servers that offer DSN.
	DSN DSN
}

// DSN holds the RFC 3461 parameters of a message.
type DSN struct {
	// Return is "FULL" or "HDRS" (MAIL FROM RET=); empty for the server's
	// default.
	Return string
	// EnvelopeID is MAIL FROM ENVID=, printable ASCII.
	EnvelopeID string
	// Notify is RCPT TO NOTIFY=: "NEVER", or any of "SUCCESS", "FAILURE",
	// "DELAY"; empty for the server's default.
	Notify []string
}

// Size is the number of message bytes the client writes after DATA (before
// dot-stuffing).
func (m *Message) Size() int64 { return int64(len(m.Prefix) + len(m.Data)) }

func (m *Message) validate() error {
	if len(m.To) == 0 {
		return errors.New("message has no recipients")
	}
	for _, a := range append([]string{m.From}, m.To...) {
		if strings.ContainsAny(a, "\r\n<>") {
			return fmt.Errorf("address %q contains CR, LF or angle brackets", a)
		}
	}
	switch strings.ToUpper(m.DSN.Return) {
	case "", "FULL", "HDRS":
	default:
		return fmt.Errorf("DSN RET %q is not FULL or HDRS", m.DSN.Return)
	}
	never := false
	seen := map[string]bool{}
	for _, n := range m.DSN.Notify {
		n = strings.ToUpper(n)
		switch n {
		case "NEVER":
			never = true
		case "SUCCESS", "FAILURE", "DELAY":
		default:
			return fmt.Errorf("DSN NOTIFY %q is not NEVER, SUCCESS, FAILURE or DELAY", n)
		}
		if seen[n] {
			return fmt.Errorf("DSN NOTIFY %q given twice", n)
		}
		seen[n] = true
	}
	if never && len(seen) > 1 {
		return errors.New("DSN NOTIFY NEVER cannot be combined with other values")
	}
	return nil
}

// needsSMTPUTF8 reports whether an address or a header field carries
// non-ASCII text (RFC 6531/6532); 8-bit bytes in the body only need
// 8BITMIME.
func (m *Message) needsSMTPUTF8() (addresses, headers bool) {
	for _, a := range append([]string{m.From}, m.To...) {
		if !isASCII(a) {
			addresses = true
		}
	}
	if !isASCII(string(m.Prefix)) {
		headers = true
	}
	head := m.Data
	if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 {
		head = head[:i]
	} else if i := bytes.Index(head, []byte("\n\n")); i >= 0 {
		head = head[:i]
	}
	if !isASCII(string(head)) {
		headers = true
	}
	return addresses, headers
}

func (m *Message) eightBit() bool { return !isASCII(string(m.Data)) || !isASCII(string(m.Prefix)) }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// Result is the outcome of one transaction: the server's reply to MAIL
// FROM, to each RCPT TO, and after the final dot.
type Result struct {
	// Relay is the "host:port" the message went to.
	Relay string
	// TLS says whether the connection was encrypted.
	TLS bool
	// ConnReused says the message went over a pooled connection.
	ConnReused bool
	// Mail is the reply to MAIL FROM; zero when it was not sent.
	Mail Reply
	// Recipients are in the order of Message.To.
	Recipients []RecipientResult
	// Data is the reply after the final dot, e.g. "250 2.0.0 Ok: queued as
	// ABC"; zero when the transaction did not get that far.
	Data Reply
}

// RecipientResult is what became of one recipient.
type RecipientResult struct {
	Address string
	// Rcpt is the reply to RCPT TO; zero when it was not sent.
	Rcpt Reply
	// Err is nil when the server took the message for this recipient.
	// Otherwise it is the reply that refused it (RCPT, DATA or after the
	// dot, see Stage) or the failure that ended the transaction; its
	// Permanent method tells a bounce from a deferral.
	Err *mail.SMTPError
}

// Accepted returns the recipients the server took the message for.
func (r *Result) Accepted() []string {
	var out []string
	for _, rc := range r.Recipients {
		if rc.Err == nil {
			out = append(out, rc.Address)
		}
	}
	return out
}

func newResult(relay Relay, m *Message) *Result {
	res := &Result{Relay: relay.Addr(), Recipients: make([]RecipientResult, len(m.To))}
	for i, to := range m.To {
		res.Recipients[i].Address = to
	}
	return res
}

// failUndecided gives err to every recipient that has no outcome yet and
// was not refused at RCPT. It is used when the transaction ends early, and
// for recipients that RCPT accepted but DATA or the dot refused.
func (r *Result) failUndecided(err *mail.SMTPError) {
	for i := range r.Recipients {
		if r.Recipients[i].Err == nil {
			r.Recipients[i].Err = err
		}
	}
}

// RelayError is a relay failure: the relay itself cannot take mail now
// (connection refused, TLS or authentication failure, a 421, any refusal of
// MAIL FROM, a timeout or a broken connection). The sender falls back to
// another relay on it instead of deciding per recipient. It unwraps to the
// *mail.SMTPError with the stage and the server's words.
type RelayError struct {
	Err *mail.SMTPError
}

func (e *RelayError) Error() string { return "relay failure: " + e.Err.Error() }

func (e *RelayError) Unwrap() error { return e.Err }

// IsRelayFailure reports whether err is a RelayError.
func IsRelayFailure(err error) bool {
	var re *RelayError
	return errors.As(err, &re)
}
