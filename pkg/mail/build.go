package mail

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"mime"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// DefaultMaxSize is the message size limit, in octets after encoding, when
// Options.MaxSize is zero: 25 MiB, what common relays accept.
const DefaultMaxSize = 25 << 20

// Options tune Build and PrepareRaw. The zero value is ready to use.
type Options struct {
	// MaxSize is the largest message accepted, in octets after encoding
	// (what the SMTP SIZE extension sees). Zero means DefaultMaxSize; a
	// negative value means no limit.
	MaxSize int64
	// Now gives the time for a Date header the message lacks and the
	// submission does not give (submit_time); nil means time.Now.
	Now func() time.Time
	// MessageIDDomain is the right-hand side of a generated Message-ID.
	// Empty means the From address's domain (in lowercase A-labels), which
	// keeps the id unique per sender and looks right to spam filters.
	MessageIDDomain string
	// MessageIDLeft is the left-hand side of a generated Message-ID, for a
	// caller that derives it from its own id so that building the same
	// submission twice gives the same message. Empty means a new ULID. It
	// must be a dot-atom (letters, digits, ".", "-", "_" and the like).
	MessageIDLeft string
}

// newMessageID returns the id of a generated Message-ID.
func (o Options) newMessageID(from Address) (string, error) {
	left := o.MessageIDLeft
	if left == "" {
		left = ulid.Make().String()
	} else if reason := checkDotAtom(left); reason != "" {
		return "", messageErrorf("Options.MessageIDLeft %q: %s", left, strings.Replace(reason, "local part", "id", 1))
	}
	domain := o.MessageIDDomain
	if domain == "" {
		domain = from.Domain()
	}
	return left + "@" + domain, nil
}

