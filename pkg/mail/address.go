package mail

import (
	"fmt"
	"mime"
	"net/mail"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// RFC 5321 section 4.5.3.1 size limits, in octets.
const (
	MaxLocalPartLen = 64
	MaxDomainLen    = 255
	// MaxPathLen counts the angle brackets of the SMTP path, so an
	// addr-spec may have at most MaxPathLen-2 octets.
	MaxPathLen = 256
)

// Address is a validated mailbox: an optional display name and an addr-spec
// that any SMTP server accepts without SMTPUTF8.
type Address struct {
	// Name is the display name, decoded to UTF-8; empty when there is none.
	Name string
	// Email is the addr-spec in canonical form: the local part as the
	// mailbox owner spelled it (quoted only when RFC 5322 requires it), "@",
	// and the domain in lowercase A-labels ("bücher.de" becomes
	// "xn--bcher-kva.de").
	Email string
}

// Local returns the local part of the address, quoted when it needs to be.
func (a Address) Local() string {
	i := strings.LastIndexByte(a.Email, '@')
	if i < 0 {
		return a.Email
	}
	return a.Email[:i]
}

// Domain returns the domain of the address (lowercase A-labels, or an
// address literal such as "[192.0.2.1]").
func (a Address) Domain() string {
	i := strings.LastIndexByte(a.Email, '@')
	if i < 0 {
		return ""
	}
	return a.Email[i+1:]
}

// String formats the address for a header field: `Name <local@domain>`,
// with the name quoted or RFC 2047-encoded when it needs to be, or the bare
// addr-spec when there is no name.
func (a Address) String() string {
	if a.Name == "" {
		return a.Email
	}
	return formatPhrase(a.Name) + " <" + a.Email + ">"
}

// ParseAddress parses one RFC 5322 mailbox: a bare addr-spec
// ("bob@example.com"), or a name-addr with a display name that may be
// quoted or RFC 2047-encoded (`"Bob, Jr." <bob@example.com>`). The
// addr-spec must also fit RFC 5321: local part at most 64 octets, domain at
// most 255, path at most 256, the domain made of letter-digit-hyphen labels
// (internationalised domains are converted to A-labels), and the local part
// ASCII because mailbus does not rely on SMTPUTF8. CR, LF and NUL are
// rejected anywhere so that no caller can smuggle a header line through an
// address.
//
// The error is an *AddressError whose message says what to fix.
func ParseAddress(s string) (Address, error) {
	if reason := forbiddenControl(s); reason != "" {
		return Address{}, &AddressError{Input: s, Reason: reason}
	}
	// net/mail is the grammar authority for the name-addr form (comments,
	// quoted and encoded display names); its error messages are terse, so
	// on failure we look for the problem ourselves to say it clearly.
	parsed, err := mail.ParseAddress(s)
	if err != nil {
		if a, ok := parseWithLiteral(s); ok {
			return a, nil
		}
		return Address{}, &AddressError{Input: s, Reason: diagnose(s, err)}
	}
	if reason := controlInName(parsed.Name); reason != "" {
		return Address{}, &AddressError{Input: s, Reason: reason}
	}
	at := strings.LastIndexByte(parsed.Address, '@')
	if at < 0 {
		return Address{}, &AddressError{Input: s, Reason: "missing @"}
	}
	// net/mail hands back the local part unquoted; quote it again if
	// needed so that Email is a valid addr-spec.
	email, reason := canonicalAddrSpec(quoteLocal(parsed.Address[:at]), parsed.Address[at+1:])
	if reason != "" {
		return Address{}, &AddressError{Input: s, Reason: reason}
	}
	return Address{Name: parsed.Name, Email: email}, nil
}

// NewAddress validates a display name and a bare addr-spec given apart, as
// in a Submission's Address, and returns them as an Address with the
// addr-spec in canonical form.
func NewAddress(name, email string) (Address, error) {
	canon, err := NormalizeMailbox(email)
	if err != nil {
		return Address{}, err
	}
	if reason := forbiddenControl(name); reason != "" {
		return Address{}, &AddressError{Input: name, Reason: "display name " + reason}
	}
	if reason := controlInName(name); reason != "" {
		return Address{}, &AddressError{Input: name, Reason: reason}
	}
	if !utf8.ValidString(name) {
		return Address{}, &AddressError{Input: name, Reason: "display name is not valid UTF-8"}
	}
	return Address{Name: name, Email: canon}, nil
}

// ValidateMailbox checks a bare addr-spec such as "bob@example.com" (no
// display name, no angle brackets) against the rules of ParseAddress.
func ValidateMailbox(email string) error {
	_, err := NormalizeMailbox(email)
	return err
}

// NormalizeMailbox validates a bare addr-spec like ValidateMailbox and
// returns its canonical form: the domain lowercased and converted to
// A-labels, needless quotes around the local part removed. The local part's
// case is kept: RFC 5321 leaves it to the receiving server.
func NormalizeMailbox(email string) (string, error) {
	if reason := forbiddenControl(email); reason != "" {
		return "", &AddressError{Input: email, Reason: reason}
	}
	if email == "" {
		return "", &AddressError{Input: email, Reason: "empty address"}
	}
	if strings.TrimSpace(email) != email {
		return "", &AddressError{Input: email, Reason: "leading or trailing whitespace"}
	}
	if strings.ContainsAny(email, "<>") && !strings.HasPrefix(email, `"`) {
		return "", &AddressError{Input: email, Reason: "expected a bare address such as bob@example.com; give the display name separately"}
	}
	local, domain, reason := splitAddrSpec(email)
	if reason != "" {
		return "", &AddressError{Input: email, Reason: reason}
	}
	canon, reason := canonicalAddrSpec(local, domain)
	if reason != "" {
		return "", &AddressError{Input: email, Reason: reason}
	}
	return canon, nil
}

// NormalizeDomain validates a domain name as an address's domain (LDH
// labels, at least two of them, at most 255 octets; internationalised names
// allowed) and returns it in lowercase A-labels. Address literals are not
// domains here: it is for configuration such as sender, bounce and DKIM
// domains.
func NormalizeDomain(domain string) (string, error) {
	if reason := forbiddenControl(domain); reason != "" {
		return "", &AddressError{Input: domain, Reason: reason}
	}
	if strings.HasPrefix(domain, "[") {
		return "", &AddressError{Input: domain, Reason: "an address literal is not a domain name"}
	}
	d, reason := normalizeDomain(domain)
	if reason != "" {
		return "", &AddressError{Input: domain, Reason: reason}
	}
	return d, nil
}

// forbiddenControl rejects the characters that end a header line or a C
// string, whatever the context.
func forbiddenControl(s string) string {
	if i := strings.IndexAny(s, "\r\n\x00"); i >= 0 {
		switch s[i] {
		case 0:
			return "contains a NUL character"
		default:
			return "contains a line break (CR or LF)"
		}
	}
	return ""
}

func controlInName(name string) string {
	for _, r := range name {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return fmt.Sprintf("display name contains control character %U", r)
		}
	}
	return ""
}

