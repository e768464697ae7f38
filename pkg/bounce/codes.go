package bounce

import (
	"strconv"
	"strings"
)

// Helpers that find SMTP reply codes, RFC 3463 enhanced status codes, SMTP
// commands and addresses in free text.

// replyCodes are the SMTP reply codes a failure report can carry (RFC
// 5321, 1985, 2645, 3207, 4954, 5248, 7504). Numbers outside this list are
// more likely queue ids, ports or years than replies.
var replyCodes = map[int]bool{
	211: true, 214: true, 220: true, 221: true, 235: true, 250: true, 251: true, 252: true, 253: true,
	334: true, 354: true,
	421: true, 422: true, 430: true, 432: true, 450: true, 451: true, 452: true, 453: true, 454: true,
	455: true, 458: true, 459: true,
	500: true, 501: true, 502: true, 503: true, 504: true, 521: true, 523: true, 524: true, 525: true,
	530: true, 533: true, 534: true, 535: true, 538: true, 550: true, 551: true, 552: true, 553: true,
	554: true, 555: true, 556: true,
}

// validReply reports whether n is a known SMTP reply code.
func validReply(n int) bool { return replyCodes[n] }

// isDigit reports whether c is an ASCII digit.
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isLetter reports whether c is an ASCII letter.
func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// findReply returns the first SMTP reply code (4xx/5xx, or 2xx when
// asked for with class '2') standing alone in s: "550 ", "550-", "550:",
// but not part of a longer number, an IP address or an enhanced code.
func findReply(s string, class byte) int {
	for i := 0; i+3 <= len(s); i++ {
		c := s[i]
		if c != '2' && c != '4' && c != '5' {
			continue
		}
		if class != 0 && c != class {
			continue
		}
		if !isDigit(s[i+1]) || !isDigit(s[i+2]) {
			continue
		}
		if i > 0 {
			p := s[i-1]
			if isDigit(p) || p == '.' || p == '/' || p == '=' || isLetter(p) || p == '-' && i > 1 && isDigit(s[i-2]) {
				continue
			}
		}
		if i+3 < len(s) {
			n := s[i+3]
			if isDigit(n) || n == '.' || n == '@' || n == '/' || n == '%' || isLetter(n) {
				continue
			}
		}
		v, _ := strconv.Atoi(s[i : i+3])
		if c == '2' && class == 0 {
			// 2xx only counts when asked for: "250 ok" in a transcript is
			// not the failure.
			continue
		}
		if validReply(v) {
			return v
		}
	}
	return 0
}

// findStatus returns the most telling RFC 3463 code in s ("5.1.1",
// "4.7.650"), skipping IP addresses and version numbers. When several
// codes appear, preferStatus picks between them.
func findStatus(s string) string {
	best := ""
	for i := 0; i+5 <= len(s); i++ {
		c := s[i]
		if c != '2' && c != '4' && c != '5' {
			continue
		}
		if s[i+1] != '.' {
			continue
		}
		if i > 0 {
			p := s[i-1]
			if isDigit(p) || p == '.' || p == 'v' || p == 'V' || p == '-' && i > 1 && isDigit(s[i-2]) ||
				(p >= 'a' && p <= 'z' && p != 'x') || (p >= 'A' && p <= 'Z') {
				continue
			}
		}
		// subject digit 0-7
		j := i + 2
		if j >= len(s) || s[j] < '0' || s[j] > '7' {
			continue
		}
		k := j + 1
		if k < len(s) && isDigit(s[k]) {
			continue // "5.10.x" is not a subject code
		}
		if k >= len(s) || s[k] != '.' {
			continue
		}
		k++
		start := k
		for k < len(s) && isDigit(s[k]) && k-start < 3 {
			k++
		}
		if k == start {
			continue
		}
		if k < len(s) && (isDigit(s[k]) || s[k] == '.' && k+1 < len(s) && isDigit(s[k+1])) {
			continue // IP address or longer dotted number
		}
		best = preferStatus(best, s[i:k], 0)
		i = k - 1
	}
	return best
}

// preferStatus chooses between a status code already known (a) and
// another one found in the text (b). Vague codes (X.0.0, X.Y.0) give way
// to specific ones; codes that describe the protocol rather than the
// failure (X.5.x, 5.3.x, 4.4.7, 4.7.0) give way to the text's; when the
// class digits disagree, the SMTP reply code (if any) arbitrates.
func preferStatus(a, b string, reply int) string {
	switch {
	case a == "":
		return b
	case b == "", a == b:
		return a
	}
	if reply != 0 && a[0] != b[0] {
		rc := byte('0' + reply/100)
		if a[0] == rc {
			return a
		}
		if b[0] == rc {
			return b
		}
	}
	aZero2 := strings.HasSuffix(a, ".0.0")
	bZero2 := strings.HasSuffix(b, ".0.0")
	aZero1 := strings.Contains(a, ".0")
	bZero1 := strings.Contains(b, ".0")
	switch {
	case aZero2:
		if bZero2 {
			return a
		}
		return b
	case aZero1 && !bZero1:
		return b
	case bZero2:
		return a
	case a == "4.4.7", a == "4.7.0", strings.HasPrefix(a, "5.3."):
		return b
	case strings.HasPrefix(a[1:], ".5.1"), strings.HasPrefix(a[1:], ".5.2"), strings.HasPrefix(a[1:], ".5.4"),
		strings.HasPrefix(a[1:], ".5.5"):
		return b
	case a == "5.1.1":
		if bZero1 || strings.HasPrefix(b, "5.5.") {
			return a
		}
		return b
	case a == "5.1.3" && strings.HasPrefix(b, "5.7."):
		return b
	}
	return a
}