func (o Options) limit() int64 {
	switch {
	case o.MaxSize == 0:
		return DefaultMaxSize
	case o.MaxSize < 0:
		return -1
	}
	return o.MaxSize
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// Message is an RFC 5322 message ready for DKIM signing and SMTP.
type Message struct {
	// Data is the whole message: CRLF line endings, every line at most 998
	// octets, no Bcc header.
	Data []byte
	// MessageID is the Message-ID header's id without the angle brackets,
	// "01J...@acme.example".
	MessageID string
	// From is the message's From header.
	From Address
	// Subject is the Subject header decoded (RFC 2047), for the message
	// log: a raw message's subject is only in its header.
	Subject string
}

// Build makes the RFC 5322 message for a submission.
//
// A composed submission becomes: text/plain and text/html bodies in
// quoted-printable (multipart/alternative when both are given); attachments
// in base64 under multipart/mixed; attachments with a content_id under
// multipart/related next to the HTML body that refers to them (cid:...)
// when there is one; RFC 2047 encoded words for a non-ASCII subject,
// display names and extra header values. Date (from submit_time, else now)
// and Message-ID (<ULID@from-domain>) are added unless the submission's
// headers give them; MIME-Version is always set; Bcc recipients never
// appear in the message. Every line is at most 998 octets.
//
// A submission with raw_message set goes through PrepareRaw instead; its
// composed fields (subject, bodies, headers, attachments) must be empty,
// and the From of the raw header counts, not the submission's from.
//
// Errors are *AddressError, *HeaderError or *MessageError (all
// errors.Is(err, ErrInvalid)), wrapped with the submission field at fault.
func Build(sub *mailbusv1.Submission, opts Options) (Message, error) {
	if sub == nil {
		return Message{}, messageErrorf("no submission")
	}
	if len(sub.GetRawMessage()) > 0 {
		if f := composedField(sub); f != "" {
			return Message{}, messageErrorf("raw_message is set, so %s must be empty: put it in the raw message instead", f)
		}
		return PrepareRaw(sub.GetRawMessage(), opts)
	}
	b := builder{sub: sub, opts: opts}
	return b.build()
}

// composedField names the first composed field of a raw submission.
func composedField(sub *mailbusv1.Submission) string {
	switch {
	case sub.GetSubject() != "":
		return "subject"
	case sub.GetTextBody() != "":
		return "text_body"
	case sub.GetHtmlBody() != "":
		return "html_body"
	case len(sub.GetHeaders()) > 0:
		return "headers"
	case len(sub.GetAttachments()) > 0:
		return "attachments"
	}
	return ""
}

type builder struct {
	sub  *mailbusv1.Submission
	opts Options
	buf  bytes.Buffer
	// token makes this message's MIME boundaries unique.
	token string
	// parts counts multipart entities so nested boundaries differ.
	parts int
}

// headerSet is what the builder learned from the submission's headers.
type headerSet struct {
	date, messageID string
	extra           []*mailbusv1.Header
}

// singleHeaders may appear at most once (RFC 5322 section 3.6).
var singleHeaders = map[string]bool{
	"date": true, "message-id": true, "in-reply-to": true, "references": true,
}

func (b *builder) build() (Message, error) {
	sub := b.sub
	from, err := addressField("from", sub.GetFrom())
	if err != nil {
		return Message{}, err
	}
	replyTo, err := addressList("reply_to", sub.GetReplyTo())
	if err != nil {
		return Message{}, err
	}
	to, err := addressList("to", sub.GetTo())
	if err != nil {
		return Message{}, err
	}
	cc, err := addressList("cc", sub.GetCc())
	if err != nil {
		return Message{}, err
	}
	if err := checkText("subject", sub.GetSubject(), true); err != nil {
		return Message{}, err
	}
	if err := checkText("text_body", sub.GetTextBody(), false); err != nil {
		return Message{}, err
	}
	if err := checkText("html_body", sub.GetHtmlBody(), false); err != nil {
		return Message{}, err
	}
	hs, err := collectHeaders(sub.GetHeaders())
	if err != nil {
		return Message{}, err
	}
	atts, err := checkAttachments(sub.GetAttachments())
	if err != nil {
		return Message{}, err
	}

	// Refuse an oversized message before spending time encoding it.
	estimate := estimateSize(sub)
	limit := b.opts.limit()
	if limit > 0 && estimate > limit {
		return Message{}, sizeError(estimate, limit, "about ")
	}
	b.buf.Grow(int(estimate))

	b.token = ulid.Make().String()
	msgID := hs.messageID
	if msgID == "" {
		if msgID, err = b.opts.newMessageID(from); err != nil {
			return Message{}, err
		}
	}
	date := hs.date
	if date == "" {
		t := b.opts.now()
		if st := sub.GetSubmitTime(); st != nil && st.IsValid() && st.GetSeconds() > 0 {
			t = st.AsTime()
		}
		date = t.Format(time.RFC1123Z)
	}

	w := &b.buf
	if err := writeField(w, "Date", date); err != nil {
		return Message{}, err
	}
	if err := writeField(w, "From", from.String()); err != nil {
		return Message{}, fmt.Errorf("from: %w", err)
	}
	if len(replyTo) > 0 {
		if err := writeField(w, "Reply-To", joinAddresses(replyTo)); err != nil {
			return Message{}, fmt.Errorf("reply_to: %w", err)
		}
	}
	if sub.GetSubject() != "" {
		if err := writeField(w, "Subject", encodeUnstructured(sub.GetSubject())); err != nil {
			return Message{}, fmt.Errorf("subject: %w", err)
		}
	}
	switch {
	case len(to) > 0:
		if err := writeField(w, "To", joinAddresses(to)); err != nil {
			return Message{}, fmt.Errorf("to: %w", err)
		}
	case len(cc) == 0:
		// Only Bcc recipients: an empty group says so without revealing
		// them, and avoids the "missing To" penalty of spam filters.
		w.WriteString("To: undisclosed-recipients:;\r\n")
	}
	if len(cc) > 0 {
		if err := writeField(w, "Cc", joinAddresses(cc)); err != nil {
			return Message{}, fmt.Errorf("cc: %w", err)
		}
	}
	if err := writeField(w, "Message-ID", "<"+msgID+">"); err != nil {
		return Message{}, err
	}
	for _, h := range hs.extra {
		if err := writeField(w, h.GetName(), encodeUnstructured(h.GetValue())); err != nil {
			return Message{}, fmt.Errorf("headers: %w", err)
		}
	}
	w.WriteString("MIME-Version: 1.0\r\n")
	b.writeBody(atts)

	if limit > 0 && int64(w.Len()) > limit {
		return Message{}, sizeError(int64(w.Len()), limit, "")
	}
	return Message{Data: w.Bytes(), MessageID: msgID, From: from, Subject: b.sub.GetSubject()}, nil
}

func addressField(field string, a *mailbusv1.Address) (Address, error) {
	if a == nil || a.GetEmail() == "" {
		return Address{}, fmt.Errorf("%s: %w", field, &AddressError{Input: "", Reason: "missing address"})
	}
	addr, err := NewAddress(a.GetName(), a.GetEmail())
	if err != nil {
		return Address{}, fmt.Errorf("%s: %w", field, err)
	}
	return addr, nil
}

func addressList(field string, list []*mailbusv1.Address) ([]Address, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]Address, 0, len(list))
	for i, a := range list {
		addr, err := addressField(field+"["+strconv.Itoa(i)+"]", a)
		if err != nil {
			return nil, err
		}
		out = append(out, addr)
	}
	return out, nil
}

