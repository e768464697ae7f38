package bounce

import (
	"bytes"
	"html"
	"regexp"
	"strings"
)

// mail is the parsed view of a bounce that the format readers work on.
type mail struct {
	header  header // top-level header of the bounce
	subject string // decoded Subject
	from    string // decoded From
	root    *entity

	// texts are the human-readable parts of the report, decoded to UTF-8,
	// in order. For a single-part bounce it is the body before the
	// returned message.
	texts []string
	// dsn holds the bodies of message/delivery-status parts.
	dsn []string
	// feedback holds the bodies of message/feedback-report parts.
	feedback []string
	// original is the header of the returned message, when found.
	original header
	// originalBody is the body of the returned message (may be empty).
	originalBody string
	// received are the bounce's Received fields, newest first, looked up
	// once rather than for every recipient.
	received []string
	// reportText is report(), joined once texts are final (see newMail).
	reportText string
	// size is the length of the message in bytes.
	size int
	// shareLeft is what share may still hand out.
	shareLeft int
	// memo holds report-wide results that readers need for every
	// recipient (see once).
	memo map[string]string
}

// report returns the human-readable text joined into one string.
func (m *mail) report() string {
	return m.reportText
}

// share returns text, a report-wide text that a reader gives to one more
// recipient (the report's error lines, the server's replies), or as much of
// it as the message's budget still allows: a crafted report listing
// thousands of recipients must not multiply the text, and the work spent on
// it, by their number. The budget, the message's size and an allowance, is
// far more than real reports use.
func (m *mail) share(text string) string {
	text = clipText(text, max(m.shareLeft, 0))
	m.shareLeft -= len(text)
	return text
}

// once returns fn(m.report()), computed on the first call for key. Readers
// that look at the whole report for every recipient use it, so that a
// report listing thousands of recipients is read once, not once for each.
func (m *mail) once(key string, fn func(report string) string) string {
	if v, ok := m.memo[key]; ok {
		return v
	}
	if m.memo == nil {
		m.memo = map[string]string{}
	}
	v := fn(m.report())
	m.memo[key] = v
	return v
}

// maxInput bounds the bytes examined: bounces are small, and a returned
// copy of a huge message adds nothing to the diagnosis.
const maxInput = 2 << 20

// newMail parses raw into a mail view. It never fails: garbage gives a
// mail with whatever could be recognised.
func newMail(raw []byte) *mail {
	root := parseEntity(raw, 0)
	m := &mail{header: root.header, root: root, received: root.header.values("received"), size: len(raw),
		shareLeft: len(raw) + classifyAllowance}
	m.subject = strings.TrimSpace(root.header.text("subject"))
	m.from = root.header.text("from")
	m.collect(root, 0)
	for i, t := range m.texts {
		m.texts[i] = unquoteForward(t)
	}
	if len(m.original) == 0 {
		m.findInlineOriginal()
	}
	// The texts are final: readers call report() many times.
	m.reportText = strings.Join(m.texts, "\n")
	return m
}

// unquoteForward removes one level of "> " quoting when a bounce was
// forwarded inline by a person ("Begin forwarded message:").
func unquoteForward(t string) string {
	lines := strings.Split(t, "\n")
	quoted, total := 0, 0
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		total++
		if strings.HasPrefix(l, ">") && !strings.HasPrefix(l, ">>> ") {
			quoted++
		}
	}
	if total == 0 || quoted*2 < total {
		return t
	}
	for i, l := range lines {
		if strings.HasPrefix(l, ">") {
			l = l[1:]
			if strings.HasPrefix(l, " ") {
				l = l[1:]
			}
			lines[i] = l
		}
	}
	return strings.Join(lines, "\n")
}

// splitMbox splits raw into messages at mbox "From " separator lines, so
// that a mailbox of bounces reads as several messages.
func splitMbox(raw []byte) [][]byte {
	var out [][]byte
	start := 0
	for i := 0; i < len(raw); {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			break
		}
		next := i + j + 1
		if next < len(raw) && bytes.HasPrefix(raw[next:], []byte("From ")) && (next-start) > 0 &&
			next >= 2 && raw[next-2] == '\n' && isMboxFromLine(raw[next:]) {
			out = append(out, raw[start:next])
			start = next
		}
		i = next
	}
	return append(out, raw[start:])
}

// isMboxFromLine reports whether b starts with "From sender date".
func isMboxFromLine(b []byte) bool {
	line := b
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line = b[:i]
	}
	f := strings.Fields(string(line))
	// From MAILER-DAEMON  Thu Apr 29 23:34:45 2015
	return len(f) >= 6 && f[0] == "From" && len(f[len(f)-1]) == 4 && isDigit(f[len(f)-1][0])
}

