package bounce

import (
	"strings"
	"unicode/utf8"
)

// Reading the human-readable part of a bounce: per-recipient sections in
// the shapes used by the common MTAs.
//
//	<rcpt@example.jp>: host mx[192.0.2.1] said: 550 ...      Postfix, qmail
//	    (in reply to RCPT TO command)
//	  rcpt@example.jp                                        Exim, Gmail
//	    SMTP error from remote mail server after RCPT TO: ...
//	<rcpt@example.jp>... User unknown                        Sendmail
//	There was an error delivering your mail to <rcpt@...>.   DragonFly

// section is the text a report gives about one recipient.
type section struct {
	recipient string
	alias     string
	text      string // the recipient's error text, one line
}

// maxSectionText bounds what repeated sections of one recipient add to its
// text (real reports repeat a recipient two or three times), and report
// text that readers give to every recipient.
const maxSectionText = 4096

// clipText cuts s to at most n bytes, at the start of a UTF-8 sequence.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// lineAddr returns the address a report line introduces as a recipient,
// the rest of the line after it, and whether the line is a recipient line.
func lineAddr(line string) (addr, rest, alias string, ok bool) {
	t := strings.TrimSpace(line)
	if t == "" || !strings.Contains(t, "@") {
		return "", "", "", false
	}
	indent := len(line) - len(strings.TrimLeft(line, " \t"))
	lower := strings.ToLower(t)
	// <addr>: text  /  <addr> (expanded from <x>): text  /  <addr>... text
	if t[0] == '<' {
		end := strings.IndexByte(t, '>')
		if end < 0 {
			return "", "", "", false
		}
		a := normalizeAddress(t[1:end])
		if a == "" {
			return "", "", "", false
		}
		rest = t[end+1:]
		if strings.HasPrefix(rest, " (expanded from ") {
			if close := strings.Index(rest, "):"); close > 0 {
				alias = normalizeAddress(rest[len(" (expanded from "):close])
				rest = rest[close+1:]
			}
		}
		switch {
		case strings.HasPrefix(rest, ":"), strings.HasPrefix(rest, "..."), rest == "",
			strings.HasPrefix(rest, " ("), strings.HasPrefix(rest, ","), strings.HasPrefix(rest, " on "):
			rest = strings.TrimLeft(rest, ":.,")
			return a, strings.TrimSpace(rest), alias, true
		}
		return "", "", "", false
	}
	// Sendmail: addr... User unknown
	if i := strings.Index(t, "... "); i > 0 && !strings.Contains(t[:i], " ") {
		if a := normalizeAddress(t[:i]); a != "" {
			return a, strings.TrimSpace(t[i+4:]), "", true
		}
	}
	// Exim hides the address it was given behind an alias:
	//   an undisclosed address
	//     (generated from kijitora@example.jp)
	if strings.HasPrefix(lower, "(generated from ") {
		if as := findAddresses(t); len(as) > 0 {
			return as[0], "", "", true
		}
	}
	// Bulleted address: "  * kijitora@example.com", "-- kijitora@..."
	if strings.HasPrefix(t, "* ") || strings.HasPrefix(t, "- ") || strings.HasPrefix(t, "-- ") {
		w := strings.TrimSpace(strings.TrimLeft(t, "*- "))
		if a := normalizeAddress(w); a != "" && !strings.Contains(w, " ") {
			return a, "", "", true
		}
	}
	// A line that starts with an address: "addr", "addr:", "addr: text",
	// "\"addr\":", "addr [User unknown]", "addr<mailto:addr>", "addr on
	// <date>" (Exim, Gmail, Exchange, OpenSMTPD, Zoho, X1 ...).
	{
		word := t
		restw := ""
		if i := strings.IndexAny(t, " \t"); i > 0 {
			word, restw = t[:i], strings.TrimSpace(t[i:])
		}
		if i := strings.Index(word, "<mailto:"); i > 0 {
			word = word[:i]
		}
		w := strings.TrimRight(strings.Trim(strings.TrimRight(word, ":,;"), `"'`), ":")
		if strings.Count(w, "@") == 1 && !strings.ContainsAny(w, "<>()[]=") {
			if a := normalizeAddress(w); a != "" {
				lw := strings.ToLower(restw)
				switch {
				case restw == "", strings.HasSuffix(word, ":"):
					return a, restw, "", true
				case strings.HasPrefix(restw, "<") && strings.Contains(restw, ">:"):
					// Exim: "kijitora@example.com <neko@example.net>: ..."
					// names the address it failed on in brackets.
					if b := normalizeAddress(restw[:strings.Index(restw, ">")+1]); b != "" {
						return b, strings.TrimSpace(restw[strings.Index(restw, ">:")+2:]), a, true
					}
					return a, strings.TrimSpace(restw[strings.Index(restw, ">:")+2:]), "", true
				case strings.HasPrefix(lw, "on "), strings.HasPrefix(restw, "("):
					return a, "", "", true
				case strings.HasPrefix(restw, "["), strings.HasPrefix(lw, "invalid address"),
					strings.Contains(lw, "error_code"):
					return a, restw, "", true
				case indent == 0 && !strings.HasPrefix(lw, "wrote") && !strings.HasPrefix(lw, "is ") &&
					!strings.HasPrefix(lw, "has ") && !strings.HasPrefix(lw, "and "):
					return a, restw, "", true
				}
			}
		}
	}
	// "delivering your mail to <addr>." and similar sentences.
	for _, p := range []string{"delivering your mail to ", "error delivering to ", "could not be delivered to ",
		"couldn't be delivered to ", "wasn't delivered to ", "was not delivered to ", "delivery to the following recipient",
		"unable to deliver message to", "rejected recipient <", "returned permanent errors: ", "recipient: <",
		"delivered to: <"} {
		if i := strings.Index(lower, p); i >= 0 {
			if as := findAddresses(t[i+len(p):]); len(as) > 0 {
				return as[0], "", "", true
			}
		}
	}
	return "", "", "", false
}