// splitAddrSpec splits a bare addr-spec at its separating '@', honouring a
// quoted local part, and reports a readable reason when it cannot.
func splitAddrSpec(s string) (local, domain, reason string) {
	if strings.HasPrefix(s, `"`) {
		end := closingQuote(s)
		if end < 0 {
			return "", "", "unterminated quoted local part"
		}
		rest := s[end+1:]
		if !strings.HasPrefix(rest, "@") {
			if rest == "" {
				return "", "", "missing @ and domain after the quoted local part"
			}
			return "", "", "quoted local part must be followed directly by @"
		}
		return s[:end+1], rest[1:], ""
	}
	switch n := strings.Count(s, "@"); {
	case n == 0:
		return "", "", "missing @: an address looks like name@example.com"
	case n > 1:
		return "", "", "more than one @ (an @ in the local part must be inside double quotes)"
	}
	at := strings.IndexByte(s, '@')
	return s[:at], s[at+1:], ""
}

// closingQuote returns the index of the quote that closes the quoted string
// starting at s[0], or -1.
func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// canonicalAddrSpec validates local (as written, possibly quoted) and
// domain, and returns "local@domain" in canonical form.
func canonicalAddrSpec(local, domain string) (string, string) {
	if local == "" {
		return "", "missing local part before @"
	}
	if domain == "" {
		return "", "missing domain"
	}
	local, reason := canonicalLocal(local)
	if reason != "" {
		return "", reason
	}
	domain, reason = normalizeDomain(domain)
	if reason != "" {
		return "", reason
	}
	if len(local) > MaxLocalPartLen {
		return "", fmt.Sprintf("local part is %d octets; RFC 5321 allows at most %d", len(local), MaxLocalPartLen)
	}
	email := local + "@" + domain
	if len(email)+2 > MaxPathLen {
		return "", fmt.Sprintf("address is %d octets; RFC 5321 allows at most %d", len(email), MaxPathLen-2)
	}
	return email, ""
}