// collect walks the MIME tree sorting parts into report text, status
// parts and the returned message.
func (m *mail) collect(e *entity, depth int) {
	switch {
	case strings.HasPrefix(e.mediaType, "multipart/"):
		if len(e.parts) == 0 {
			// A multipart without recognisable parts: use it as text.
			m.addText(e)
			return
		}
		if e.mediaType == "multipart/alternative" {
			m.collectAlternative(e, depth)
			return
		}
		for _, p := range e.parts {
			m.collect(p, depth+1)
		}
	case e.mediaType == "message/delivery-status" || e.mediaType == "message/global-delivery-status" ||
		e.mediaType == "text/delivery-status":
		m.dsn = append(m.dsn, e.text())
	case e.mediaType == "message/feedback-report":
		m.feedback = append(m.feedback, e.text())
	case e.inner != nil:
		if len(m.original) == 0 {
			if isBounceEnvelope(e.inner) && depth < 3 && len(m.dsn) == 0 && !m.textHasAddress() {
				// Some gateways wrap the whole bounce in message/rfc822
				// (lhost-x5 style forwards): read into it.
				m.collect(e.inner, depth+1)
				return
			}
			m.original = e.inner.header
			m.originalBody = e.inner.text()
		}
	case e.mediaType == "text/rfc822-headers" || e.mediaType == "message/rfc822-headers" ||
		e.mediaType == "message/global-headers":
		if len(m.original) == 0 {
			m.original, _ = splitHeader(bytes.TrimLeft(e.body, "\n"))
		}
	case strings.HasPrefix(e.mediaType, "text/"):
		m.addText(e)
	}
}

// textHasAddress reports whether the report text names any address; a
// report without one is a cover note around a forwarded bounce.
func (m *mail) textHasAddress() bool {
	for _, t := range m.texts {
		if strings.Contains(t, "@") {
			return true
		}
	}
	return false
}

// isBounceEnvelope reports whether an enclosed message is itself a bounce
// (a forwarded DSN) rather than the returned original.
func isBounceEnvelope(e *entity) bool {
	ct := e.mediaType
	if strings.HasPrefix(ct, "multipart/report") {
		return true
	}
	from := strings.ToLower(e.header.get("from"))
	subj := strings.ToLower(e.header.get("subject"))
	return (strings.Contains(from, "mailer-daemon") || strings.Contains(from, "postmaster")) &&
		(strings.Contains(subj, "deliver") || strings.Contains(subj, "return") || strings.Contains(subj, "fail"))
}

// collectAlternative prefers text/plain over text/html.
func (m *mail) collectAlternative(e *entity, depth int) {
	var plain, other *entity
	for _, p := range e.parts {
		switch {
		case p.mediaType == "text/plain" && plain == nil:
			plain = p
		case other == nil:
			other = p
		}
	}
	if plain != nil && strings.TrimSpace(plain.text()) != "" {
		m.addText(plain)
		return
	}
	if other != nil {
		m.collect(other, depth+1)
	}
}

// addText adds a text part to the report, unless it is really the returned
// original message attached as text (some MTAs do that).
func (m *mail) addText(e *entity) {
	t := e.text()
	if e.mediaType == "text/html" {
		t = htmlToText(t)
	}
	if len(m.texts) > 0 && len(m.original) == 0 && looksLikeMessage(t) {
		h, body := splitHeader([]byte(strings.TrimLeft(t, "\n")))
		m.original = h
		m.originalBody = string(body)
		return
	}
	m.texts = append(m.texts, t)
}

// looksLikeMessage reports whether t starts with an RFC 5322 header block.
func looksLikeMessage(t string) bool {
	h, _ := splitHeader([]byte(strings.TrimLeft(t, "\n")))
	if len(h) < 3 {
		return false
	}
	known := 0
	for _, f := range h {
		switch f.key {
		case "received", "return-path", "from", "to", "subject", "message-id", "date", "mime-version":
			known++
		}
	}
	return known >= 3
}

var (
	reBreaks  = regexp.MustCompile(`(?i)<br\s*/?>|</p>|</div>|</tr>|</li>|</h[1-6]>`)
	reSpaces  = regexp.MustCompile(`[ \t\x{00a0}]+`)
	reNewline = regexp.MustCompile(`\n\s*\n+`)
)

// htmlToText turns an HTML report into plain text good enough for phrase
// matching.
func htmlToText(s string) string {
	s = reBreaks.ReplaceAllString(s, "\n")
	s = stripTags(s)
	s = html.UnescapeString(s)
	s = reSpaces.ReplaceAllString(s, " ")
	s = reNewline.ReplaceAllString(s, "\n\n")
	return s
}