// isBoundaryLine reports lines that end a recipient's section.
func isBoundaryLine(t string) bool {
	if strings.HasPrefix(t, "--") || strings.HasPrefix(t, "==") || strings.HasPrefix(t, "__") {
		return true
	}
	for _, p := range []string{"Content-Type:", "Content-type:", "content-type:", "Reporting-MTA:", "Final-Recipient:",
		"Original-Recipient:", "Message headers follow", "Received:", "Return-Path:"} {
		if strings.HasPrefix(t, p) {
			return true
		}
	}
	return false
}

// textSections splits report text into per-recipient sections. Each
// section runs from its recipient line to a blank line, the next recipient
// line or a delimiter; indented continuation lines are kept across a single
// blank line (Exim puts one between address and reason).
func textSections(report string) []section {
	lines := strings.Split(report, "\n")
	var out []section
	var cur *section
	var buf []string
	curIndent := 0
	flush := func() {
		if cur != nil {
			cur.text = oneLine(strings.Join(buf, " "))
			out = append(out, *cur)
			cur, buf = nil, nil
		}
	}
	blank := 0
	for _, raw := range lines {
		line := strings.TrimRight(raw, " \t\r")
		t := strings.TrimSpace(line)
		indent := len(line) - len(strings.TrimLeft(line, " \t"))
		continuation := cur != nil && t != "" && indent > curIndent && (blank == 0 || indent >= 4)
		if !continuation {
			if a, rest, alias, ok := lineAddr(line); ok {
				flush()
				cur = &section{recipient: a, alias: alias}
				curIndent = indent
				if rest != "" {
					buf = append(buf, rest)
				}
				blank = 0
				continue
			}
		}
		if cur == nil {
			continue
		}
		if t == "" {
			blank++
			if blank >= 2 {
				flush()
			}
			continue
		}
		if isBoundaryLine(t) {
			flush()
			continue
		}
		if blank > 0 && !continuation {
			// An unindented line after a blank line is new prose.
			flush()
			continue
		}
		blank = 0
		buf = append(buf, t)
		if len(buf) > 40 {
			flush()
		}
	}
	flush()
	// Merge repeated sections of one recipient (Sendmail lists the
	// address in the summary and again in the transcript).
	merged := out[:0]
	idx := map[string]int{}
	for _, s := range out {
		if i, ok := idx[s.recipient]; ok {
			if len(merged[i].text) < maxSectionText {
				// Bounded, so that a recipient named in every line
				// does not make each merge copy all the text before.
				merged[i].text = mergeText(merged[i].text, s.text)
			}
			if merged[i].alias == "" {
				merged[i].alias = s.alias
			}
			continue
		}
		idx[s.recipient] = len(merged)
		merged = append(merged, s)
	}
	return merged
}