// canonicalLocal validates a local part written as a dot-atom or a quoted
// string and returns the dot-atom when one suffices, else the quoted form
// with only the escapes it needs.
func canonicalLocal(local string) (string, string) {
	for i := 0; i < len(local); i++ {
		if local[i] >= utf8.RuneSelf {
			return "", fmt.Sprintf("local part %q is not ASCII; mailbus does not send SMTPUTF8 mail", local)
		}
	}
	if !strings.HasPrefix(local, `"`) {
		if reason := checkDotAtom(local); reason != "" {
			return "", reason
		}
		return local, ""
	}
	if len(local) < 2 || closingQuote(local) != len(local)-1 {
		return "", "malformed quoted local part"
	}
	var content strings.Builder
	for i := 1; i < len(local)-1; i++ {
		c := local[i]
		if c == '\\' {
			i++
			c = local[i]
			if c < 0x20 && c != '\t' || c == 0x7f {
				return "", fmt.Sprintf("control character %U in quoted local part", rune(c))
			}
			content.WriteByte(c)
			continue
		}
		if c < 0x20 && c != '\t' || c == 0x7f {
			return "", fmt.Sprintf("control character %U in quoted local part", rune(c))
		}
		content.WriteByte(c)
	}
	if content.Len() == 0 {
		return "", "empty local part"
	}
	return quoteLocal(content.String()), ""
}

// quoteLocal turns unquoted local-part content into its addr-spec form:
// unchanged when it is a dot-atom, else a quoted string.
func quoteLocal(content string) string {
	if checkDotAtom(content) == "" {
		return content
	}
	var b strings.Builder
	b.Grow(len(content) + 4)
	b.WriteByte('"')
	for i := 0; i < len(content); i++ {
		if content[i] == '"' || content[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(content[i])
	}
	b.WriteByte('"')
	return b.String()
}

func checkDotAtom(s string) string {
	if s == "" {
		return "empty local part"
	}
	if s[0] == '.' {
		return "local part starts with a dot"
	}
	if s[len(s)-1] == '.' {
		return "local part ends with a dot"
	}
	if strings.Contains(s, "..") {
		return "local part has two dots in a row"
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && !isAtext(c) {
			if c == ' ' {
				return "local part contains a space; to add a name write \"Name <bob@example.com>\""
			}
			return fmt.Sprintf("local part contains %q, which is only allowed inside double quotes", c)
		}
	}
	return ""
}

// isAtext reports RFC 5322 atext (ASCII only).
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// normalizeDomain validates a domain and returns it in lowercase A-labels.
func normalizeDomain(d string) (string, string) {
	if d == "" {
		return "", "missing domain"
	}
	if d[0] == '[' {
		return normalizeLiteral(d)
	}
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	// The ASCII fast path skips idna for the common case; A-labels
	// ("xn--") still go through it so that their Punycode is checked.
	if !ascii || strings.Contains(strings.ToLower(d), "xn--") {
		if !utf8.ValidString(d) {
			return "", "domain is not valid UTF-8"
		}
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return "", fmt.Sprintf("domain %q is not a valid internationalised domain name: %v", d, err)
		}
		d = a
	}
	d = strings.ToLower(d)
	if len(d) > MaxDomainLen {
		return "", fmt.Sprintf("domain is %d octets; RFC 5321 allows at most %d", len(d), MaxDomainLen)
	}
	if strings.HasSuffix(d, ".") {
		return "", "domain ends with a dot"
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return "", fmt.Sprintf("domain %q has no dot; use a fully qualified domain such as example.com", d)
	}
	for _, l := range labels {
		if reason := checkLabel(l); reason != "" {
			return "", fmt.Sprintf("domain %q: %s", d, reason)
		}
	}
	tld := labels[len(labels)-1]
	if strings.Trim(tld, "0123456789") == "" {
		return "", fmt.Sprintf("domain %q looks like an IP address; write it as a literal: [%s]", d, d)
	}
	return d, ""
}

func checkLabel(l string) string {
	if l == "" {
		return "empty label (two dots in a row, or a leading dot)"
	}
	if len(l) > 63 {
		return fmt.Sprintf("label %q is %d octets; DNS allows at most 63", clip(l), len(l))
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Sprintf("label %q starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Sprintf("label %q contains %q; only letters, digits and hyphens are allowed", l, c)
		}
	}
	return ""
}