// stripTags replaces every script or style element and every other tag
// with a space: what the regular expression
//
//	(?s)<(script|style)[^>]*>.*?</(script|style)>|<[^>]*>
//
// replaces, in one pass. The expression itself costs the square of the
// input: at every "<script" without a closing tag it scans to the end of
// the text before falling back to the plain tag, so a crafted HTML report
// would stall the bounce listener for minutes.
func stripTags(s string) string {
	var b strings.Builder
	gt := finder{s: s, needle: ">"}
	endScript := finder{s: s, needle: "</script>"}
	endStyle := finder{s: s, needle: "</style>"}
	done := 0 // s[:done] is written
	for i := 0; i < len(s); {
		lt := strings.IndexByte(s[i:], '<')
		if lt < 0 {
			break
		}
		i += lt
		// The tag's '>'; the element names hold none, so it is also the
		// end of a script or style start tag.
		j := gt.next(i + 1)
		if j < 0 {
			break // no tag can end after here
		}
		end := j + 1
		if rest := s[i+1:]; strings.HasPrefix(rest, "script") || strings.HasPrefix(rest, "style") {
			// The element ends at the first closing tag of either name.
			k1, k2 := endScript.next(end), endStyle.next(end)
			switch {
			case k1 >= 0 && (k2 < 0 || k1 < k2):
				end = k1 + len("</script>")
			case k2 >= 0:
				end = k2 + len("</style>")
			}
		}
		b.WriteString(s[done:i])
		b.WriteByte(' ')
		done, i = end, end
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// finder finds the first needle at or after a position, for positions that
// never decrease. It remembers its last answer, which stays right until the
// position passes it, so that all the searches of one scan read s once.
type finder struct {
	s, needle string
	searched  bool
	from, at  int // the last search started at from and found at (-1: none)
}

func (f *finder) next(from int) int {
	if f.searched && from >= f.from && (f.at < 0 || f.at >= from) {
		return f.at
	}
	f.searched, f.from, f.at = true, from, -1
	if from <= len(f.s) {
		if i := strings.Index(f.s[from:], f.needle); i >= 0 {
			f.at = from + i
		}
	}
	return f.at
}

// inlineMarkers start the returned copy of the message in single-part
// bounces (qmail, Exim, Sendmail, Courier and their clones).
var inlineMarkers = []string{
	"--- Below this line is a copy of the message.",
	"--- Below this line is a copy of the mail header.",
	"--- Below the next line is a copy of the message.",
	"------ This is a copy of the message, including all the headers. ------",
	"------ This is a copy of the message's headers. ------",
	"----- This is a copy of the message, including all the headers. ------",
	"------ This is a copy of your message, including all the headers. ------",
	"------ This is a copy of the body of the message, without the headers. ------",
	"   ----- Original message -----",
	"   ----- Unsent message follows -----",
	"   ----- Message header follows -----",
	"----- Original message -----",
	"------ Original message ------",
	"----- Unsent message follows -----",
	"----- Message header follows -----",
	"--- Original message follows.",
	"Original message follows.",
	"--- Mensaje original adjunto.",
	"Content-Type: message/rfc822",
	"Content-Type: text/rfc822-headers",
	"Included is a copy of the message header:",
	"-------- Original Message --------",
	"------------------- original message follows -------------------",
	"The original message was received at",
	"--------------- Original Message ---------------",
	"The headers of your message are below",
	"Below is a copy of the original message:",
	"Below is the message you sent",
	"    ----- Original message follows -----",
	"------- Returned Message --------",
	"----- Original Message -----",
	"--------Returned Mail--------",
	"   -----Original Message-----",
	"Original Message Headers",
	"----- The header of the original message is following. -----",
	"--- The header of the original message is following. ---",
	"-- Original message --",
	"Original Message:",
}

// findInlineOriginal looks for the returned message inside a single-part
// report and splits it off the report text.
func (m *mail) findInlineOriginal() {
	for i, t := range m.texts {
		cut, rest := -1, ""
		for _, mk := range inlineMarkers {
			p := strings.Index(t, mk)
			if p < 0 || (cut >= 0 && p >= cut) {
				continue
			}
			if mk == "The original message was received at" {
				// Sendmail puts this line before the report, not the copy.
				continue
			}
			cut = p
			rest = t[p+len(mk):]
		}
		if cut < 0 {
			// A bare header block after a blank line ("\n\nReturn-Path:").
			for _, mk := range []string{"\n\nReturn-Path:", "\n\nReceived:", "\n\nReturn-path:"} {
				if p := strings.Index(t, mk); p >= 0 && (cut < 0 || p < cut) {
					cut = p
					rest = t[p+2:]
				}
			}
			if cut < 0 {
				continue
			}
		}
		// Skip to the header block: rest of marker line and blank lines.
		if nl := strings.IndexByte(rest, '\n'); nl >= 0 && !looksLikeHeaderLine(rest[:nl]) {
			rest = rest[nl+1:]
		}
		rest = strings.TrimLeft(rest, "\n ")
		h, body := splitHeader([]byte(rest))
		if len(h) > 0 {
			m.original = h
			m.originalBody = string(body)
		}
		m.texts[i] = t[:cut]
		for j := i + 1; j < len(m.texts); j++ {
			if len(m.original) == 0 && looksLikeMessage(m.texts[j]) {
				h, body := splitHeader([]byte(strings.TrimLeft(m.texts[j], "\n")))
				m.original, m.originalBody = h, string(body)
			}
		}
		m.texts = m.texts[:i+1]
		return
	}
}

// looksLikeHeaderLine reports whether line is "Field-Name: value".
func looksLikeHeaderLine(line string) bool {
	k, _, ok := strings.Cut(line, ":")
	return ok && isHeaderKey(k)
}
