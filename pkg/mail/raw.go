package mail

import (
	"bytes"
	"fmt"
	"mime"
	"strings"
	"time"
)

// PrepareRaw checks a complete RFC 5322 message given by a producer and
// makes it ready to sign and send:
//
//   - line endings become CRLF (a bare LF anywhere, or a bare CR in the
//     body, is turned into CRLF; a bare CR in the header is refused, since
//     only an attempt to hide a header line produces one) and the message
//     ends with CRLF;
//   - NUL anywhere, a line over 998 octets, a header line that is not a
//     field, an invalid field name or non-ASCII header text is refused;
//   - there must be exactly one From field holding one valid address;
//   - Bcc and Return-Path fields are removed: Bcc would reveal the blind
//     recipients and Return-Path belongs to the final server;
//   - Date and Message-ID are added at the end of the header when absent.
//
// The result never shares memory with raw. Errors are *MessageError or
// *AddressError (errors.Is(err, ErrInvalid)).
func PrepareRaw(raw []byte, opts Options) (Message, error) {
	limit := opts.limit()
	if limit > 0 && int64(len(raw)) > limit {
		return Message{}, sizeError(int64(len(raw)), limit, "")
	}
	data, headerEnd, err := normalizeRaw(raw)
	if err != nil {
		return Message{}, err
	}
	fields, err := scanFields(data[:headerEnd])
	if err != nil {
		return Message{}, err
	}

	var (
		fromField  *field
		msgIDField *field
		subject    string
		hasDate    bool
		strip      []field
	)
	for i := range fields {
		f := &fields[i]
		switch strings.ToLower(f.name) {
		case "from":
			if fromField != nil {
				return Message{}, messageErrorf("the header has two From fields; a message has exactly one")
			}
			fromField = f
		case "message-id":
			if msgIDField != nil {
				return Message{}, messageErrorf("the header has two Message-ID fields; a message has at most one")
			}
			msgIDField = f
		case "date":
			hasDate = true
		case "subject":
			subject = decodeHeader(strings.TrimSpace(fromFolded(f.value(data))))
		case "bcc", "return-path":
			strip = append(strip, *f)
		}
	}
	if fromField == nil {
		return Message{}, messageErrorf("the header has no From field; every message needs one")
	}
	from, err := ParseAddress(strings.TrimSpace(fromFolded(fromField.value(data))))
	if err != nil {
		return Message{}, fmt.Errorf("From header: %w", err)
	}
	var messageID string
	if msgIDField != nil {
		v := strings.TrimSpace(fromFolded(msgIDField.value(data)))
		id, ok := parseMsgID(v)
		if !ok {
			// Keep a producer's odd but present id rather than refusing
			// the message: receivers accept it, and it is their id.
			id = strings.Trim(v, "<>")
		}
		messageID = id
	}

	if len(strip) == 0 && hasDate && msgIDField != nil {
		if limit > 0 && int64(len(data)) > limit {
			return Message{}, sizeError(int64(len(data)), limit, "")
		}
		return Message{Data: data, MessageID: messageID, From: from, Subject: subject}, nil
	}

	out := bytes.NewBuffer(make([]byte, 0, len(data)+128))
	pos := 0
	for _, f := range strip {
		out.Write(data[pos:f.start])
		pos = f.end
	}
	out.Write(data[pos:headerEnd])
	if !hasDate {
		out.WriteString("Date: ")
		out.WriteString(opts.now().Format(time.RFC1123Z))
		out.WriteString("\r\n")
	}
	if msgIDField == nil {
		if messageID, err = opts.newMessageID(from); err != nil {
			return Message{}, err
		}
		out.WriteString("Message-ID: <")
		out.WriteString(messageID)
		out.WriteString(">\r\n")
	}
	out.Write(data[headerEnd:])
	if limit > 0 && int64(out.Len()) > limit {
		return Message{}, sizeError(int64(out.Len()), limit, "")
	}
	return Message{Data: out.Bytes(), MessageID: messageID, From: from, Subject: subject}, nil
}

// decodeHeader decodes RFC 2047 encoded words, keeping the value as it is
// when they do not decode (an unknown charset): a subject for display.
func decodeHeader(v string) string {
	d, err := (&mime.WordDecoder{}).DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}

// fromFolded unfolds a header value: CRLF followed by whitespace is
// whitespace (RFC 5322 section 2.2.3).
func fromFolded(v string) string {
	if !strings.Contains(v, "\n") {
		return v
	}
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.ReplaceAll(v, "\n", "")
}