func joinAddresses(list []Address) string {
	if len(list) == 1 {
		return list[0].String()
	}
	var s strings.Builder
	for i, a := range list {
		if i > 0 {
			s.WriteString(", ")
		}
		s.WriteString(a.String())
	}
	return s.String()
}

// checkText rejects text fields that are not UTF-8 and, for single-line
// fields, line breaks (header injection).
func checkText(field, s string, singleLine bool) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: %w", field, messageErrorf("%s is not valid UTF-8", field))
	}
	if singleLine {
		if i := strings.IndexAny(s, "\r\n\x00"); i >= 0 {
			if s[i] == 0 {
				return fmt.Errorf("%s: %w", field, messageErrorf("%s contains a NUL character", field))
			}
			return fmt.Errorf("%s: %w", field, messageErrorf("%s contains a line break (CR or LF); a subject is one line", field))
		}
		for _, r := range s {
			if (r < 0x20 && r != '\t') || r == 0x7f {
				return fmt.Errorf("%s: %w", field, messageErrorf("%s contains control character %U", field, r))
			}
		}
		return nil
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s: %w", field, messageErrorf("%s contains a NUL character", field))
	}
	return nil
}

func collectHeaders(hs []*mailbusv1.Header) (headerSet, error) {
	var out headerSet
	var seen map[string]bool
	for i, h := range hs {
		if err := ValidateHeader(h.GetName(), h.GetValue()); err != nil {
			return out, fmt.Errorf("headers[%d]: %w", i, err)
		}
		lower := strings.ToLower(h.GetName())
		if singleHeaders[lower] {
			if seen[lower] {
				return out, fmt.Errorf("headers[%d]: %w", i, &HeaderError{Name: h.GetName(), Reason: "given twice; a message has at most one"})
			}
			if seen == nil {
				seen = map[string]bool{}
			}
			seen[lower] = true
		}
		switch lower {
		case "date":
			out.date = strings.TrimSpace(h.GetValue())
		case "message-id":
			out.messageID, _ = parseMsgID(h.GetValue())
		default:
			out.extra = append(out.extra, h)
		}
	}
	return out, nil
}

// attachment is a validated attachment with its header values prepared.
type attachment struct {
	a           *mailbusv1.Attachment
	contentType string // with the name parameter
	disposition string // with the filename parameter
	contentID   string // without brackets; empty when none
	message     bool   // message/* content, which must not be base64 (RFC 2046 5.2.1)
}

func checkAttachments(list []*mailbusv1.Attachment) ([]attachment, error) {
	out := make([]attachment, 0, len(list))
	for i, a := range list {
		at, err := checkAttachment(a)
		if err != nil {
			name := a.GetFilename()
			if name == "" {
				name = a.GetContentId()
			}
			return nil, fmt.Errorf("attachments[%d] %q: %w", i, clip(name), err)
		}
		out = append(out, at)
	}
	return out, nil
}