// normalizeLiteral validates an RFC 5321 address literal: [IPv4] or
// [IPv6:addr].
func normalizeLiteral(d string) (string, string) {
	if !strings.HasSuffix(d, "]") {
		return "", "address literal is missing its closing ]"
	}
	inner := d[1 : len(d)-1]
	if v6, ok := strings.CutPrefix(inner, "IPv6:"); ok || strings.HasPrefix(strings.ToLower(inner), "ipv6:") {
		if !ok {
			v6 = inner[5:]
		}
		ip, err := netip.ParseAddr(v6)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", fmt.Sprintf("address literal %q is not an IPv6 address", d)
		}
		return "[IPv6:" + ip.String() + "]", ""
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || !ip.Is4() {
		return "", fmt.Sprintf("address literal %q is not an IPv4 address (IPv6 is written [IPv6:...])", d)
	}
	return "[" + ip.String() + "]", ""
}

// parseWithLiteral parses a mailbox whose domain is an IPv6 address
// literal, which net/mail does not accept ("[IPv6:2001:db8::1]" has
// colons); RFC 5321 allows it.
func parseWithLiteral(s string) (Address, bool) {
	t := strings.TrimSpace(s)
	namePart, spec := "", t
	if i := strings.LastIndexByte(t, '<'); i >= 0 {
		if !strings.HasSuffix(t, ">") {
			return Address{}, false
		}
		namePart, spec = t[:i], t[i+1:len(t)-1]
	}
	if !strings.HasSuffix(spec, "]") || !strings.Contains(spec, "@[") {
		return Address{}, false
	}
	local, domain, reason := splitAddrSpec(spec)
	if reason != "" {
		return Address{}, false
	}
	email, reason := canonicalAddrSpec(local, domain)
	if reason != "" {
		return Address{}, false
	}
	name := ""
	if strings.TrimSpace(namePart) != "" {
		// Let net/mail decode the display name next to a stand-in address.
		p, err := mail.ParseAddress(namePart + "<x@example.com>")
		if err != nil || controlInName(p.Name) != "" {
			return Address{}, false
		}
		name = p.Name
	}
	return Address{Name: name, Email: email}, true
}

// diagnose finds, in input that net/mail rejected, the problem a person
// would fix, falling back to net/mail's own words.
func diagnose(s string, err error) string {
	t := strings.TrimSpace(s)
	if t == "" {
		return "empty address"
	}
	for _, r := range t {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return fmt.Sprintf("contains control character %U", r)
		}
	}
	candidate := t
	if i := strings.LastIndexByte(t, '<'); i >= 0 {
		j := strings.IndexByte(t[i:], '>')
		if j < 0 {
			return "missing closing '>'"
		}
		candidate = t[i+1 : i+j]
		if strings.TrimSpace(t[i+j+1:]) != "" && !strings.HasPrefix(strings.TrimSpace(t[i+j+1:]), "(") {
			return "unexpected text after '>'"
		}
	} else if strings.Contains(t, ">") {
		return "'>' without a matching '<'"
	} else if strings.Contains(t, ",") && !strings.HasPrefix(t, `"`) {
		return "expected one address, found a list (or an unquoted comma)"
	}
	local, domain, reason := splitAddrSpec(candidate)
	if reason == "" {
		_, reason = canonicalAddrSpec(local, domain)
	}
	if reason != "" {
		return reason
	}
	return strings.TrimPrefix(err.Error(), "mail: ")
}

// formatPhrase writes a display name as an RFC 5322 phrase: bare atoms
// when possible, a quoted string for ASCII with specials, and RFC 2047
// encoded words for non-ASCII text.
func formatPhrase(name string) string {
	ascii, plain := true, true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= utf8.RuneSelf {
			ascii = false
			continue
		}
		if !isAtext(c) && c != ' ' {
			plain = false
		}
	}
	if ascii {
		// "=?" would make a reader decode the name as an encoded word.
		if plain && !strings.Contains(name, "=?") && !strings.HasPrefix(name, " ") && !strings.HasSuffix(name, " ") && !strings.Contains(name, "  ") {
			return name
		}
		var b strings.Builder
		b.Grow(len(name) + 4)
		b.WriteByte('"')
		for i := 0; i < len(name); i++ {
			if name[i] == '"' || name[i] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(name[i])
		}
		b.WriteByte('"')
		return b.String()
	}
	// In a phrase an encoded word may only contain letters, digits and
	// !*+-/=_ (RFC 2047 section 5). Go's Q encoder leaves other ASCII
	// punctuation (",", "(", ".") unencoded, which breaks parsers such as
	// net/mail, so such names use B encoding instead.
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < utf8.RuneSelf && !isPhraseQSafe(c) {
			return mime.BEncoding.Encode("utf-8", name)
		}
	}
	return mime.QEncoding.Encode("utf-8", name)
}

func isPhraseQSafe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte(" !*+-/", c) >= 0
}
