package bounce

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/charset"
)

// The MIME walker below is deliberately lenient and hand-written on top of
// go-message's charset tables and the standard mime package. Bounces are
// hostile input by nature: RFC 3462 lets an MTA return a truncated copy of
// the message, part headers in the wild carry 8-bit garbage, boundaries go
// missing and quoted-printable is often broken. The library readers
// (go-message's Entity/MultipartReader, mime/multipart) stop at the first
// such error, which would lose the delivery-status part that precedes the
// damage. Here every error degrades to "treat the rest as text".

// maxDepth bounds MIME nesting so that crafted input cannot recurse deeply.
const maxDepth = 12

// field is one header field; key is lower-cased, value is unfolded.
type field struct {
	key   string
	value string
}

// header is an ordered list of header fields.
type header []field

// get returns the first value of the named field (lower-case name).
func (h header) get(key string) string {
	for _, f := range h {
		if f.key == key {
			return f.value
		}
	}
	return ""
}

// values returns every value of the named field in order.
func (h header) values(key string) []string {
	var out []string
	for _, f := range h {
		if f.key == key {
			out = append(out, f.value)
		}
	}
	return out
}

// has reports whether the named field is present.
func (h header) has(key string) bool {
	for _, f := range h {
		if f.key == key {
			return true
		}
	}
	return false
}

// text returns the first value of the field with RFC 2047 encoded words
// decoded to UTF-8.
func (h header) text(key string) string {
	return decodeWords(h.get(key))
}

// wordDecoder decodes RFC 2047 encoded words with every charset go-message
// knows about (ISO-2022-JP, Shift_JIS, ...).
var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

func charsetReader(label string, r io.Reader) (io.Reader, error) {
	return charset.Reader(label, r)
}

// decodeWords decodes RFC 2047 encoded words, keeping the raw text when the
// encoding is broken.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return toUTF8(s)
	}
	out, err := wordDecoder.DecodeHeader(s)
	if err != nil {
		return toUTF8(s)
	}
	return out
}

// isHeaderKey reports whether s is a syntactically valid field name.
func isHeaderKey(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// splitHeader parses a header block at the start of raw (LF line endings)
// and returns it with the remaining body. Parsing stops at the first empty
// line, or at the first line that is neither a field nor a continuation.
//
// The continuation lines of a field are joined once the field ends, not
// appended one by one: a crafted field folded over a million lines would
// otherwise copy its growing value a million times.
func splitHeader(raw []byte) (header, []byte) {
	var h header
	var cont []string // continuation lines of h's last field
	unfold := func() header {
		if len(cont) > 0 {
			last := &h[len(h)-1]
			last.value += " " + strings.Join(cont, " ")
			cont = cont[:0]
		}
		return h
	}
	rest := raw
	// An mbox "From " separator line may precede the header.
	if bytes.HasPrefix(rest, []byte("From ")) {
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i+1:]
		}
	}
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		var line []byte
		next := rest[len(rest):]
		if i < 0 {
			line = rest
		} else {
			line = rest[:i]
			next = rest[i+1:]
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			return unfold(), next
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(h) == 0 {
				// A body that starts indented has no header.
				return h, rest
			}
			cont = append(cont, strings.TrimSpace(string(line)))
			rest = next
			continue
		}
		c := bytes.IndexByte(line, ':')
		if c < 1 || !isHeaderKey(strings.TrimRight(string(line[:c]), " \t")) {
			return unfold(), rest
		}
		key := strings.ToLower(strings.TrimRight(string(line[:c]), " \t"))
		unfold()
		h = append(h, field{key: key, value: strings.TrimSpace(string(line[c+1:]))})
		rest = next
	}
	return unfold(), rest
}

// entity is one node of a parsed MIME tree.
type entity struct {
	header    header
	mediaType string            // lower-case type/subtype
	params    map[string]string // content-type parameters
	body      []byte            // transfer-decoded body (still in its charset)
	parts     []*entity         // children of a multipart
	inner     *entity           // the enclosed message of message/rfc822
}

// parseMediaType parses a Content-Type value, falling back to a crude split
// when the parameters are malformed (which bounces often are).
func parseMediaType(v string) (string, map[string]string) {
	if v == "" {
		return "text/plain", map[string]string{}
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return strings.ToLower(mt), params
	}
	params = map[string]string{}
	parts := strings.Split(v, ";")
	mt = strings.ToLower(strings.TrimSpace(parts[0]))
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.Trim(strings.TrimSpace(val), `"'`)
		if _, dup := params[k]; !dup && k != "" {
			params[k] = val
		}
	}
	if !strings.Contains(mt, "/") {
		mt = "text/plain"
	}
	return mt, params
}

// parseEntity parses raw (LF line endings) into an entity tree.
func parseEntity(raw []byte, depth int) *entity {
	h, body := splitHeader(raw)
	return buildEntity(h, body, depth)
}

func buildEntity(h header, body []byte, depth int) *entity {
	e := &entity{header: h}
	e.mediaType, e.params = parseMediaType(h.get("content-type"))
	e.body = decodeTransfer(h.get("content-transfer-encoding"), body)
	if depth >= maxDepth {
		return e
	}
	switch {
	case strings.HasPrefix(e.mediaType, "multipart/"):
		b := e.params["boundary"]
		if b == "" {
			b = guessBoundary(e.body)
		}
		if b != "" {
			for _, p := range splitMultipart(e.body, b) {
				e.parts = append(e.parts, parseEntity(p, depth+1))
			}
		}
	case e.mediaType == "message/rfc822" || e.mediaType == "message/global" ||
		e.mediaType == "message/partial":
		e.inner = parseEntity(e.body, depth+1)
	}
	return e
}