func checkAttachment(a *mailbusv1.Attachment) (attachment, error) {
	name := a.GetFilename()
	if reason := forbiddenControl(name); reason != "" {
		return attachment{}, messageErrorf("file name %s", reason)
	}
	if !utf8.ValidString(name) {
		return attachment{}, messageErrorf("file name is not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return attachment{}, messageErrorf("file name contains control character %U", r)
		}
	}
	if len(name) > 255 {
		return attachment{}, messageErrorf("file name is %d octets; at most 255 are allowed", len(name))
	}
	cid := strings.TrimSuffix(strings.TrimPrefix(a.GetContentId(), "<"), ">")
	if a.GetContentId() != "" {
		if cid == "" || len(cid) > 250 {
			return attachment{}, messageErrorf("content_id must be 1 to 250 characters")
		}
		for i := 0; i < len(cid); i++ {
			if c := cid[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' || c == '"' || c == '\\' {
				return attachment{}, messageErrorf("content_id %q contains %q; use printable ASCII without spaces, quotes or brackets", cid, c)
			}
		}
	}
	if name == "" && cid == "" {
		return attachment{}, messageErrorf("an attachment needs a filename (or a content_id for an inline part)")
	}
	ct := a.GetContentType()
	if ct == "" {
		ct = mime.TypeByExtension(strings.ToLower(path.Ext(name)))
		if ct == "" {
			ct = "application/octet-stream"
		}
	}
	mediaType, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return attachment{}, messageErrorf("content_type %q is not a MIME type such as application/pdf: %v", ct, err)
	}
	if strings.HasPrefix(mediaType, "multipart/") {
		return attachment{}, messageErrorf("content_type %q: a multipart attachment cannot be sent as a file; attach its parts instead", ct)
	}
	at := attachment{a: a, contentID: cid}
	if strings.HasPrefix(mediaType, "message/") {
		if !is7bitText(a.GetContent()) {
			return attachment{}, messageErrorf("content_type %s needs 7-bit content with CRLF lines of at most 998 octets (RFC 2046 forbids base64 for it); send it as application/octet-stream", mediaType)
		}
		at.message = true
	}
	disp := "attachment"
	if a.GetInline() || cid != "" {
		disp = "inline"
	}
	if name != "" {
		params["name"] = name
	}
	at.contentType = mime.FormatMediaType(mediaType, params)
	if at.contentType == "" {
		return attachment{}, messageErrorf("content_type %q has parameters that cannot be written", ct)
	}
	if name != "" {
		at.disposition = mime.FormatMediaType(disp, map[string]string{"filename": name})
	} else {
		at.disposition = disp
	}
	return at, nil
}

// is7bitText reports content that can go in a message/* part unencoded.
func is7bitText(p []byte) bool {
	lineLen := 0
	for i, c := range p {
		switch {
		case c == '\n':
			if i == 0 || p[i-1] != '\r' {
				return false
			}
			lineLen = 0
		case c == '\r':
			if i+1 >= len(p) || p[i+1] != '\n' {
				return false
			}
		case c == 0 || c >= 0x80:
			return false
		default:
			lineLen++
			if lineLen > MaxLineLen {
				return false
			}
		}
	}
	return true
}

// estimateSize is an upper bound of the encoded size, used to refuse an
// oversized message before encoding it and to size the buffer once.
func estimateSize(sub *mailbusv1.Submission) int64 {
	n := int64(2048 + len(sub.GetSubject())*3)
	for _, h := range sub.GetHeaders() {
		n += int64(len(h.GetName()) + len(h.GetValue())*3 + 4)
	}
	n += int64(len(sub.GetTo())+len(sub.GetCc())+len(sub.GetReplyTo())) * 160
	// Quoted-printable of mostly-ASCII text grows by a few percent; the
	// estimate only needs to be close, the real size is checked after.
	n += qpEstimate(sub.GetTextBody()) + qpEstimate(sub.GetHtmlBody())
	for _, a := range sub.GetAttachments() {
		enc := int64(base64.StdEncoding.EncodedLen(len(a.GetContent())))
		n += enc + enc/76*2 + 512
	}
	return n
}