// enrichFromText adds what the report text says to DSN findings: the
// recipient's own section when there is one (Postfix and Sendmail put the
// most detailed words there), otherwise, for a lone recipient, the error
// lines of the whole text, as sisimai does.
func enrichFromText(m *mail, fs []finding) {
	report := m.report()
	secs := textSections(report)
	// Index the sections instead of scanning them for every finding: a
	// report with thousands of recipients must not cost their square.
	byRecipient, byAlias := map[string]int{}, map[string]int{}
	for j := len(secs) - 1; j >= 0; j-- {
		byRecipient[secs[j].recipient] = j
		if secs[j].alias != "" {
			byAlias[secs[j].alias] = j
		}
	}
	for i := range fs {
		f := &fs[i]
		// The first section that names the finding's recipient, by its
		// address or its alias.
		first := len(secs)
		if j, ok := byRecipient[f.recipient]; ok {
			first = j
		}
		if j, ok := byRecipient[f.alias]; ok && f.alias != "" {
			first = min(first, j)
		}
		if j, ok := byAlias[f.recipient]; ok {
			first = min(first, j)
		}
		var sec *section
		if first < len(secs) {
			sec = &secs[first]
		}
		if sec != nil && sec.text != "" {
			f.ctx = mergeText(f.ctx, sec.text)
			if f.diag == "" || onlyCodes(f.diag) {
				f.diag = sec.text
			}
		} else if len(fs) == 1 {
			f.ctx = mergeText(f.ctx, errorLines(report))
			if f.diag == "" || onlyCodes(f.diag) {
				// No Diagnostic-Code: the report's own error lines (a
				// Sendmail transcript, say) are the diagnosis.
				if cl := codeLines(report); cl != "" {
					f.diag = cl
				}
			}
		}
		if f.command == "" {
			f.command = findCommand(strings.ToLower(f.diag + " " + f.ctx))
		}
	}
}

// mergeText appends b to a unless it is already there.
func mergeText(a, b string) string {
	b = strings.TrimSpace(b)
	if b == "" || strings.Contains(a, b) {
		return a
	}
	if a == "" {
		return b
	}
	return a + " " + b
}

// onlyCodes reports whether a diagnostic has no words, just codes.
func onlyCodes(s string) bool {
	for _, w := range strings.Fields(s) {
		if len(w) > 3 && strings.IndexFunc(w, func(r rune) bool { return r >= 'A' && r <= 'z' }) >= 0 {
			return false
		}
	}
	return true
}

// boilerplate are report lines that carry no diagnosis.
var boilerplate = []string{
	"this is a mime", "this is a multi-part", "this multi-part", "this is an automatically generated",
	"content-", "mime-version", "--- the follow", "--- transcript", "the original message was received",
	"for further assistance", "if you do so, please include", "delete your own text", "the mail system",
}