// guessBoundary finds a boundary in a multipart body whose Content-Type lost
// its boundary parameter: the first line that looks like "--something".
func guessBoundary(body []byte) string {
	for _, line := range strings.SplitN(string(body), "\n", 60) {
		line = strings.TrimRight(line, "\r ")
		if strings.HasPrefix(line, "--") && len(line) > 6 && !strings.ContainsAny(line[2:], " \t") {
			return strings.TrimSuffix(line[2:], "--")
		}
	}
	return ""
}

// splitMultipart splits a multipart body on boundary b. A missing close
// delimiter is tolerated: the last part runs to the end of the body.
func splitMultipart(body []byte, b string) [][]byte {
	delim := []byte("--" + b)
	var parts [][]byte
	var cur []byte
	started := false
	closed := false
	rest := body
	for len(rest) > 0 && !closed {
		i := bytes.IndexByte(rest, '\n')
		var line []byte
		adv := len(rest)
		if i < 0 {
			line = rest
		} else {
			line = rest[:i]
			adv = i + 1
		}
		t := bytes.TrimRight(line, "\r \t")
		if bytes.HasPrefix(t, delim) {
			tail := t[len(delim):]
			if len(tail) == 0 || bytes.Equal(tail, []byte("--")) {
				if started {
					parts = append(parts, trimPartEnd(cur))
				}
				started = true
				cur = nil
				if len(tail) == 2 {
					closed = true
				}
				rest = rest[adv:]
				continue
			}
		}
		if started {
			cur = append(cur, rest[:adv]...)
		}
		rest = rest[adv:]
	}
	if started && !closed && len(cur) > 0 {
		parts = append(parts, cur)
	}
	return parts
}

// trimPartEnd removes the line break that belongs to the next delimiter.
func trimPartEnd(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// decodeTransfer undoes a Content-Transfer-Encoding, leniently.
func decodeTransfer(cte string, body []byte) []byte {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		return decodeBase64(body)
	case "quoted-printable":
		return decodeQP(body)
	}
	return body
}

// decodeBase64 decodes base64 ignoring every character outside the
// alphabet and a truncated last quantum.
func decodeBase64(in []byte) []byte {
	clean := make([]byte, 0, len(in))
	for _, c := range in {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
			clean = append(clean, c)
		}
	}
	if len(clean)%4 == 1 {
		clean = clean[:len(clean)-1]
	}
	out := make([]byte, base64.RawStdEncoding.DecodedLen(len(clean)))
	n, err := base64.RawStdEncoding.Decode(out, clean)
	if err != nil {
		return in
	}
	return out[:n]
}

// decodeQP decodes quoted-printable, keeping malformed escapes literally.
func decodeQP(in []byte) []byte {
	out := make([]byte, 0, len(in))
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c != '=' {
			out = append(out, c)
			continue
		}
		// Soft line break: "=" followed by optional whitespace and LF.
		j := i + 1
		for j < len(in) && (in[j] == ' ' || in[j] == '\t' || in[j] == '\r') {
			j++
		}
		if j < len(in) && in[j] == '\n' {
			i = j
			continue
		}
		if j == len(in) {
			i = j
			continue
		}
		if i+2 < len(in) && isHex(in[i+1]) && isHex(in[i+2]) {
			out = append(out, unhex(in[i+1])<<4|unhex(in[i+2]))
			i += 2
			continue
		}
		out = append(out, c)
	}
	return out
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// decodeCharset converts body from the named charset to UTF-8. Unknown or
// lying charsets fall back to detection of ISO-2022-JP escapes, then to the
// raw bytes with invalid sequences replaced.
func decodeCharset(cs string, body []byte) string {
	cs = strings.ToLower(strings.Trim(strings.TrimSpace(cs), `"'`))
	if bytes.Contains(body, []byte("\x1b$B")) || bytes.Contains(body, []byte("\x1b$@")) {
		// Japanese mail often declares us-ascii (or nothing) for JIS text.
		if s, ok := convert("iso-2022-jp", body); ok {
			return s
		}
	}
	switch cs {
	case "", "us-ascii", "ascii", "utf-8", "utf8", "uft-8":
		if utf8.Valid(body) {
			return string(body)
		}
		if cs == "" || strings.HasPrefix(cs, "us") || cs == "ascii" {
			if s, ok := convert("windows-1252", body); ok {
				return s
			}
		}
		return strings.ToValidUTF8(string(body), "\uFFFD")
	}
	if s, ok := convert(cs, body); ok {
		return s
	}
	return toUTF8(string(body))
}

func convert(cs string, body []byte) (string, bool) {
	r, err := charset.Reader(cs, bytes.NewReader(body))
	if err != nil {
		return "", false
	}
	out, err := io.ReadAll(r)
	if err != nil && len(out) == 0 {
		return "", false
	}
	return string(out), true
}

// toUTF8 returns s as valid UTF-8, decoding ISO-2022-JP escapes if present.
func toUTF8(s string) string {
	if strings.Contains(s, "\x1b$B") || strings.Contains(s, "\x1b$@") {
		if out, ok := convert("iso-2022-jp", []byte(s)); ok {
			return out
		}
	}
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// text returns the entity body decoded to UTF-8 (text parts only carry a
// charset; other types are returned as raw bytes made valid).
func (e *entity) text() string {
	return decodeCharset(e.params["charset"], e.body)
}

// walk calls fn for every entity in depth-first order, not descending into
// enclosed messages (message/rfc822), which are the returned original.
func (e *entity) walk(fn func(*entity)) {
	fn(e)
	for _, p := range e.parts {
		p.walk(fn)
	}
}
