package bounce

import "strings"

// Auto-replies (RFC 3834): vacation and out-of-office answers. The record's
// recipient is the person who is away, i.e. the reply's From.

// readAutoReply recognises an automatic response by its headers.
func readAutoReply(m *mail) []finding {
	from := strings.ToLower(m.header.get("from"))
	for _, p := range []string{"root@", "postmaster@", "mailer-daemon@"} {
		if strings.Contains(from, p) {
			return nil
		}
	}
	if strings.HasPrefix(strings.ToLower(strings.TrimSpace(m.header.get("to"))), "root@") {
		return nil
	}
	subj := strings.ToLower(m.subject)
	for _, p := range []string{"security information for", "mail failure -"} {
		if strings.Contains(subj, p) {
			return nil
		}
	}
	auto := false
	as := strings.ToLower(strings.TrimSpace(m.header.get("auto-submitted")))
	switch {
	case strings.HasPrefix(as, "auto-replied"), strings.HasPrefix(as, "auto-generated"), strings.HasPrefix(as, "auto-notified"):
		auto = true
	case strings.HasPrefix(strings.ToLower(m.header.get("precedence")), "auto_reply"):
		auto = true
	case strings.HasPrefix(strings.ToLower(m.header.get("x-apple-action")), "vacation"):
		auto = true
	}
	for _, p := range []string{"auto:", "auto response:", "automatic reply:", "out of office:", "out of the office:",
		"autoreply:", "auto-reply:", "abwesenheitsnotiz", "réponse automatique", "respuesta automática", "自動応答"} {
		if strings.HasPrefix(subj, p) {
			auto = true
		}
	}
	if !auto {
		return nil
	}
	rcpt := normalizeAddress(m.header.get("from"))
	if rcpt == "" {
		rcpt = normalizeAddress(m.header.get("return-path"))
	}
	if rcpt == "" {
		return nil
	}
	diag := oneLine(m.report())
	if len(diag) > 1000 {
		diag = diag[:1000]
	}
	return []finding{{recipient: rcpt, reason: "vacation", diag: diag, date: m.header.get("date"), agent: "RFC3834"}}
}