// errorLines returns the report text minus boilerplate, as one line.
func errorLines(report string) string {
	var keep []string
	for _, line := range strings.Split(report, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		lt := strings.ToLower(t)
		skip := false
		for _, b := range boilerplate {
			if strings.HasPrefix(lt, b) || strings.Contains(lt, "--- "+b) {
				skip = true
				break
			}
		}
		if !skip {
			keep = append(keep, t)
		}
	}
	s := oneLine(strings.Join(keep, " "))
	if len(s) > 4000 {
		s = s[:4000]
	}
	return s
}

// bounceSubjects are words of bounce subjects in several languages.
var bounceSubjects = []string{
	"undeliver", "undelivered", "delivery", "returned", "return", "failure", "failed", "error", "bounce",
	"not delivered", "non remis", "non recapitabile", "nicht zustellbar", "unzustellbar", "no entregado",
	"mail system error", "notice", "warning", "rejected", "problem", "could not", "nondeliverable", "non-delivery",
}

// looksLikeBounce reports whether a message without a delivery-status part
// is plausibly a bounce at all, so that ordinary mail gives no records.
func looksLikeBounce(m *mail) bool {
	if m.header.has("x-failed-recipients") {
		return true
	}
	from := strings.ToLower(m.from)
	for _, p := range []string{"mailer-daemon", "postmaster", "mail delivery", "mailer daemon", "mail administrator",
		"mail.delivery", "bounce", "noreply", "no-reply", "mailadmin", "administrator", "mail system",
		"internet mail", "daemon", "system administrator", "ezweb.ne.jp", "notify", "notification", "ses"} {
		if strings.Contains(from, p) {
			return true
		}
	}
	if strings.TrimSpace(m.header.get("return-path")) == "<>" {
		return true
	}
	subj := strings.ToLower(m.subject)
	for _, p := range bounceSubjects {
		if strings.Contains(subj, p) {
			return true
		}
	}
	return false
}