// normalizeRaw copies raw with CRLF line endings and returns the offset of
// the blank line that ends the header (len(out) when there is no body; a
// separator is then added). It refuses NUL, over-long lines and a bare CR
// in the header.
func normalizeRaw(raw []byte) (out []byte, headerEnd int, err error) {
	out = make([]byte, 0, len(raw)+len(raw)/64+8)
	headerEnd = -1
	lineStart, line := 0, 1
	for i := 0; i < len(raw); {
		j := bytes.IndexAny(raw[i:], "\r\n\x00")
		if j < 0 {
			out = append(out, raw[i:]...)
			i = len(raw)
			break
		}
		out = append(out, raw[i:i+j]...)
		i += j
		c := raw[i]
		i++
		switch c {
		case 0:
			return nil, 0, messageErrorf("line %d contains a NUL character", line)
		case '\r':
			if i < len(raw) && raw[i] == '\n' {
				i++
			} else if headerEnd < 0 {
				return nil, 0, messageErrorf("line %d of the header contains a bare CR (a CR not followed by LF)", line)
			}
		}
		if n := len(out) - lineStart; n > MaxLineLen {
			return nil, 0, messageErrorf("line %d is %d octets; RFC 5322 allows at most %d: encode long lines with quoted-printable or base64", line, n, MaxLineLen)
		}
		if headerEnd < 0 && len(out) == lineStart {
			headerEnd = len(out)
		}
		out = append(out, '\r', '\n')
		lineStart = len(out)
		line++
	}
	if n := len(out) - lineStart; n > MaxLineLen {
		return nil, 0, messageErrorf("line %d is %d octets; RFC 5322 allows at most %d: encode long lines with quoted-printable or base64", line, n, MaxLineLen)
	}
	if len(out) > lineStart {
		// The last line lacked its CRLF; SMTP and DKIM both want one.
		out = append(out, '\r', '\n')
	}
	if headerEnd < 0 {
		// A header with no body: add the empty line that ends it.
		headerEnd = len(out)
		out = append(out, '\r', '\n')
	}
	return out, headerEnd, nil
}

// field locates one header field in a message: data[start:end] is the
// whole field with its folded lines and final CRLF.
type field struct {
	name       string
	start, end int
	// colon is the offset of the ':' after the name.
	colon int
}

// value returns the raw value after the colon, folding CRLFs included,
// without the final CRLF.
func (f *field) value(data []byte) string {
	v := data[f.colon+1 : f.end]
	v = bytes.TrimSuffix(v, []byte("\n"))
	v = bytes.TrimSuffix(v, []byte("\r"))
	return string(v)
}

// scanFields splits a header block (CRLF or LF line endings, without the
// blank line that ends it) into fields, checking each line.
func scanFields(h []byte) ([]field, error) {
	fields := make([]field, 0, 16)
	line := 0
	for pos := 0; pos < len(h); {
		line++
		end := bytes.IndexByte(h[pos:], '\n')
		if end < 0 {
			end = len(h)
		} else {
			end += pos + 1
		}
		l := h[pos:end]
		if l[0] == ' ' || l[0] == '\t' {
			if len(fields) == 0 {
				return nil, messageErrorf("the header starts with a continuation line (a line beginning with whitespace)")
			}
			fields[len(fields)-1].end = end
		} else {
			colon := bytes.IndexByte(l, ':')
			if colon <= 0 {
				return nil, messageErrorf("header line %d %q is not a field (Name: value); is the blank line before the body missing?", line, clip(strings.TrimRight(string(l), "\r\n")))
			}
			for _, c := range l[:colon] {
				if c < 33 || c > 126 {
					return nil, messageErrorf("header line %d: field name %q contains %q; only printable ASCII other than ':' is allowed", line, clip(string(l[:colon])), c)
				}
			}
			fields = append(fields, field{name: string(l[:colon]), start: pos, end: end, colon: pos + colon})
		}
		for _, c := range l {
			if c >= 0x80 {
				return nil, messageErrorf("header line %d contains non-ASCII text; encode it as RFC 2047 encoded words (=?utf-8?q?...?=)", line)
			}
		}
		pos = end
	}
	return fields, nil
}

// headerBlock returns the offset where the header block of msg ends (the
// start of the blank line, or len(msg) when there is none).
func headerBlock(msg []byte) int {
	if bytes.HasPrefix(msg, []byte("\r\n")) || bytes.HasPrefix(msg, []byte("\n")) {
		return 0
	}
	i := bytes.Index(msg, []byte("\n\r\n"))
	j := bytes.Index(msg, []byte("\n\n"))
	switch {
	case i < 0 && j < 0:
		return len(msg)
	case i < 0 || (j >= 0 && j < i):
		return j + 1
	}
	return i + 1
}