// commandMarkers are phrases that name the SMTP command the failure
// answered, in the words of the common MTAs. Later matches in a text win.
var commandMarkers = []struct{ text, cmd string }{
	{"in reply to rcpt to command", "RCPT"},
	{"in reply to rcpt command", "RCPT"},
	{"in reply to mail from command", "MAIL"},
	{"in reply to mail command", "MAIL"},
	{"in reply to end of data command", "DATA"},
	{"in reply to data command", "DATA"},
	{"in reply to ehlo command", "EHLO"},
	{"in reply to helo command", "HELO"},
	{"in reply to starttls command", "STARTTLS"},
	{"in reply to auth", "AUTH"},
	{"after rcpt to:", "RCPT"},
	{"after rcpt to", "RCPT"},
	{"after mail from:", "MAIL"},
	{"after mail from", "MAIL"},
	{"after end of data", "DATA"},
	{"after data", "DATA"},
	{"after rcpt command", "RCPT"},
	{"after mail command", "MAIL"},
	{"after data command", "DATA"},
	{"error following rcpt command", "RCPT"},
	{"error following mail command", "MAIL"},
	{"error following data command", "DATA"},
	{"smtp:rcpt", "RCPT"},
	{"smtp:mail", "MAIL"},
	{"smtp:data", "DATA"},
	{"after initial connection", "CONN"},
	{"after ehlo", "EHLO"},
	{"after helo", "HELO"},
	{"after starttls", "STARTTLS"},
	{"after pipelined data", "DATA"},
	{"after pipelined rcpt to", "RCPT"},
	{"after pipelined mail from", "MAIL"},
	{">>> rcpt to", "RCPT"},
	{">>> mail from", "MAIL"},
	{">>> data", "DATA"},
	{">>> ehlo", "EHLO"},
	{">>> helo", "HELO"},
	{">>> starttls", "STARTTLS"},
	{">>> quit", "QUIT"},
	{"does not like recipient", "RCPT"},
	{"but sender was rejected", "MAIL"},
	{"but my name was rejected", "EHLO"},
	{"but greeting failed", "CONN"},
	{"failed on data command", "DATA"},
	{"failed after i sent the message", "DATA"},
	{"most progress was rcpt to response", "RCPT"},
	{"most progress was mail from response", "MAIL"},
	{"most progress was data response", "DATA"},
	{"refused to talk to me", "CONN"},
	{"[rcpt_to]", "RCPT"},
	{"rcpt to:<", "RCPT"},
	{"rcpt to: <", "RCPT"},
	{"mail from:<", "MAIL"},
	{"mail from: <", "MAIL"},
}

// commandKeys are words one of which every command marker contains; a
// text without any of them names no command, which saves scanning it
// once per marker.
var commandKeys = []string{"rcpt", "mail", "data", "ehlo", "helo", "starttls", "auth", ">>>", "recipient", "sender",
	"name was", "greeting", "initial connection", "talk to me", "sent the message", "quit"}

// findCommand returns the SMTP command the error text says it answered.
func findCommand(lower string) string {
	found := false
	for _, k := range commandKeys {
		if strings.Contains(lower, k) {
			found = true
			break
		}
	}
	if !found {
		return ""
	}
	best, at := "", -1
	for _, m := range commandMarkers {
		// Index rejects absent markers much faster than LastIndex.
		if !strings.Contains(lower, m.text) {
			continue
		}
		if p := strings.LastIndex(lower, m.text); p > at {
			best, at = m.cmd, p
		}
	}
	return best
}

// normalizeAddress extracts a bare address from "Name <a@b>", "<a@b>",
// "rfc822;a@b" and lower-cases its domain.
func normalizeAddress(s string) string {
	s = strings.TrimSpace(s)
	if _, v, ok := strings.Cut(s, ";"); ok && !strings.Contains(s[:strings.Index(s, ";")], "@") {
		s = strings.TrimSpace(v)
	}
	if i := strings.LastIndex(s, "<"); i >= 0 {
		if j := strings.Index(s[i:], ">"); j > 0 {
			s = s[i+1 : i+j]
		} else {
			s = s[i+1:]
		}
	}
	s = strings.Trim(s, " \t<>\"'`()[]{},;:.")
	if strings.HasPrefix(strings.ToLower(s), "mailto:") {
		s = s[7:]
	}
	at := strings.LastIndex(s, "@")
	if at <= 0 || at == len(s)-1 {
		return ""
	}
	local, domain := s[:at], strings.ToLower(s[at+1:])
	if strings.ContainsAny(local, " \t") {
		// Keep the last word: "user kijitora@example.jp" style leftovers.
		f := strings.Fields(local)
		local = f[len(f)-1]
	}
	if strings.ContainsAny(domain, " \t<>()[]\\,;:\"") && !strings.HasPrefix(domain, "[") {
		return ""
	}
	if !strings.Contains(domain, ".") && domain != "localhost" {
		return ""
	}
	local = strings.Trim(local, "\"")
	if local == "" {
		return ""
	}
	return local + "@" + domain
}

// findAddresses returns the e-mail addresses in s, in order.
func findAddresses(s string) []string {
	var out []string
	for i := 0; i < len(s); i++ {
		if s[i] != '@' {
			continue
		}
		l := i
		for l > 0 && isAddrChar(s[l-1]) {
			l--
		}
		r := i + 1
		for r < len(s) && isDomainChar(s[r]) {
			r++
		}
		if l == i || r == i+1 {
			continue
		}
		if a := normalizeAddress(strings.TrimRight(s[l:r], ".-")); a != "" {
			out = append(out, a)
		}
		i = r - 1
	}
	return out
}

func isAddrChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0
}

func isDomainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) || c == '.' || c == '-'
}

// oneLine collapses whitespace so diagnostics read as one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