// readText is the generic reader for bounces without a delivery-status
// part: per-recipient sections of the report, or X-Failed-Recipients with
// the whole report as the diagnosis.
func readText(m *mail) []finding {
	if !looksLikeBounce(m) {
		return nil
	}
	report := m.report()
	secs := textSections(report)
	sender := senderAddresses(m)
	var out []finding
	for _, s := range secs {
		if sender[s.recipient] && len(secs) > 1 {
			continue
		}
		out = append(out, finding{recipient: s.recipient, alias: s.alias, diag: s.text, agent: "text"})
	}
	if len(out) == 0 {
		for _, v := range m.header.values("x-failed-recipients") {
			for _, a := range findAddresses(v) {
				out = append(out, finding{recipient: a, agent: "text"})
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	// Computed once: the report can be as long as the input.
	errLines, haveErrLines := "", false
	for i := range out {
		if out[i].diag == "" {
			// The report names the recipient apart from the error:
			// classify on the whole text, show the lines with codes.
			if !haveErrLines {
				errLines, haveErrLines = errorLines(report), true
			}
			out[i].ctx = m.share(errLines)
			if len(out) == 1 {
				out[i].diag = codeLines(report)
			}
		}
	}
	return out
}

// senderAddresses are addresses that name the sender, not a recipient.
func senderAddresses(m *mail) map[string]bool {
	out := map[string]bool{}
	for _, v := range []string{m.header.get("to"), m.original.get("from"), m.original.get("return-path"),
		m.original.get("sender"), m.header.get("from")} {
		for _, a := range findAddresses(v) {
			out[a] = true
		}
	}
	return out
}

// finish fills what a reader left empty from the diagnostic itself.
func (m *mail) finish(f *finding) {
	f.diag = joinContinuations(oneLine(f.diag))
	lower := strings.ToLower(f.diag + " " + f.ctx)
	if f.status == "" {
		f.status = findStatus(f.diag)
		if f.status == "" {
			f.status = findStatus(f.ctx)
		}
	} else if s := findStatus(f.diag); s != "" {
		// A vague Status: field loses to a specific code in the text.
		f.status = preferStatus(f.status, s, findReply(f.diag, 0))
	}
	if f.reply == 0 {
		var class byte
		if f.status != "" {
			class = f.status[0]
		}
		f.reply = findReply(f.diag, class)
		if f.reply == 0 {
			f.reply = findReply(f.diag, 0)
		}
	}
	if f.command == "" {
		f.command = findCommand(lower)
	}
	if f.rhost == "" {
		f.rhost = findRemoteHost(f.diag)
	}
	if f.rhost == "" {
		// The oldest hop of the bounce is the host that wrote it; for
		// provider rules it stands in for the remote MTA.
		if rs := m.received; len(rs) > 0 {
			if h := receivedFrom(rs[len(rs)-1]); strings.Contains(h, ".") && !isIPv4(h) {
				f.rhost = h
			}
		}
	}
	if f.lhost == "" {
		if rs := m.received; len(rs) > 0 {
			f.lhost = receivedBy(rs[0])
		}
	}
}

// findRemoteHost picks the remote MTA out of texts like "host mx.example.jp
// [192.0.2.1] said:" or "while talking to mx.example.jp.:".
func findRemoteHost(diag string) string {
	lower := strings.ToLower(diag)
	for _, p := range []string{"host ", "while talking to ", "remote host ", "connected to "} {
		i := strings.Index(lower, p)
		if i < 0 {
			continue
		}
		rest := strings.Fields(lower[i+len(p):])
		if len(rest) == 0 {
			continue
		}
		h := strings.Trim(rest[0], "[]():;,.")
		if j := strings.IndexByte(h, '['); j > 0 {
			h = h[:j]
		}
		if strings.Contains(h, ".") && !strings.Contains(h, "@") {
			return h
		}
	}
	return ""
}

// receivedBy returns the "by" host of a Received: header.
func receivedBy(v string) string {
	lower := strings.ToLower(v)
	i := strings.Index(lower, " by ")
	if i < 0 {
		return ""
	}
	f := strings.Fields(lower[i+4:])
	if len(f) == 0 {
		return ""
	}
	return strings.Trim(f[0], "();")
}

// joinContinuations turns a multi-line SMTP reply flattened into one line
// ("550-5.7.1 Messages with multiple addresses in From: 550-5.7.1 header
// are not accepted") back into one sentence, keeping the leading code.
func joinContinuations(s string) string {
	reply := findReply(s, 0)
	if reply == 0 {
		return s
	}
	r := replyString(reply)
	if !strings.Contains(s, r+"-") {
		return s
	}
	status := findStatus(s)
	head := r
	if status != "" {
		head += " " + status
	}
	out := s
	for _, sep := range []string{"-", " "} {
		if status != "" {
			out = strings.ReplaceAll(out, r+sep+status+" ", "")
			out = strings.ReplaceAll(out, r+sep+status, "")
		}
		out = strings.ReplaceAll(out, r+sep, "")
	}
	return oneLine(head + " " + out)
}

// receivedFrom returns the "from" host of a Received: header.
func receivedFrom(v string) string {
	lower := strings.ToLower(strings.TrimSpace(v))
	if !strings.HasPrefix(lower, "from ") {
		return ""
	}
	f := strings.Fields(lower[5:])
	if len(f) == 0 {
		return ""
	}
	return strings.Trim(f[0], "()[];")
}

// isIPv4 reports whether s looks like a dotted IPv4 address.
func isIPv4(s string) bool {
	n := 0
	for _, p := range strings.Split(s, ".") {
		if p == "" || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if !isDigit(p[i]) {
				return false
			}
		}
		n++
	}
	return n == 4
}

// codeLines returns the report lines that carry an SMTP reply code or an
// enhanced status, joined into one line.
func codeLines(report string) string {
	var keep []string
	for _, line := range strings.Split(report, "\n") {
		t := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "<<<"))
		if t == "" || strings.HasPrefix(t, ">>>") {
			continue
		}
		if findReply(t, 0) != 0 || findStatus(t) != "" {
			keep = append(keep, t)
		}
	}
	return oneLine(strings.Join(keep, " "))
}
