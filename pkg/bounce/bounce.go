// Package bounce reads bounce messages (delivery status notifications,
// non-standard MTA and provider bounces, auto-replies and ARF complaint
// reports) and classifies each bounced recipient into a reason with a
// hard/soft verdict.
//
// The reason taxonomy and most of the phrase knowledge come from sisimai
// (https://libsisimai.org, BSD 2-Clause), whose corpus of real bounces is
// what this package is measured against; the code here is an independent
// implementation. Parse is a pure function of the message bytes: no DNS, no
// network, no globals that change.
//
// Reading a bounce is done in three layers:
//
//  1. a lenient MIME walk (mime.go, message.go) that survives truncated and
//     malformed messages and yields the human-readable report text, the
//     message/delivery-status parts, any feedback report and the header of
//     the returned original message;
//  2. readers that turn those into per-recipient facts (recipient, status,
//     reply code, diagnostic, SMTP command): RFC 3464 (dsn.go), RFC 5965
//     (arf.go), auto-replies (autoreply.go) and the text formats of the
//     common MTAs and providers (text.go, vendors.go);
//  3. the classifier (classify.go), shared with the sender's synchronous
//     SMTP path through Classify, so that a 5xx at send time and the bounce
//     that would have followed read the same.
package bounce

import (
	"bytes"
	"fmt"
	netmail "net/mail"
	"runtime/debug"
	"strings"
	"time"
)

// Record is one bounced (or complained-about, or auto-replied) recipient.
type Record struct {
	// Recipient is the address the report is about (lower-case domain).
	Recipient string
	// Action is the RFC 3464 action: failed, delayed, delivered, relayed,
	// expanded; empty when the bounce does not say.
	Action string
	// Status is the RFC 3463 enhanced status code ("5.1.1"); empty when
	// unknown.
	Status string
	// ReplyCode is the SMTP reply code (550); 0 when unknown.
	ReplyCode int
	// Diagnostic is the remote server's (or MTA's) own words, one line.
	Diagnostic string
	// Reason is the sisimai reason name, e.g. userunknown, mailboxfull,
	// feedback, vacation; see Reasons.
	Reason string
	// Hard is true for permanent address failures that must suppress the
	// recipient: userunknown, hostunknown, hasmoved, and notaccept with a
	// 5xx code.
	Hard bool
	// FeedbackType is the ARF Feedback-Type (abuse, opt-out, ...) for
	// complaint reports.
	FeedbackType string
	// RemoteMTA is the host that rejected the message, when known.
	RemoteMTA string
	// ReportingMTA is the host that wrote the report, when known.
	ReportingMTA string
	// OriginalMessageID is the Message-ID of the returned message, without
	// angle brackets.
	OriginalMessageID string
	// Headers is the header of the returned original message (or of the
	// reported message for complaints); nil when the bounce returned
	// nothing. Callers look for their own X-Mailbus-* fields here.
	Headers netmail.Header
	// Date is when the failure happened (Last-Attempt-Date, Arrival-Date
	// or the bounce's Date); zero when unknown.
	Date time.Time
}

// finding is what a reader learned about one recipient before
// classification.
type finding struct {
	recipient string
	alias     string
	action    string
	status    string
	reply     int
	diag      string // diagnostic text, one line
	diagType  string // SMTP, X-UNIX, X-POSTFIX ... (upper-case)
	command   string // last SMTP command: CONN HELO EHLO MAIL RCPT DATA ...
	rhost     string
	lhost     string
	reason    string // decided by the reader; "" to let the classifier decide
	soft      bool   // the reader knows the failure is temporary
	ctx       string // more report text about the failure, used to classify only
	date      string
	feedback  string // ARF feedback type
	agent     string // reader that produced the finding (for rhost rules)
}

// Parse reads one bounce message and returns a Record per recipient it
// reports on. A message that is not a bounce (or cannot be read) gives no
// records and no error; Parse never panics on malformed input. The error
// is reserved for failures of Parse itself.
func Parse(raw []byte) (recs []Record, err error) {
	defer func() {
		// Parse is fed mail from the internet; a bug must cost one
		// message, not the consumer. The recovered panic becomes an
		// error so that it is seen and fixed.
		if r := recover(); r != nil {
			stack := debug.Stack()
			if len(stack) > 2048 {
				stack = stack[:2048]
			}
			recs, err = nil, fmt.Errorf("bounce: parsing panicked: %v\n%s", r, stack)
		}
	}()
	if len(raw) == 0 {
		return nil, nil
	}
	if len(raw) > maxInput {
		raw = raw[:maxInput]
	}
	raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	for _, msg := range splitMbox(raw) {
		m := newMail(msg)
		if fs := read(m); len(fs) > 0 {
			recs = append(recs, m.records(fs)...)
		}
	}
	return recs, nil
}