// HeaderFrom returns the From address of a message (such as Message.Data),
// for a stage that has only the bytes: the signer picking the From
// domain's keys, the bounce service reading a DSN.
func HeaderFrom(msg []byte) (Address, error) {
	fields, err := scanFields(msg[:headerBlock(msg)])
	if err != nil {
		return Address{}, err
	}
	for i := range fields {
		if strings.EqualFold(fields[i].name, "from") {
			a, err := ParseAddress(strings.TrimSpace(fromFolded(fields[i].value(msg))))
			if err != nil {
				return Address{}, fmt.Errorf("From header: %w", err)
			}
			return a, nil
		}
	}
	return Address{}, messageErrorf("the header has no From field")
}

// RewriteFrom replaces the From field of a message made by Build or
// PrepareRaw, for a route whose relays do not accept the original sender
// (they, or DMARC at the receiver, would reject it). The new From carries
// newFrom.Email and:
//   - newFrom.Name when it is set;
//   - else, when via is set, "<original name> (via <via>)", using the
//     original address when it had no name: "Alice (via Acme)";
//   - else the original display name.
//
// When the message has no Reply-To, one is added with the original From so
// that replies still reach the sender. Other fields and the body are
// unchanged (a DKIM signature made before the rewrite no longer verifies:
// sign after rewriting). It returns the new message and the original From.
func RewriteFrom(msg []byte, newFrom Address, via string) ([]byte, Address, error) {
	newFrom, err := NewAddress(newFrom.Name, newFrom.Email)
	if err != nil {
		return nil, Address{}, fmt.Errorf("new From: %w", err)
	}
	if reason := forbiddenControl(via); reason != "" {
		return nil, Address{}, messageErrorf("via name %s", reason)
	}
	end := headerBlock(msg)
	fields, err := scanFields(msg[:end])
	if err != nil {
		return nil, Address{}, err
	}
	var fromField *field
	hasReplyTo := false
	for i := range fields {
		switch strings.ToLower(fields[i].name) {
		case "from":
			if fromField != nil {
				return nil, Address{}, messageErrorf("the header has two From fields")
			}
			fromField = &fields[i]
		case "reply-to":
			hasReplyTo = true
		}
	}
	if fromField == nil {
		return nil, Address{}, messageErrorf("the header has no From field")
	}
	orig, err := ParseAddress(strings.TrimSpace(fromFolded(fromField.value(msg))))
	if err != nil {
		return nil, Address{}, fmt.Errorf("From header: %w", err)
	}
	name := newFrom.Name
	if name == "" {
		name = orig.Name
		if via != "" {
			who := orig.Name
			if who == "" {
				who = orig.Email
			}
			name = who + " (via " + via + ")"
		}
	}
	out := bytes.NewBuffer(make([]byte, 0, len(msg)+256))
	out.Write(msg[:fromField.start])
	if err := writeField(out, "From", Address{Name: name, Email: newFrom.Email}.String()); err != nil {
		return nil, Address{}, err
	}
	if !hasReplyTo {
		if err := writeField(out, "Reply-To", orig.String()); err != nil {
			return nil, Address{}, err
		}
	}
	out.Write(msg[fromField.end:])
	return out.Bytes(), orig, nil
}

// HasHeader reports whether msg's header has a field called name (any
// case). A header that does not scan has none.
func HasHeader(msg []byte, name string) bool {
	_, ok := HeaderValue(msg, name)
	return ok
}

// HeaderValue returns the unfolded, trimmed value of msg's first field
// called name (any case), and whether there is one. A header that does not
// scan has none.
func HeaderValue(msg []byte, name string) (string, bool) {
	fields, err := scanFields(msg[:headerBlock(msg)])
	if err != nil {
		return "", false
	}
	for i := range fields {
		if strings.EqualFold(fields[i].name, name) {
			return strings.TrimSpace(fromFolded(fields[i].value(msg))), true
		}
	}
	return "", false
}

// PrependFields returns msg with the fields (each "Name: value", without
// CRLF; the caller has checked them with ValidateHeader) put in front of
// its header. Field order carries no meaning, and the front is where the
// fields a stage adds go without rewriting the rest (as trace fields do).
func PrependFields(msg []byte, fields ...string) []byte {
	n := len(msg)
	for _, f := range fields {
		n += len(f) + 2
	}
	out := make([]byte, 0, n)
	for _, f := range fields {
		out = append(append(out, f...), '\r', '\n')
	}
	return append(out, msg...)
}