func qpEstimate(s string) int64 {
	if s == "" {
		return 0
	}
	return int64(len(s)) + int64(len(s))/12 + 256
}

func sizeError(size, limit int64, about string) *MessageError {
	return &MessageError{
		Reason: fmt.Sprintf("message is %s%s after encoding, over the %s limit (base64 makes attachments about a third larger)",
			about, formatSize(size), formatSize(limit)),
		Size:  size,
		Limit: limit,
	}
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<20:
		s := strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64)
		return strings.TrimSuffix(s, ".0") + " MiB"
	case n >= 1<<10:
		s := strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64)
		return strings.TrimSuffix(s, ".0") + " KiB"
	}
	return strconv.FormatInt(n, 10) + " octets"
}

// writeBody writes the MIME structure:
//
//	mixed                       when there are attachments
//	├── alternative             when there are both bodies
//	│   ├── text/plain
//	│   └── related             when parts have a content_id
//	│       ├── text/html
//	│       └── inline parts
//	└── attachments
func (b *builder) writeBody(atts []attachment) {
	text, html := b.sub.GetTextBody(), b.sub.GetHtmlBody()
	var related, mixed []attachment
	for _, a := range atts {
		if a.contentID != "" && html != "" {
			related = append(related, a)
		} else {
			mixed = append(mixed, a)
		}
	}
	htmlPart := func() {
		if len(related) == 0 {
			b.writeText("html", html)
			return
		}
		b.writeMultipart("related", `; type="text/html"`, 1+len(related), func(i int) {
			if i == 0 {
				b.writeText("html", html)
				return
			}
			b.writeAttachment(related[i-1])
		})
	}
	bodyPart := func() {
		switch {
		case text != "" && html != "":
			b.writeMultipart("alternative", "", 2, func(i int) {
				if i == 0 {
					b.writeText("plain", text)
				} else {
					htmlPart()
				}
			})
		case html != "":
			htmlPart()
		default:
			b.writeText("plain", text)
		}
	}
	if len(mixed) == 0 {
		bodyPart()
		return
	}
	// A message of attachments only has no body part at all.
	hasBody := text != "" || html != ""
	first := 0
	if !hasBody {
		first = 1
	}
	b.writeMultipart("mixed", "", len(mixed)+1-first, func(i int) {
		i += first
		if i == 0 {
			bodyPart()
			return
		}
		b.writeAttachment(mixed[i-1])
	})
}

// writeMultipart writes a multipart entity's header and n parts. Its
// boundary starts with "=_", which can occur neither in quoted-printable
// (which encodes "=") nor in base64, so it cannot collide with the parts;
// the message's ULID and a counter keep nested boundaries apart.
func (b *builder) writeMultipart(subtype, params string, n int, part func(i int)) {
	b.parts++
	boundary := "=_" + b.token + "_" + strconv.Itoa(b.parts)
	w := &b.buf
	w.WriteString("Content-Type: multipart/")
	w.WriteString(subtype)
	w.WriteString(params)
	w.WriteString(";\r\n boundary=\"")
	w.WriteString(boundary)
	w.WriteString("\"\r\n\r\n")
	for i := range n {
		if i > 0 {
			w.WriteString("\r\n")
		}
		w.WriteString("--")
		w.WriteString(boundary)
		w.WriteString("\r\n")
		part(i)
	}
	w.WriteString("\r\n--")
	w.WriteString(boundary)
	w.WriteString("--\r\n")
}

