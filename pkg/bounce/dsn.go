package bounce

import (
	"strings"
)

// RFC 3464 delivery-status reading.

// dsnField is one "Name: type; value" line of a delivery-status part.
type dsnField struct {
	name  string // lower-case
	typ   string // upper-case sub-type (RFC822, SMTP, DNS, X-UNIX) if any
	value string
}

// splitDSNFields parses the lines of a delivery-status body into fields,
// joining continuation lines, and returns them grouped in blocks separated
// by blank lines.
func splitDSNFields(body string) [][]dsnField {
	var blocks [][]dsnField
	var cur []dsnField
	flush := func() {
		if len(cur) > 0 {
			blocks = append(blocks, cur)
			cur = nil
		}
	}
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(cur) > 0 {
			last := &cur[len(cur)-1]
			last.value += " " + strings.TrimSpace(line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isHeaderKey(strings.TrimSpace(name)) {
			if len(cur) > 0 && cur[len(cur)-1].name == "diagnostic-code" {
				// Unindented continuation of a long diagnostic.
				cur[len(cur)-1].value += " " + strings.TrimSpace(line)
			}
			continue
		}
		f := dsnField{name: strings.ToLower(strings.TrimSpace(name))}
		value = strings.TrimSpace(value)
		switch f.name {
		case "final-recipient", "original-recipient", "x-actual-recipient", "diagnostic-code",
			"remote-mta", "reporting-mta", "received-from-mta", "dsn-gateway":
			if t, v, ok := strings.Cut(value, ";"); ok && !strings.Contains(t, "@") && len(t) < 16 {
				f.typ = strings.ToUpper(strings.TrimSpace(t))
				value = strings.TrimSpace(v)
			}
		}
		f.value = value
		cur = append(cur, f)
	}
	flush()
	return blocks
}

// perMessage are the fields that describe the whole report.
var perMessage = map[string]bool{
	"reporting-mta": true, "received-from-mta": true, "arrival-date": true,
	"original-envelope-id": true, "dsn-gateway": true, "x-original-message-id": true,
	"x-postfix-queue-id": true, "x-postfix-sender": true, "x-powermta-virtualmta": true,
}

// dsnRecipients turns delivery-status bodies into findings. Each
// Final-Recipient starts a recipient; blank-line grouping is not trusted
// because many MTAs get it wrong.
func dsnRecipients(bodies []string) []finding {
	var out []finding
	var shared finding
	for _, body := range bodies {
		var cur *finding
		for _, block := range splitDSNFields(body) {
			for _, f := range block {
				if perMessage[f.name] {
					switch f.name {
					case "reporting-mta", "x-powermta-virtualmta":
						if shared.lhost == "" {
							shared.lhost = hostOnly(f.value)
						}
					case "arrival-date":
						if shared.date == "" {
							shared.date = f.value
						}
					}
					continue
				}
				switch f.name {
				case "final-recipient":
					addr := normalizeAddress(f.value)
					if addr == "" && cur != nil && cur.recipient == "" {
						// "Final-Recipient: rfc822;|/path/to/prog": keep
						// the block; an alias may name the address.
						cur.diagType = "X-UNIX"
						continue
					}
					if cur != nil && (cur.recipient == "" || strings.EqualFold(cur.recipient, addr)) {
						cur.recipient = addr
						continue
					}
					out = append(out, finding{})
					cur = &out[len(out)-1]
					cur.recipient = addr
					if addr == "" {
						cur.diagType = "X-UNIX"
					}
				case "original-recipient", "x-actual-recipient":
					if cur == nil {
						out = append(out, finding{})
						cur = &out[len(out)-1]
					}
					if a := normalizeAddress(f.value); a != "" {
						if cur.alias == "" {
							cur.alias = a
						}
					} else if strings.EqualFold(f.typ, "X-UNIX") {
						cur.diagType = "X-UNIX"
					}
				default:
					if cur == nil {
						out = append(out, finding{})
						cur = &out[len(out)-1]
					}
					applyDSNField(cur, f)
				}
			}
		}
	}
	// Drop entries without any address, fill per-message defaults.
	kept := out[:0]
	for _, f := range out {
		if f.recipient == "" {
			f.recipient = f.alias
		}
		if f.recipient == "" {
			continue
		}
		if f.lhost == "" {
			f.lhost = shared.lhost
		}
		if f.date == "" {
			f.date = shared.date
		}
		f.agent = "RFC3464"
		kept = append(kept, f)
	}
	return kept
}

// applyDSNField sets a per-recipient field on f.
func applyDSNField(f *finding, d dsnField) {
	v := d.value
	switch d.name {
	case "action":
		a := ""
		if w := strings.Fields(v); len(w) > 0 {
			a = strings.TrimRight(strings.ToLower(w[0]), ".;,")
		}
		switch a {
		case "failure", "fail":
			a = "failed"
		case "deliverable":
			a = "delivered"
		case "expired":
			a = "delayed"
		}
		if f.action == "" {
			f.action = a
		}
	case "status":
		// "5.1.1", "5.0.0 (permanent failure)", "553 5.3.0"
		if s := findStatus(v); s != "" && f.status == "" {
			f.status = s
		}
		if c := findReply(v, 0); c != 0 && f.reply == 0 {
			f.reply = c
		}
		if i := strings.Index(v, "("); i > 0 && strings.HasSuffix(v, ")") {
			// "4.0.0 (cat.example.net: host name lookup failure)" carries
			// the diagnosis; "5.0.0 (permanent failure)" does not.
			cm := strings.TrimSpace(v[i+1 : len(v)-1])
			switch strings.ToLower(cm) {
			case "", "permanent failure", "temporary failure", "persistent transient failure",
				"undefined status", "failure", "success":
			default:
				f.diag = strings.TrimSpace(f.diag + " " + cm)
			}
		}
	case "remote-mta":
		if f.rhost == "" {
			f.rhost = hostOnly(v)
		}
	case "diagnostic-code":
		if d.typ != "" && f.diagType == "" {
			f.diagType = d.typ
			if f.diagType == "X-POSTFIX" {
				// Postfix writes its own connection errors this way;
				// they read like SMTP ones.
				f.diagType = "SMTP"
			}
		}
		dv := oneLine(v)
		if f.diag == "" {
			f.diag = dv
		} else if !strings.Contains(f.diag, dv) {
			f.diag = dv + " " + f.diag
		}
	case "last-attempt-date":
		f.date = v
	case "x-powermta-bouncecategory":
		if r, ok := powerMTACategory[strings.ToLower(strings.TrimSpace(v))]; ok {
			f.reason = r
		}
	}
}

// powerMTACategory maps PowerMTA's X-PowerMTA-BounceCategory values.
var powerMTACategory = map[string]string{
	"bad-domain":          "hostunknown",
	"bad-mailbox":         "userunknown",
	"inactive-mailbox":    "suspend",
	"message-expired":     "expired",
	"no-answer-from-host": "networkerror",
	"policy-related":      "policyviolation",
	"quota-issues":        "mailboxfull",
	"routing-errors":      "systemerror",
	"spam-related":        "spamdetected",
}

// hostOnly extracts a host name from an MTA field value such as
// "mx.example.jp (tcp-daemon)" or "[192.0.2.1]".
func hostOnly(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.Index(v, " ("); i > 0 {
		v = v[:i]
	}
	if f := strings.Fields(v); len(f) > 0 {
		v = f[0]
	}
	v = strings.Trim(v, "[]();,")
	return strings.ToLower(strings.TrimSuffix(v, "."))
}

// readDSN reads an RFC 3464 report, enriching each recipient with what the
// human-readable part says about it.
func readDSN(m *mail) []finding {
	bodies := m.dsn
	if len(bodies) == 0 {
		// Some MTAs put the delivery-status fields in the text itself.
		if b := inlineDSN(m.report()); b != "" {
			bodies = []string{b}
		}
	}
	if len(bodies) == 0 {
		return nil
	}
	fs := dsnRecipients(bodies)
	if len(fs) == 0 && strings.Contains(strings.ToLower(m.report()), "delivery report unavailable") {
		// Postfix could not write the report; the returned message says
		// whom it was for.
		if as := findAddresses(m.original.get("to")); len(as) > 0 {
			fs = []finding{{recipient: as[0], agent: "RFC3464"}}
		}
	}
	if len(fs) == 0 {
		return nil
	}
	enrichFromText(m, fs)
	return fs
}

// inlineDSN returns the delivery-status lines embedded in a plain report,
// or "".
func inlineDSN(t string) string {
	lower := strings.ToLower(t)
	p := strings.Index(lower, "\nfinal-recipient:")
	if p < 0 {
		return ""
	}
	start := p
	// Include a preceding per-message block (Reporting-MTA ...).
	if q := strings.LastIndex(lower[:p], "reporting-mta:"); q >= 0 && p-q < 2000 {
		start = q
	}
	if !strings.Contains(lower[p:], "\nstatus:") && !strings.Contains(lower[p:], "\naction:") &&
		!strings.Contains(lower[p:], "\ndiagnostic-code:") {
		return ""
	}
	return t[start:]
}
