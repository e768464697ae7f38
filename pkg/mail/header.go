package mail

import (
	"bytes"
	"fmt"
	"mime"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// Line lengths of RFC 5322 section 2.1.1, without the CRLF.
const (
	// MaxLineLen is the hard limit on a line of a message.
	MaxLineLen = 998
	// foldLineLen is the length header lines are folded at when they can.
	foldLineLen = 78
)

// ownedHeaders are header fields that mailbus writes (or that mail servers
// add on the way) and a producer must not set: each maps to what to do
// instead. Keys are lowercase.
var ownedHeaders = map[string]string{
	"from":                       "set by mailbus from the submission's from field",
	"to":                         "set by mailbus from the submission's to field",
	"cc":                         "set by mailbus from the submission's cc field",
	"bcc":                        "never written into a message: put blind-copy recipients in the submission's bcc field",
	"reply-to":                   "set by mailbus from the submission's reply_to field",
	"subject":                    "set by mailbus from the submission's subject field",
	"sender":                     "set by mailbus when needed: the From address is the sender",
	"mime-version":               "set by mailbus's MIME builder",
	"content-type":               "set by mailbus's MIME builder from the bodies and attachments",
	"content-transfer-encoding":  "set by mailbus's MIME builder",
	"content-disposition":        "set by mailbus's MIME builder for attachments",
	"content-id":                 "set by mailbus's MIME builder from an attachment's content_id",
	"dkim-signature":             "added by mailbus's signer with the domain's keys",
	"domainkey-signature":        "obsolete and added by signers, not producers",
	"arc-seal":                   "added by forwarding mail servers",
	"arc-message-signature":      "added by forwarding mail servers",
	"arc-authentication-results": "added by forwarding mail servers",
	"authentication-results":     "added by the receiving mail server",
	"received":                   "added by each mail server on the way",
	"received-spf":               "added by the receiving mail server",
	"return-path":                "added by the final mail server from the envelope sender, which mailbus sets",
	"delivered-to":               "added by the final mail server",
}

// ValidateHeader checks one extra header field a producer asks for. It
// rejects, with a message saying what to do instead:
//   - a name that is not RFC 5322 ftext (printable ASCII except ':'),
//   - a value with CR, LF or NUL (header injection) or other control
//     characters except tab, or that is not UTF-8,
//   - a word too long to fit a 998-octet line once folded,
//   - fields mailbus owns: From, To, Cc, Bcc, Reply-To, Subject, Sender,
//     MIME-Version, Content-Type, Content-Transfer-Encoding,
//     Content-Disposition, Content-ID, DKIM-Signature, ARC-*, Received,
//     Return-Path, Authentication-Results and names starting "X-Mailbus-",
//   - a Date that RFC 5322 readers cannot parse, a Message-ID that is not
//     "<left@right>".
//
// Non-ASCII values are allowed: the builder writes them as RFC 2047
// encoded words.
func ValidateHeader(name, value string) error {
	if name == "" {
		return &HeaderError{Name: name, Reason: "empty field name"}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 33 || c > 126 || c == ':' {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("field name contains %q; only printable ASCII other than ':' is allowed", c)}
		}
	}
	lower := strings.ToLower(name)
	if why, ok := ownedHeaders[lower]; ok {
		return &HeaderError{Name: name, Reason: why}
	}
	if strings.HasPrefix(lower, "x-mailbus-") {
		return &HeaderError{Name: name, Reason: "names starting X-Mailbus- are reserved for mailbus"}
	}
	if i := strings.IndexAny(value, "\r\n\x00"); i >= 0 {
		if value[i] == 0 {
			return &HeaderError{Name: name, Reason: "value contains a NUL character"}
		}
		return &HeaderError{Name: name, Reason: "value contains a line break (CR or LF), which would start a new header field"}
	}
	for _, r := range value {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("value contains control character %U", r)}
		}
	}
	if !utf8.ValidString(value) {
		return &HeaderError{Name: name, Reason: "value is not valid UTF-8"}
	}
	if err := checkFoldable(name, value); err != nil {
		return err
	}
	switch lower {
	case "date":
		if _, err := mail.ParseDate(value); err != nil {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("%q is not an RFC 5322 date such as %q", value, "Mon, 02 Jan 2006 15:04:05 -0700")}
		}
	case "message-id":
		if _, ok := parseMsgID(value); !ok {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("%q is not a message id of the form <unique@domain>", value)}
		}
	}
	return nil
}

// checkFoldable makes sure a value can be written with every line at most
// MaxLineLen octets: folding can only happen at whitespace.
func checkFoldable(name, value string) error {
	first := true
	for w := range strings.FieldsSeq(value) {
		limit := MaxLineLen - 1 // the folding space
		if first {
			limit = MaxLineLen - len(name) - 2
			first = false
		}
		if len(w) > limit {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("value has a %d-octet word; a header line may not exceed %d octets", len(w), MaxLineLen)}
		}
	}
	return nil
}

// parseMsgID returns the id inside <...> when v is a plausible msg-id.
// It is lenient about what is between the brackets (real message ids are
// not always dot-atoms) but requires the brackets, an @, and no spaces.
func parseMsgID(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if len(v) < 5 || v[0] != '<' || v[len(v)-1] != '>' {
		return "", false
	}
	id := v[1 : len(v)-1]
	at := strings.LastIndexByte(id, '@')
	if at <= 0 || at == len(id)-1 {
		return "", false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return "", false
		}
	}
	return id, true
}

// writeField writes "Name: value" CRLF-terminated, folding at whitespace so
// that lines stay within 78 octets when possible and within 998 always.
// The value must already be ASCII (encoded words where needed) and free of
// CR/LF; folding only inserts CRLF before existing whitespace, so
// unfolding gives the value back unchanged.
func writeField(b *bytes.Buffer, name, value string) error {
	b.WriteString(name)
	b.WriteString(": ")
	lineLen := len(name) + 2
	for len(value) > 0 {
		if lineLen+len(value) <= foldLineLen {
			b.WriteString(value)
			break
		}
		// Fold at the last whitespace that keeps the line short, else at
		// the first whitespace at all (a long word forces a long line).
		cut := -1
		limit := min(len(value), foldLineLen-lineLen+1)
		for i := limit - 1; i > 0; i-- {
			if value[i] == ' ' || value[i] == '\t' {
				cut = i
				break
			}
		}
		if cut < 0 {
			for i := 1; i < len(value); i++ {
				if value[i] == ' ' || value[i] == '\t' {
					cut = i
					break
				}
			}
		}
		if cut < 0 {
			cut = len(value)
		}
		if lineLen+cut > MaxLineLen {
			return &HeaderError{Name: name, Reason: fmt.Sprintf("value has a word that makes a %d-octet line; at most %d are allowed", lineLen+cut, MaxLineLen)}
		}
		b.WriteString(value[:cut])
		value = value[cut:]
		if len(value) == 0 {
			break
		}
		b.WriteString("\r\n")
		// The whitespace at value[0] starts the continuation line.
		lineLen = 0
	}
	b.WriteString("\r\n")
	return nil
}

// encodeUnstructured returns an unstructured field value (Subject, extra
// headers) as ASCII, using RFC 2047 Q-encoded words when it is not.
func encodeUnstructured(v string) string {
	for i := 0; i < len(v); i++ {
		if v[i] >= utf8.RuneSelf {
			return mime.QEncoding.Encode("utf-8", v)
		}
	}
	return v
}