func (b *builder) writeText(subtype, text string) {
	w := &b.buf
	w.WriteString("Content-Type: text/")
	w.WriteString(subtype)
	w.WriteString("; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	writeQuotedPrintable(w, text)
}

func (b *builder) writeAttachment(a attachment) {
	w := &b.buf
	// These cannot fail: mime.FormatMediaType separates parameters with
	// "; " where writeField can fold, and a file name of at most 255
	// octets stays under 998 even percent-encoded (RFC 2231).
	_ = writeField(w, "Content-Type", a.contentType)
	_ = writeField(w, "Content-Disposition", a.disposition)
	if a.contentID != "" {
		w.WriteString("Content-ID: <")
		w.WriteString(a.contentID)
		w.WriteString(">\r\n")
	}
	if a.message {
		w.WriteString("Content-Transfer-Encoding: 7bit\r\n\r\n")
		w.Write(a.a.GetContent())
		return
	}
	w.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
	writeBase64Lines(w, a.a.GetContent())
}

// writeBase64Lines writes base64 in 76-character lines (RFC 2045 6.8),
// CRLF between lines and none after the last, encoding straight into the
// buffer.
func writeBase64Lines(w *bytes.Buffer, p []byte) {
	const chunk = 57 // 57 octets encode to 76 characters
	if len(p) == 0 {
		return
	}
	lines := (len(p) + chunk - 1) / chunk
	total := base64.StdEncoding.EncodedLen(len(p)) + (lines-1)*2
	w.Grow(total)
	dst := w.AvailableBuffer()[:total]
	o := 0
	for len(p) > 0 {
		n := min(chunk, len(p))
		base64.StdEncoding.Encode(dst[o:], p[:n])
		o += base64.StdEncoding.EncodedLen(n)
		p = p[n:]
		if len(p) > 0 {
			dst[o], dst[o+1] = '\r', '\n'
			o += 2
		}
	}
	w.Write(dst)
}

// writeQuotedPrintable writes UTF-8 text as quoted-printable (RFC 2045
// section 6.7): "\n" and "\r\n" line breaks become CRLF, "=", controls,
// non-ASCII octets and whitespace at the end of a line are encoded, and
// soft line breaks keep lines within 76 characters. Text that does not end
// with a line break gets a final soft line break, so that the message ends
// with CRLF (as SMTP and DKIM want) while the text decodes exactly as
// given.
//
// Hand-written rather than mime/quotedprintable because that writer was
// three quarters of the time of building a 10 KB message (it works byte by
// byte through an io.Writer); this copies runs of plain text at once. Its
// output is checked against mime/quotedprintable's reader by tests and a
// fuzz target.
func writeQuotedPrintable(w *bytes.Buffer, s string) {
	if s == "" {
		return
	}
	const hex = "0123456789ABCDEF"
	const maxLine = 75 // plus the "=" of a soft line break makes 76
	w.Grow(len(s) + len(s)/16 + 16)
	dst := w.AvailableBuffer()
	lineLen := 0
	for i := 0; i < len(s); {
		// Copy the run of characters that stand for themselves, up to
		// the end of the line.
		j, limit := i, min(len(s), i+maxLine-lineLen)
		for j < limit && qpLiteral[s[j]] {
			j++
		}
		if j > i && (s[j-1] == ' ' || s[j-1] == '\t') && atLineEnd(s, j) {
			j-- // whitespace at the end of a line is encoded below
		}
		dst = append(dst, s[i:j]...)
		lineLen += j - i
		i = j
		if i == len(s) {
			break
		}
		c := s[i]
		if c == '\n' || c == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			if c == '\r' {
				i++
			}
			i++
			dst = append(dst, '\r', '\n')
			lineLen = 0
			continue
		}
		// Whitespace at the end of a line would be stripped in transit,
		// so it is encoded there.
		literal := qpLiteral[c] && !((c == ' ' || c == '\t') && atLineEnd(s, i+1))
		n := 1
		if !literal {
			n = 3
		}
		if lineLen+n > maxLine {
			dst = append(dst, '=', '\r', '\n')
			lineLen = 0
		}
		if literal {
			dst = append(dst, c)
		} else {
			dst = append(dst, '=', hex[c>>4], hex[c&0x0f])
		}
		lineLen += n
		i++
	}
	if lineLen > 0 {
		dst = append(dst, '=', '\r', '\n')
	}
	w.Write(dst)
}

// qpLiteral marks the octets quoted-printable writes as themselves:
// printable ASCII except "=", and space and tab (unless at a line's end).
var qpLiteral = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = c != '='
	}
	t[' '], t['\t'] = true, true
	return t
}()

// atLineEnd reports whether s[i:] starts with a line break or is empty.
func atLineEnd(s string, i int) bool {
	return i == len(s) || s[i] == '\n' || s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n'
}