// read runs the readers in order of specificity and returns the findings
// of the first that recognises the message.
func read(m *mail) []finding {
	if fs := readFeedback(m); len(fs) > 0 {
		return fs
	}
	fs := readVendor(m)
	if len(fs) == 0 {
		fs = readDSN(m)
	}
	if len(fs) == 0 && detectVendor(m) == nil {
		// An auto-reply is recognised by its headers; it must be ruled
		// out before the loose generic reader sees addresses in it.
		if ar := readAutoReply(m); len(ar) > 0 {
			return ar
		}
	}
	if len(fs) == 0 {
		fs = readText(m)
	}
	if len(fs) > 0 {
		applyVendor(m, fs)
		return fs
	}
	return readAutoReply(m)
}

// classifyAllowance is how much more text than the message holds the
// classifier may read for one message (see records).
const classifyAllowance = 64 << 10

// records classifies findings and builds the public records.
func (m *mail) records(fs []finding) []Record {
	hdr := toMailHeader(m.original)
	msgID := strings.Trim(strings.TrimSpace(m.original.get("message-id")), "<>")
	type seenKey struct{ rcpt, diag string }
	seen := map[seenKey]bool{}
	out := make([]Record, 0, len(fs))
	// The classifier matches every byte of a finding's text against
	// hundreds of phrases. Readers may give many recipients the same
	// report text (a list of addresses, then one error), so the text it
	// reads for all of them together is bounded by the message's size and
	// an allowance: its work stays linear in the input however many
	// recipients a crafted report lists. Real reports stay far below.
	budget := m.size + classifyAllowance
	for i := range fs {
		f := &fs[i]
		rcpt := normalizeAddress(f.recipient)
		if rcpt == "" || !strings.Contains(rcpt, "@") {
			continue
		}
		f.recipient = rcpt
		key := seenKey{rcpt, f.diag}
		if seen[key] {
			continue
		}
		seen[key] = true
		f.diag = clipText(f.diag, budget)
		budget -= len(f.diag)
		f.ctx = clipText(f.ctx, budget)
		budget -= len(f.ctx)
		m.finish(f)
		reason, hard := decide(f)
		r := Record{
			Recipient:         rcpt,
			Action:            f.action,
			Status:            f.status,
			ReplyCode:         f.reply,
			Diagnostic:        f.diag,
			Reason:            reason,
			Hard:              hard,
			FeedbackType:      f.feedback,
			RemoteMTA:         f.rhost,
			ReportingMTA:      f.lhost,
			OriginalMessageID: msgID,
			Headers:           hdr,
			Date:              m.date(f),
		}
		if reason == "feedback" || reason == "vacation" {
			r.ReplyCode = 0
		}
		out = append(out, r)
	}
	return out
}

// toMailHeader converts the returned message's header for callers.
func toMailHeader(h header) netmail.Header {
	if len(h) == 0 {
		return nil
	}
	out := make(netmail.Header, len(h))
	for _, f := range h {
		k := canonicalKey(f.key)
		out[k] = append(out[k], decodeWords(f.value))
	}
	return out
}

// canonicalKey returns the MIME canonical form of a lower-case field name.
func canonicalKey(k string) string {
	b := []byte(k)
	upper := true
	for i, c := range b {
		if upper && c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
		upper = c == '-'
	}
	return string(b)
}

// date picks the best timestamp for a finding.
func (m *mail) date(f *finding) time.Time {
	for _, v := range []string{f.date, m.header.get("date")} {
		if v == "" {
			continue
		}
		if t, err := netmail.ParseDate(strings.TrimSpace(v)); err == nil {
			return t
		}
		if t, err := netmail.ParseDate(cleanDate(v)); err == nil {
			return t
		}
	}
	return time.Time{}
}

// cleanDate strips comments and oddities that net/mail refuses.
func cleanDate(v string) string {
	if i := strings.Index(v, "("); i > 0 {
		v = v[:i]
	}
	v = strings.Join(strings.Fields(v), " ")
	return v
}
