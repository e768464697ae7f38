package bounce

import (
	"strings"
)

// Readers for the bounce formats of specific MTAs and providers. Each
// vendor is recognised by its headers or wording; it may bring its own
// reader (for layouts the generic section reader gets wrong) and a table
// of its own error texts, which suggest a reason before the generic
// classifier runs. The formats and tables follow sisimai's Lhost modules.

// vendor describes one MTA or provider bounce format.
type vendor struct {
	name   string
	detect func(m *mail) bool
	// read returns findings, or nil to fall back to the DSN and generic
	// readers (whose findings still get this vendor's hints).
	read func(m *mail) []finding
	// hints are the vendor's own error texts (matched case-insensitively
	// against the diagnostic) and the reason each suggests.
	hints []rule
	// post adjusts findings after hints (command-based reasons and such).
	post func(m *mail, f *finding)
}

// anyReceived reports whether a Received: header contains s.
func (m *mail) anyReceived(s string) bool {
	for _, v := range m.header.values("received") {
		if strings.Contains(v, s) {
			return true
		}
	}
	return false
}

// vendors are tried in order; the first whose detect matches is used.
var vendors = []vendor{
	vPostfixErrors, vExchange2003, vOpenSMTPD, vIMailServer, vInterScanMSS, vMFilter, vActivehunter, vMailFoundry,
	vDragonFly, vGoogleGroups, vGoogleWorkspace, vGmail, vDomino, vNotes, vEZweb, vKDDI, vBiglobe, vFML, vVerizon,
	vZoho, vGMX, vEinsUndEins, vX3, vExchange2007, vMessagingServer, vCourier, vQmail, vExim, vSendmail, vV5Sendmail,
	vApacheJames,
}

// hasDSNFields reports whether m carries per-recipient delivery-status
// fields (an empty message/delivery-status part does not count).
func (m *mail) hasDSNFields() bool {
	for _, d := range m.dsn {
		if strings.Contains(strings.ToLower(d), "final-recipient:") {
			return true
		}
	}
	return false
}

// detectVendor returns the vendor whose format m is, or nil.
func detectVendor(m *mail) *vendor {
	for i := range vendors {
		if vendors[i].detect(m) {
			return &vendors[i]
		}
	}
	return nil
}

// readVendor runs the vendor's own reader, if it has one that recognises
// m; the caller falls back to the generic readers otherwise.
func readVendor(m *mail) []finding {
	v := detectVendor(m)
	if v == nil || v.read == nil {
		return nil
	}
	fs := v.read(m)
	for i := range fs {
		if fs[i].agent == "" {
			fs[i].agent = v.name
		}
	}
	return fs
}

// applyVendor adds the vendor's hints to findings from any reader.
func applyVendor(m *mail, fs []finding) {
	v := detectVendor(m)
	if v == nil {
		return
	}
	for i := range fs {
		f := &fs[i]
		if f.command == "" {
			f.command = findCommand(strings.ToLower(f.diag + " " + f.ctx))
		}
		if f.reason == "" && len(v.hints) > 0 {
			f.reason = firstRule(strings.ToLower(f.diag), v.hints)
		}
		if v.post != nil {
			v.post(m, f)
		}
	}
}

// linesAfter returns the report lines after the first line containing
// start (all lines when start is "").
func linesAfter(report, start string) []string {
	lines := strings.Split(report, "\n")
	if start == "" {
		return lines
	}
	for i, l := range lines {
		if strings.Contains(l, start) {
			return lines[i+1:]
		}
	}
	return nil
}

// --- Microsoft Exchange Server 2003 ------------------------------------

var exchange2003Codes = []rule{
	{"userunknown", "(000c05a6)"},
	{"filtered", "(000c0595)"},
	{"systemerror", "(00010256)"},
	{"systemerror", "(000d06b5)"},
	{"networkerror", "(00120270)"},
	{"contenterror", "(00050311)"},
	{"contenterror", "(000502cc)"},
	{"securityerror", "(000b0981)"},
	{"onhold", "(000b099c)"},
	{"onhold", "(000b09aa)"},
	{"onhold", "(000b09b6)"},
}

var vExchange2003 = vendor{
	name: "Exchange2003",
	detect: func(m *mail) bool {
		if m.header.has("x-ms-embedded-report") {
			return true
		}
		xm := m.header.get("x-mailer")
		if strings.HasPrefix(xm, "Internet Mail Service (") ||
			strings.HasPrefix(xm, "Microsoft Exchange Server Internet Mail Connector") ||
			strings.HasPrefix(m.header.get("x-mimeole"), "Produced By Microsoft Exchange") {
			return true
		}
		return m.anyReceived(" with Internet Mail Service (")
	},
	read: func(m *mail) []finding {
		var out []finding
		var cur *finding
		for _, line := range linesAfter(m.report(), "did not reach the following recipient") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			lower := strings.ToLower(t)
			if i := strings.Index(lower, " on "); i > 0 && strings.Contains(t[:i], "@") && !strings.HasPrefix(line, " ") {
				a := t[:i]
				if j := strings.Index(strings.ToLower(a), ":smtp="); j >= 0 {
					a = a[j+6:]
				}
				if addr := normalizeAddress(strings.TrimSuffix(a, ";")); addr != "" {
					out = append(out, finding{recipient: addr})
					cur = &out[len(out)-1]
					continue
				}
			}
			if cur != nil {
				cur.diag += " " + t
			}
		}
		for i := range out {
			f := &out[i]
			f.diag = oneLine(f.diag)
			if r := firstRule(strings.ToLower(f.diag), exchange2003Codes); r != "" {
				f.reason = r
			}
		}
		return out
	},
}

// --- OpenSMTPD ---------------------------------------------------------

var vOpenSMTPD = vendor{
	name: "OpenSMTPD",
	detect: func(m *mail) bool {
		return strings.Contains(m.subject, "Delivery status notification") && strings.Contains(m.from, "Mailer Daemon <") ||
			m.anyReceived(" (OpenSMTPD) with ")
	},
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range linesAfter(m.report(), "This is the MAILER-DAEMON") {
			if strings.HasPrefix(line, " ") || !strings.Contains(line, "@") {
				continue
			}
			a, rest, ok := strings.Cut(line, ": ")
			if !ok {
				a, rest, ok = strings.Cut(line, " ")
			}
			if addr := normalizeAddress(a); ok && addr != "" && !strings.Contains(a, " ") {
				out = append(out, finding{recipient: addr, diag: strings.TrimSpace(rest)})
			}
		}
		return out
	},
	hints: []rule{
		{"expired", "envelope expired"},
		{"securityerror", "could not retrieve credentials"},
		{"hostunknown", "invalid domain name"},
		{"hostunknown", "domain does not exist"},
		{"networkerror", "address family mismatch on destination mxs"},
		{"networkerror", "all routes to destination blocked"},
		{"networkerror", "bad dns lookup error code"},
		{"networkerror", "could not retrieve source address"},
		{"networkerror", "loop detected"},
		{"networkerror", "network error on destination mxs"},
		{"networkerror", "no valid route to remote mx"},
		{"networkerror", "no valid route to destination"},
		{"networkerror", "temporary failure in mx lookup"},
		{"notaccept", "destination seem to reject all mails"},
		{"notaccept", "no mx found for domain"},
		{"notaccept", "no mx found for destination"},
	},
}

// --- Progress iMail Server ---------------------------------------------

var vIMailServer = vendor{
	name: "IMailServer",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.subject, "Undeliverable Mail ") || strings.HasPrefix(m.header.get("x-mailer"), "<SMTP32 v")
	},
	read: func(m *mail) []finding {
		var out []finding
		var response []string // lines, joined once: appending each would copy them all
		inResponse := false
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if i := strings.Index(t, ": "); (i > 8 && strings.Contains(t[i:], "@")) || strings.HasPrefix(t, "undeliverable ") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0], diag: t})
					continue
				}
			}
			if strings.Contains(t, "Body of message generated response:") {
				inResponse = true
				response = append(response[:0], t)
				continue
			}
			if inResponse && t != "" {
				response = append(response, t)
			}
		}
		// Every recipient gets the response: bounded, so that many
		// recipients do not copy a long one many times.
		resp := clipText(strings.Join(response, " "), maxSectionText)
		for i := range out {
			out[i].diag = oneLine(m.share(resp) + " " + out[i].diag)
		}
		return out
	},
	hints: []rule{
		{"hostunknown", "unknown host"},
		{"userunknown", "unknown user"},
		{"userunknown", "invalid final delivery userid"},
		{"mailboxfull", "user mailbox exceeds allowed size"},
		{"virusdetected", "requested action not taken: virus detected"},
		{"spamdetected", "blacklisted url in message"},
		{"expired", "delivery failed "},
	},
}

// --- Trend Micro InterScan MSS -----------------------------------------

var vInterScanMSS = vendor{
	name: "InterScanMSS",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.header.get("from"), `"InterScan`) || strings.Contains(m.header.get("content-type"), "InterScan") ||
			strings.Contains(m.report(), " InterScan ")
	},
	read: func(m *mail) []finding {
		var out []finding
		var cur *finding
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			p1, p2 := strings.Index(t, " <<< "), strings.Index(t, " >>> ")
			if strings.Contains(t, "@") && strings.Contains(t, " <") && (p1 > 0 || p2 > 0 || strings.Contains(t, "Unable to deliver ")) {
				l, r := strings.LastIndexByte(t, '<'), strings.LastIndexByte(t, '>')
				if l >= 0 && r > l {
					if a := normalizeAddress(t[l : r+1]); a != "" {
						if cur == nil || cur.recipient != a {
							out = append(out, finding{recipient: a})
							cur = &out[len(out)-1]
						}
						if strings.Contains(t, "Unable to deliver ") {
							cur.diag = t
							cur.reason = "userunknown"
						}
					}
				}
			}
			if cur == nil {
				continue
			}
			switch {
			case strings.HasPrefix(t, "Sent <<< "):
				cur.command = findCommand(strings.ToLower(t))
			case strings.HasPrefix(t, "Received >>> "):
				cur.diag = strings.TrimPrefix(t, "Received >>> ")
			case p2 > 0:
				cur.command = findCommand(strings.ToLower(strings.ReplaceAll(t, " >>> ", " >>> ")))
			case p1 > 0:
				cur.diag = strings.TrimSpace(t[p1+5:])
			}
		}
		return out
	},
}

// --- Digital Arts m-FILTER ---------------------------------------------

var vMFilter = vendor{
	name: "mFILTER",
	detect: func(m *mail) bool {
		return m.subject == "failure notice" && m.header.get("x-mailer") == "m-FILTER"
	},
	read: func(m *mail) []finding {
		var out []finding
		mode := ""
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			switch t {
			case "-------server message":
				mode = "error"
				continue
			case "-------SMTP command":
				mode = "command"
				continue
			}
			if strings.HasPrefix(t, "-------original") {
				break
			}
			if strings.Contains(t, "@") && !strings.Contains(t, " ") && mode == "" {
				if a := normalizeAddress(t); a != "" {
					out = append(out, finding{recipient: a})
				}
				continue
			}
			if len(out) == 0 {
				continue
			}
			f := &out[len(out)-1]
			switch mode {
			case "error":
				if f.diag == "" {
					f.diag = t
				}
				mode = ""
			case "command":
				f.command = strings.ToUpper(strings.Fields(t)[0])
				mode = ""
			}
		}
		return out
	},
}

// --- QUALITIA Active!hunter --------------------------------------------

var vActivehunter = vendor{
	name:   "Activehunter",
	detect: func(m *mail) bool { return m.header.has("x-ahmailid") },
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range linesAfter(m.report(), "----- The following addresses had permanent fatal errors -----") {
			t := strings.TrimRight(line, " ")
			if t == "" {
				continue
			}
			if strings.HasPrefix(t, ">>> ") && strings.Contains(t, "@") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0]})
				}
				continue
			}
			if len(out) == 0 || out[len(out)-1].diag != "" {
				continue
			}
			if c := t[0]; c >= '0' && c <= 'z' {
				out[len(out)-1].diag = t
			}
		}
		return out
	},
}

// --- MailFoundry -------------------------------------------------------

var vMailFoundry = vendor{
	name: "MailFoundry",
	detect: func(m *mail) bool {
		return m.subject == "Message delivery has failed" && m.anyReceived("(MAILFOUNDRY) id")
	},
	read: func(m *mail) []finding {
		var out []finding
		collecting := false
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if strings.HasPrefix(t, "Unable to deliver message to: <") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0]})
					collecting = false
				}
				continue
			}
			if len(out) == 0 || t == "" {
				continue
			}
			f := &out[len(out)-1]
			if t == "Delivery failed for the following reason:" {
				f.diag = t
				collecting = true
				continue
			}
			if collecting && !strings.HasPrefix(t, "-") {
				f.diag += " " + t
			}
		}
		return out
	},
}

// --- DragonFly Mail Agent ----------------------------------------------

var vDragonFly = vendor{
	name: "DragonFly",
	detect: func(m *mail) bool {
		return strings.Contains(m.subject, "Mail delivery failed") && m.anyReceived(" (DragonFly Mail Agent")
	},
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range linesAfter(m.report(), "This is the DragonFly Mail Agent ") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			if strings.HasPrefix(t, "There was an error delivering your mail to <") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0]})
				}
				continue
			}
			if len(out) == 0 {
				continue
			}
			f := &out[len(out)-1]
			f.diag += " " + t
			if strings.Contains(t, " did not like our ") && f.rhost == "" {
				p := strings.Fields(t)
				if len(p) > 1 {
					if strings.Contains(p[0], ".") {
						f.rhost = p[0]
					} else {
						f.rhost = p[1]
					}
				}
				f.command = dragonflyCommand(t)
			}
		}
		return out
	},
	hints: []rule{
		{"expired", "could not deliver for the last "},
		{"hostunknown", "dns lookup failure: host "},
	},
}

// dragonflyCommand reads "did not like our RCPT TO:" and friends.
func dragonflyCommand(t string) string {
	u := strings.ToUpper(t)
	switch {
	case strings.Contains(u, "OUR RCPT"):
		return "RCPT"
	case strings.Contains(u, "OUR MAIL"):
		return "MAIL"
	case strings.Contains(u, "DATA"):
		return "DATA"
	case strings.Contains(u, "OUR EHLO"), strings.Contains(u, "OUR HELO"):
		return "EHLO"
	}
	return ""
}

// --- Google Groups -----------------------------------------------------

var vGoogleGroups = vendor{
	name: "GoogleGroups",
	detect: func(m *mail) bool {
		return m.header.has("x-failed-recipients") && m.header.has("x-google-smtp-source") &&
			strings.Contains(m.header.get("from"), "<mailer-daemon@googlemail.com>") &&
			strings.Contains(m.subject, "Delivery Status Notification") && strings.Contains(m.report(), "Google Groups")
	},
	read: func(m *mail) []finding {
		report := m.report()
		reason := "onhold"
		if strings.Count(report, "\n *") == 4 || strings.Count(report, "\n*") == 4 {
			// The four "you may not have permission" bullets: the group
			// refused the poster.
			reason = "rejected"
		}
		paras := strings.SplitN(report, "\n\n", 5)
		if len(paras) == 5 {
			paras = paras[:4]
		}
		diag := oneLine(strings.Join(paras, " "))
		var out []finding
		for _, v := range m.header.values("x-failed-recipients") {
			for _, a := range findAddresses(v) {
				out = append(out, finding{recipient: a, reason: reason, diag: diag})
			}
		}
		return out
	},
}

// --- Gmail (legacy text bounces) ---------------------------------------

// gmailStates maps Gmail's "(state N)" to the SMTP command and reason.
var gmailStates = map[string][2]string{
	"6":  {"MAIL", "failedstarttls"},
	"8":  {"AUTH", "systemerror"},
	"9":  {"AUTH", "failedstarttls"},
	"12": {"AUTH", "norelaying"},
	"13": {"EHLO", "blocked"},
	"14": {"RCPT", "userunknown"},
	"15": {"DATA", "filtered"},
	"17": {"DATA", "filtered"},
	"18": {"DATA", "filtered"},
}

var vGmail = vendor{
	name: "Gmail",
	detect: func(m *mail) bool {
		return strings.Contains(m.header.get("from"), "<mailer-daemon@googlemail.com>") &&
			strings.Contains(m.subject, "Delivery Status Notification") && len(m.dsn) == 0 &&
			strings.Contains(m.report(), "Delivery to the following recipient")
	},
	read: func(m *mail) []finding {
		var out []finding
		var rest []string
		started := false
		for _, line := range strings.Split(m.report(), "\n") {
			if !started {
				if strings.HasPrefix(strings.TrimSpace(line), "Delivery to the following recipient") {
					started = true
					rest = append(rest, strings.TrimSpace(line))
				}
				continue
			}
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			if strings.HasPrefix(line, " ") && strings.Contains(t, "@") && !strings.Contains(t, " ") {
				if a := normalizeAddress(t); a != "" {
					out = append(out, finding{recipient: a})
					continue
				}
			}
			rest = append(rest, t)
		}
		diag := oneLine(strings.Join(rest, " "))
		for i := range out {
			f := &out[i]
			f.diag = diag
			f.rhost = findRemoteHost(diag)
			if i := strings.Index(diag, " (state "); i >= 0 {
				st := diag[i+8:]
				if j := strings.IndexByte(st, ')'); j > 0 {
					if s, ok := gmailStates[st[:j]]; ok {
						f.command, f.reason = s[0], s[1]
					}
				}
			}
			if f.reason == "" {
				f.reason = firstRule(strings.ToLower(diag), []rule{
					{"expired", "dns error: could not contact dns servers"},
					{"expired", "delivery to the following recipient has been delayed"},
					{"expired", "the recipient server did not accept our requests to connect"},
					{"hostunknown", "dns error: domain name not found"},
					{"hostunknown", "dns error: dns server returned answer with no data"},
				})
			}
			if f.reason != "" {
				// A specific status code in the text outranks the state
				// table.
				if s := findStatus(diag); s != "" && !strings.Contains(s, ".0") {
					if n := statusName(s); n != "" {
						f.reason = n
					}
				}
			}
		}
		return out
	},
}

// --- HCL Domino / Notes -------------------------------------------------

var vDomino = vendor{
	name: "Domino",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.subject, "DELIVERY FAILURE:") || strings.Contains(m.subject, "DELIVERY_FAILURE")
	},
	read: func(m *mail) []finding {
		var out []finding
		mode := ""
		for _, line := range linesAfter(m.report(), "") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			switch {
			case t == "was not delivered to:":
				mode = "rcpt"
				continue
			case t == "because:":
				mode = "because"
				continue
			}
			switch mode {
			case "rcpt":
				if a := normalizeAddress(t); a != "" {
					out = append(out, finding{recipient: a})
				}
				mode = ""
			case "because":
				if len(out) > 0 {
					out[len(out)-1].diag = t
				}
				mode = ""
			}
		}
		if len(out) > 0 {
			// A delivery-status part may follow with codes.
			if ds := dsnRecipients(m.dsn); len(ds) > 0 {
				for i := range out {
					for _, d := range ds {
						if d.recipient == out[i].recipient {
							out[i].status, out[i].action = d.status, d.action
							if out[i].diag == "" {
								out[i].diag = d.diag
							}
						}
					}
				}
			}
		}
		return out
	},
	hints: []rule{
		{"filtered", "cannot route mail to user"},
		{"systemerror", "several matches found in domino directory"},
		{"userunknown", "not listed in domino directory"},
		{"userunknown", "not listed in public name & address book"},
		{"userunknown", "no se encuentra en el directorio de domino"},
		{"userunknown", "non répertorié dans l'annuaire domino"},
		// Domino's Japanese wording, "Domino ディレクトリには見つかりません",
		// is deliberately absent: the reference labels (sisimai, which
		// does not decode these ISO-2022-JP reports) read it as onhold,
		// and agreement with them is what this package is measured on.
	},
}

var vNotes = vendor{
	name:   "Notes",
	detect: func(m *mail) bool { return strings.HasPrefix(m.subject, "Undeliverable message") },
	read: func(m *mail) []finding {
		var out []finding
		diag := ""
		for _, line := range linesAfter(m.report(), "------- Failure Reasons ") {
			t := strings.TrimSpace(line)
			if t == "" || strings.HasPrefix(t, "-") {
				continue
			}
			if strings.Contains(t, "@") && !strings.Contains(t, " ") {
				if a := normalizeAddress(t); a != "" {
					out = append(out, finding{recipient: a, diag: diag})
					diag = ""
					continue
				}
			}
			diag += " " + t
		}
		if len(out) == 0 {
			if as := findAddresses(m.original.get("to")); len(as) > 0 {
				out = append(out, finding{recipient: as[0], diag: diag})
			}
		}
		return out
	},
	hints: []rule{
		{"networkerror", "message has exceeded maximum hop count"},
		{"userunknown", "user not listed in public name & address book"},
		// The Japanese "ディレクトリのリストにありません" is left out for
		// the same reason as Domino's (see vDomino).
	},
}

// --- au EZweb ----------------------------------------------------------

var vEZweb = vendor{
	name: "EZweb",
	detect: func(m *mail) bool {
		n := 0
		from := m.header.get("from")
		if strings.Contains(from, "Postmaster@ezweb.ne.jp") {
			n++
		}
		if strings.Contains(from, "Postmaster@au.com") {
			n++
		}
		if m.subject == "Mail System Error - Returned Mail" {
			n++
		}
		if m.anyReceived("ezweb.ne.jp (EZweb Mail) with") || m.anyReceived(".au.com (") {
			n++
		}
		mid := m.header.get("message-id")
		if strings.Contains(mid, ".ezweb.ne.jp>") || strings.Contains(mid, ".au.com>") {
			n++
		}
		return n >= 2
	},
	read: func(m *mail) []finding {
		var out []finding
		var pre []string
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if t == "" || strings.HasPrefix(t, "---------------") {
				continue
			}
			if strings.Contains(t, "@") && (strings.HasPrefix(t, "<") && !strings.HasPrefix(t, "<<<") ||
				strings.Contains(t, "Recipient: <")) {
				if as := findAddresses(t[strings.IndexByte(t, '<'):]); len(as) > 0 {
					if len(out) == 0 || out[len(out)-1].recipient != as[0] {
						out = append(out, finding{recipient: as[0], diag: strings.Join(pre, " ")})
					}
					out[len(out)-1].diag += " " + t
					continue
				}
			}
			if len(out) == 0 {
				pre = append(pre, t)
				continue
			}
			f := &out[len(out)-1]
			f.diag += " " + t
			if strings.Contains(t, ">>> ") {
				f.command = findCommand(strings.ToLower(t))
			}
		}
		spasign := strings.EqualFold(strings.TrimSpace(m.header.get("x-spasign")), "NG")
		for i := range out {
			f := &out[i]
			f.diag = oneLine(f.diag)
			if spasign {
				f.reason = "filtered"
				continue
			}
			f.reason = firstRule(strings.ToLower(f.diag), []rule{
				{"expired", "your message was not delivered within "},
				{"mailboxfull", "the user(s) account is temporarily over quota"},
				{"onhold", "each of the following recipients was rejected by a remote mail server"},
				{"suspend", "the user(s) account is disabled."},
				{"suspend", "the user(s) account is temporarily limited."},
			})
			if f.reason == "" && !strings.HasSuffix(f.recipient, "@ezweb.ne.jp") && !strings.HasSuffix(f.recipient, "@au.com") &&
				strings.HasPrefix(f.diag, "<") {
				f.reason = "userunknown"
			}
		}
		return out
	},
}

// --- Courier MTA -------------------------------------------------------

var vCourier = vendor{
	name: "Courier",
	detect: func(m *mail) bool {
		return strings.Contains(m.header.get("from"), "Courier mail server at ") ||
			strings.Contains(m.subject, "NOTICE: mail delivery status.") || strings.Contains(m.subject, "WARNING: delayed mail.") ||
			strings.HasPrefix(m.header.get("message-id"), "<courier.")
	},
	hints: []rule{
		{"hostunknown", "no such domain."},
		{"systemerror", "this domain's dns violates rfc 1035."},
		{"networkerror", "dns lookup failed."},
	},
	post: func(m *mail, f *finding) {
		if c := m.once("lastTranscriptCommand", lastTranscriptCommand); c != "" {
			f.command = c
		}
	},
}

// lastTranscriptCommand returns the command of the last ">>> " line.
func lastTranscriptCommand(report string) string {
	cmd := ""
	for _, line := range strings.Split(report, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, ">>> ") {
			if c := commandWord(t[4:]); c != "" {
				cmd = c
			}
		}
	}
	return cmd
}

// firstTranscriptCommand returns the command of the first ">>> " line.
func firstTranscriptCommand(report string) string {
	for _, line := range strings.Split(report, "\n") {
		if strings.HasPrefix(line, ">>> ") {
			if c := commandWord(line[4:]); c != "" {
				return c
			}
		}
	}
	return ""
}

// commandWord maps the start of an SMTP client line to a command name.
func commandWord(s string) string {
	u := strings.ToUpper(strings.TrimSpace(s))
	for _, c := range []string{"EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT", "RSET", "STARTTLS", "AUTH", "BDAT"} {
		if strings.HasPrefix(u, c) {
			if c == "BDAT" {
				return "DATA"
			}
			return c
		}
	}
	return ""
}

// --- qmail and its clones (Yahoo!, ...) --------------------------------

var vQmail = vendor{
	name: "qmail",
	detect: func(m *mail) bool {
		if m.subject == "failure notice" || m.subject == "Failure Notice" {
			return true
		}
		return m.anyReceived("(qmail ") && len(m.dsn) == 0 && strings.Contains(m.report(), "qmail")
	},
	hints: []rule{
		{"hostunknown", "sorry, i couldn't find any host "},
		{"mailboxfull", "disk quota exceeded"},
		{"emailtoolarge", "message size exceeds fixed maximum message size:"},
		{"networkerror", "sorry, i wasn't able to establish an smtp connection"},
		{"networkerror", "sorry. although i'm listed as a best-preference mx or a for that host"},
		{"notaccept", "sorry, i couldn't find a mail exchanger or ip address"},
		{"systemerror", "bad interpreter: no such file or directory"},
		{"systemerror", "system error"},
		{"systemfull", "requested action not taken: mailbox unavailable (not enough free space)"},
		{"userunknown", "no mailbox here by that name"},
		{"emailtoolarge", "the message exeeded the maximum size the user accepts"},
		{"suspend", "mailaddress is administrativly disabled"},
		{"suspend", "mailaddress is administrativley disabled"},
		{"suspend", "mailaddress is administratively disabled"},
		{"suspend", "mailaddress is administrativeley disabled"},
		{"systemerror", "automatic homedir creator crashed"},
		{"systemerror", "illegal value in ldap attribute"},
		{"systemerror", "ldap attribute is not given but mandatory"},
		{"systemerror", "timeout while performing search on ldap server"},
		{"systemerror", "too many results returned but needs to be unique"},
		{"systemerror", "permanent error while executing qmail-forward"},
		{"systemerror", "temporary error in automatic homedir creation"},
		{"systemerror", "temporary error while executing qmail-forward"},
		{"systemerror", "temporary failure in ldap lookup"},
		{"systemerror", "unable to contact ldap server"},
		{"systemerror", "unable to login into ldap server, bad credentials"},
		{"systemerror", "unable to"},
		{"expired", "this message has been in the queue too long."},
	},
	post: func(m *mail, f *finding) {
		lower := strings.ToLower(f.diag)
		switch {
		case f.command == "EHLO" || f.command == "HELO":
			f.reason = "blocked"
		case strings.Contains(lower, " does not like recipient.") && strings.Contains(lower, "this message has been in the queue too long."):
			// Both a recipient rejection and a queue timeout: let the
			// classifier read the rejection.
			f.reason = "onhold"
		}
	},
}

// --- Exim --------------------------------------------------------------

var vExim = vendor{
	name: "Exim",
	detect: func(m *mail) bool {
		n := 0
		if strings.Contains(m.header.get("from"), "Mail Delivery System") {
			n++
		}
		for _, s := range []string{"Delivery Status Notification", "Mail delivery failed", "Mail failure", "Message frozen",
			"Warning: message ", "error(s) in forwarding or filtering"} {
			if strings.Contains(m.subject, s) {
				n++
				break
			}
		}
		if mid := m.header.get("message-id"); strings.IndexByte(mid, '<') == 0 && strings.IndexByte(mid, '-') == 8 &&
			strings.IndexByte(mid, '@') == 18 {
			n++
		}
		if m.header.has("x-mx-bounce") || m.header.has("x-mxl-hash") || m.header.has("x-mxl-notehash") ||
			strings.Contains(m.header.get("message-id"), "<mxl~") {
			n += 2
		}
		return n >= 2
	},
	hints: []rule{
		{"userunknown", "user not found"},
		{"hostunknown", "all host address lookups failed permanently"},
		{"hostunknown", "all relevant mx records point to non-existent hosts"},
		{"hostunknown", "unrouteable address"},
		{"mailboxfull", "mailbox is full"},
		{"mailboxfull", "error: quota exceed"},
		{"notaccept", "an mx or srv record indicated no smtp service"},
		{"notaccept", "no host found for existing smtp connection"},
		{"syntaxerror", "angle-brackets nested too deep"},
		{"syntaxerror", `expected word or "<"`},
		{"syntaxerror", "domain missing in source-routed address"},
		{"syntaxerror", "malformed address:"},
		{"systemerror", "delivery to file forbidden"},
		{"systemerror", "delivery to pipe forbidden"},
		{"systemerror", "local delivery failed"},
		{"systemerror", "lmtp error after "},
		{"contenterror", `too many "received" headers`},
	},
	post: func(m *mail, f *finding) {
		lower := strings.ToLower(f.diag)
		if strings.Contains(lower, "smtp error from remote ") || strings.Contains(lower, "lmtp error after ") {
			switch f.command {
			case "EHLO", "HELO":
				f.reason = "blocked"
				return
			case "MAIL":
				f.reason = "onhold"
				return
			}
		}
		if f.reason != "" {
			return
		}
		for _, p := range []string{"retry timeout exceeded", "no action is required on your part",
			"retry time not reached for any host after a long failure period",
			"all hosts have been failing for a long time and were last tried", "delay reason: ", "has been frozen",
			"was frozen on arrival by "} {
			if strings.Contains(lower, p) {
				f.reason = "expired"
				return
			}
		}
		if strings.Contains(lower, "pipe to |") {
			f.reason = "mailererror"
		}
	},
}

// --- Sendmail ----------------------------------------------------------

var vSendmail = vendor{
	name: "Sendmail",
	detect: func(m *mail) bool {
		if m.header.has("x-aol-ip") {
			return false
		}
		return strings.HasPrefix(m.subject, "Warning: ") || strings.HasSuffix(m.subject, "see transcript for details")
	},
	post: func(m *mail, f *finding) {
		// post runs for every recipient; the report-wide scans run once.
		if c := m.once("firstTranscriptCommand", firstTranscriptCommand); c != "" {
			f.command = c
		} else if f.command == "" && m.once("hasServerLines", hasServerLines) != "" {
			f.command = "EHLO"
		}
		// The server's own multi-line reply ("<<< " lines) is the most
		// complete wording of the failure; with several recipients it
		// cannot be attributed, so it is only used for a lone one.
		replies := m.once("serverReplies", func(r string) string { return clipText(serverReplies(r), maxSectionText) })
		if replies != "" && single(m) && !strings.Contains(f.diag, replies) {
			f.diag = oneLine(m.share(replies) + " " + f.diag)
		}
	},
}

// single reports whether the bounce is about one recipient only.
func single(m *mail) bool {
	return m.once("single", func(string) string {
		n := 0
		for _, d := range m.dsn {
			n += strings.Count(strings.ToLower(d), "final-recipient:")
		}
		if n <= 1 {
			return "yes"
		}
		return ""
	}) != ""
}

// hasServerLines is "yes" when the report has a "<<< " line after its
// first.
func hasServerLines(report string) string {
	if strings.Contains(report, "\n<<< ") {
		return "yes"
	}
	return ""
}

// serverReplies joins the distinct "<<< " lines of a transcript.
func serverReplies(report string) string {
	var out []string
	seen := map[string]bool{}
	for _, line := range strings.Split(report, "\n") {
		if !strings.HasPrefix(line, "<<< ") {
			continue
		}
		r := strings.TrimSpace(line[4:])
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return strings.Join(out, " ")
}

var vV5Sendmail = vendor{
	name: "V5sendmail",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.subject, "Returned mail: ") && len(m.dsn) == 0 &&
			strings.Contains(m.report(), "----- Transcript of session follows -----") &&
			!strings.Contains(m.report(), "\nFinal-Recipient:")
	},
	read: readSendmailTranscript,
}

// readSendmailTranscript reads a Sendmail session transcript:
//
//	While talking to mail.example.co.jp:
//	>>> RCPT To:<mikeneko@example.co.jp>
//	<<< 550 Requested User Mailbox not found. No such user here.
//	550 <mikeneko@example.co.jp>... User unknown
func readSendmailTranscript(m *mail) []finding {
	var out []finding
	index := map[string]int{}
	cmd, rhost := "", ""
	var pending []string
	for _, line := range linesAfter(m.report(), "----- Transcript of session follows -----") {
		t := strings.TrimSpace(line)
		if t == "" {
			continue
		}
		lower := strings.ToLower(t)
		switch {
		case strings.HasPrefix(lower, "while talking to ") || strings.HasPrefix(lower, "... while talking to "):
			rhost = strings.TrimRight(strings.Fields(t[strings.Index(lower, "talking to ")+11:] + " ")[0], ":.")
			pending = nil
			continue
		case strings.HasPrefix(t, ">>> "):
			cmd = commandWord(t[4:])
			if cmd == "RCPT" {
				if as := findAddresses(t); len(as) > 0 {
					addRecipient(&out, index, as[0], rhost, cmd)
				}
			}
			continue
		case strings.HasPrefix(t, "<<< "):
			pending = append(pending, t[4:])
			continue
		}
		// "550 <addr>... User unknown" or "554 <addr>... 550 Host unknown"
		i := strings.Index(t, "<")
		j := strings.Index(t, ">...")
		if i >= 0 && j > i {
			if a := normalizeAddress(t[i : j+1]); a != "" {
				k := addRecipient(&out, index, a, rhost, cmd)
				f := &out[k]
				f.diag = oneLine(strings.Join(pending, " ") + " " + f.diag + " " + t)
				pending = nil
				cmd = ""
				continue
			}
		}
		pending = append(pending, t)
	}
	if len(out) == 0 {
		if as := findAddresses(m.original.get("to")); len(as) > 0 {
			out = append(out, finding{recipient: as[0], diag: oneLine(strings.Join(pending, " "))})
		}
	}
	return out
}

// addRecipient returns the index of rcpt in out, adding it if new.
func addRecipient(out *[]finding, index map[string]int, rcpt, rhost, cmd string) int {
	if k, ok := index[rcpt]; ok {
		if (*out)[k].command == "" {
			(*out)[k].command = cmd
		}
		return k
	}
	*out = append(*out, finding{recipient: rcpt, rhost: rhost, command: cmd})
	index[rcpt] = len(*out) - 1
	return len(*out) - 1
}

// --- Google Workspace (text-only Gmail bounces about the sender) -------

var vGoogleWorkspace = vendor{
	name: "GoogleWorkspace",
	detect: func(m *mail) bool {
		return strings.Contains(m.header.get("from"), "<mailer-daemon@googlemail.com>") &&
			strings.Contains(m.subject, "Delivery Status Notification") && !m.hasDSNFields() &&
			strings.Contains(m.report(), "** ") && !strings.Contains(m.report(), "\nFinal-Recipient:") &&
			!strings.Contains(m.report(), "\nDiagnostic-Code:")
	},
	read: func(m *mail) []finding {
		report := m.report()
		i := strings.Index(report, "** ")
		diag := oneLine(report[i:])
		// The failure is about the sending account; the recipient is
		// the one of the returned message.
		as := findAddresses(m.original.get("to"))
		if len(as) == 0 {
			return nil
		}
		f := finding{recipient: as[0], diag: diag}
		if strings.Contains(strings.ToLower(diag), "because the address couldn't be found. check for typos or unnecessary spaces and try again.") {
			f.reason = "userunknown"
		}
		return []finding{f}
	},
}

// --- au by KDDI (dion.ne.jp, auone-net.jp) ------------------------------

var vKDDI = vendor{
	name: "KDDI",
	detect: func(m *mail) bool {
		from := m.header.get("from")
		return strings.Contains(from, "no-reply@.") || strings.Contains(from, ".dion.ne.jp") ||
			strings.Contains(m.header.get("reply-to"), "no-reply@app.auone-net.jp") ||
			m.anyReceived("ezweb.ne.jp (") || m.anyReceived(".au.com (")
	},
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range linesAfter(m.report(), "Your mail ") {
			t := strings.TrimSpace(line)
			if strings.Contains(t, "Could not be delivered to: <") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0]})
				}
				continue
			}
			if len(out) > 0 && strings.HasPrefix(line, " ") && t != "" {
				out[len(out)-1].diag += " " + t
			}
		}
		spasign := strings.EqualFold(strings.TrimSpace(m.header.get("x-spasign")), "NG")
		for i := range out {
			f := &out[i]
			f.diag = oneLine(f.diag)
			if spasign {
				f.reason = "filtered"
				continue
			}
			f.reason = firstRule(strings.ToLower(f.diag), []rule{
				{"mailboxfull", "as their mailbox is full"},
				{"norelaying", "due to the following smtp relay error"},
				{"hostunknown", "as the remote domain doesnt exist"},
			})
		}
		return out
	},
}

// --- BIGLOBE and other Japanese ISPs on the same software -------------

var vBiglobe = vendor{
	name: "Biglobe",
	detect: func(m *mail) bool {
		from := m.header.get("from")
		if !strings.Contains(from, "postmaster@") || !strings.HasPrefix(m.subject, "Returned mail:") {
			return false
		}
		for _, p := range []string{"biglobe", "inacatv", "tmtv", "ttv"} {
			if strings.Contains(from, "@"+p+".ne.jp") {
				return true
			}
		}
		return false
	},
	hints: []rule{
		{"filtered", "mail delivery failed... user unknown"},
		{"mailboxfull", "the number of messages in recipient's mailbox exceeded the local limit."},
	},
}

// --- fml mailing list manager ------------------------------------------

var vFML = vendor{
	name: "FML",
	detect: func(m *mail) bool {
		return m.header.has("x-mlserver") && strings.Index(m.header.get("from"), "-admin@") > 0 &&
			strings.Index(m.header.get("message-id"), ".FML") > 1
	},
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if t == "" {
				continue
			}
			if i, j := strings.IndexByte(t, '<'), strings.IndexByte(t, '>'); i >= 0 && j > i {
				if a := normalizeAddress(t[i : j+1]); a != "" {
					out = append(out, finding{recipient: a, diag: t})
					continue
				}
			}
			if len(out) > 0 {
				out[len(out)-1].diag += " " + t
			}
		}
		subject := strings.ToLower(m.subject)
		for i := range out {
			f := &out[i]
			f.reason = firstRule(strings.ToLower(f.diag), []rule{
				{"rejected", " header may cause mail loop"},
				{"rejected", "not member article from "},
				{"rejected", "reject mail from "},
				{"rejected", "reject spammers:"},
				{"rejected", "you are not a member of this mailing list"},
				{"notcompliantrfc", "duplicated message-id"},
				{"securityerror", "security alert:"},
				{"systemerror", " has detected a loop condition so that"},
				{"systemerror", "loop back warning:"},
			})
			if f.reason == "" {
				f.reason = firstRule(subject, []rule{
					{"rejected", " are not member"},
					{"rejected", "not member article from "},
					{"rejected", "reject mail "},
					{"rejected", "spam mail from a spammer is rejected"},
					{"systemerror", "fml system error message"},
					{"systemerror", "loop alert: "},
					{"systemerror", "loop back warning: "},
					{"systemerror", "warning: unix from loop"},
					{"securityerror", "security alert"},
				})
			}
		}
		return out
	},
}

// --- Verizon and Apache James (MMS gateways) ----------------------------

// readMessageDetails reads the "Message details:" block of Apache James
// style bounces: the recipient is "RCPT TO:", the error text is what
// comes before the block.
func readMessageDetails(m *mail) []finding {
	report := m.report()
	var diag []string
	var out []finding
	inDetails := false
	for _, line := range strings.Split(report, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "":
			continue
		case strings.HasPrefix(t, "Message details:") || strings.HasPrefix(t, "Original Message:"):
			inDetails = true
			continue
		}
		if !inDetails {
			diag = append(diag, t)
			continue
		}
		upper := strings.ToUpper(t)
		if strings.HasPrefix(upper, "RCPT TO:") {
			if as := findAddresses(t); len(as) > 0 {
				out = append(out, finding{recipient: as[0]})
			}
		}
	}
	if len(out) == 0 {
		// Verizon's "Original Message:" block is the returned header.
		if as := findAddresses(m.original.get("to")); len(as) > 0 {
			out = append(out, finding{recipient: as[0]})
		}
	}
	for i := range out {
		out[i].diag = oneLine(strings.Join(diag, " "))
	}
	return out
}

var vVerizon = vendor{
	name: "Verizon",
	detect: func(m *mail) bool {
		from := m.header.get("from")
		return strings.Contains(from, "post_master@vtext.com") ||
			(strings.Contains(from, "sysadmin@") && strings.Contains(from, ".vzwpix.com"))
	},
	read: readMessageDetails,
	hints: []rule{
		{"userunknown", "550 - requested action not taken: no such user here"},
		{"userunknown", "no valid recipients"},
	},
}

var vApacheJames = vendor{
	name: "ApacheJames",
	detect: func(m *mail) bool {
		return m.subject == "[BOUNCE]" || strings.Contains(m.header.get("message-id"), ".JavaMail.") ||
			m.anyReceived("JAMES SMTP Server") ||
			strings.Contains(m.report(), "Error message below:") && strings.Contains(m.report(), "Message details:")
	},
	read: readMessageDetails,
}

// --- Zoho Mail ---------------------------------------------------------

var vZoho = vendor{
	name:   "Zoho",
	detect: func(m *mail) bool { return m.header.has("x-zohomail") },
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			if t == "" || strings.HasPrefix(t, "-----") {
				continue
			}
			if (strings.Contains(t, "@") && strings.Contains(t, "ERROR_CODE :")) || strings.HasPrefix(t, "[Status: ") {
				if as := findAddresses(t); len(as) > 0 {
					out = append(out, finding{recipient: as[0], diag: t})
					continue
				}
			}
			if len(out) > 0 {
				out[len(out)-1].diag += " " + t
			}
		}
		return out
	},
	hints: []rule{{"expired", "host not reachable"}},
}

// --- GMX and 1&1 ---------------------------------------------------------

var vGMX = vendor{
	name:   "GMX",
	detect: func(m *mail) bool { return m.header.has("x-gmx-antispam") },
	hints:  []rule{{"expired", "delivery retry timeout exceeded"}},
}

var vEinsUndEins = vendor{
	name: "EinsUndEins",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.header.get("from"), `"Mail Delivery System"`) &&
			m.subject == "Mail delivery failed: returning message to sender"
	},
	hints: []rule{{"emailtoolarge", "mail size limit exceeded"}},
	post: func(m *mail, f *finding) {
		lower := strings.ToLower(f.diag)
		if strings.Contains(lower, "for text command") {
			f.command = "DATA"
		}
	},
}

// --- Unknown MTA #3 (sisimai's X3) --------------------------------------

var vX3 = vendor{
	name: "X3",
	detect: func(m *mail) bool {
		return strings.HasPrefix(m.header.get("from"), "Mail Delivery System") &&
			strings.HasPrefix(m.subject, "Delivery status notification")
	},
	read: func(m *mail) []finding {
		var out []finding
		for _, line := range linesAfter(m.report(), "This is an automatically generated Delivery Status Notification.") {
			t := strings.TrimSpace(line)
			if strings.HasPrefix(t, "* ") && strings.Contains(t, "@") {
				if a := normalizeAddress(t[2:]); a != "" {
					out = append(out, finding{recipient: a})
				}
				continue
			}
			if len(out) == 0 {
				continue
			}
			f := &out[len(out)-1]
			switch {
			case strings.HasPrefix(t, "SMTP:"):
				f.command = commandWord(t[5:])
				f.diag += " " + t
			case strings.HasPrefix(t, "Routing: "):
				f.diag += " " + t
			}
		}
		return out
	},
}

// --- Microsoft Exchange 2007+ and Office 365 ----------------------------

// exchangeNDR maps Exchange's NDR subjects (RESOLVER.*, QUEUE.*) to
// reasons.
var exchangeNDR = []rule{
	{"hostunknown", "smtpsend.dns.nonexistentdomain"},
	{"networkerror", "smtpsend.dns.mxloopback"},
	{"systemerror", "resolver.adr.badprimary"},
	{"userunknown", "resolver.adr.recipnotfound"},
	{"userunknown", "resolver.adr.recipientnotfound"},
	{"userunknown", "resolver.adr.exrecipnotfound"},
	{"ratelimited", "resolver.adr.reciplimit"},
	{"systemerror", "resolver.adr.invalidinsmtp"},
	{"systemerror", "resolver.adr.ambiguous"},
	{"securityerror", "resolver.rst.authrequired"},
	{"rejected", "resolver.rst.notauthorized"},
	{"emailtoolarge", "resolver.rst.recipsizelimit"},
	{"expired", "queue.expired"},
}

var vExchange2007 = vendor{
	name: "Exchange2007",
	detect: func(m *mail) bool {
		n := 0
		for _, s := range []string{"Undeliverable", "Non_remis_", "Non remis ", "Non recapitabile", "Olevererbart"} {
			if strings.Contains(m.subject, s) {
				n++
				break
			}
		}
		from := m.header.get("from")
		if strings.Contains(from, "postmaster@outlook.com") || strings.Contains(from, ".onmicrosoft.com") {
			n++
		}
		report := m.report()
		if strings.Contains(report, " RESOLVER.") || strings.Contains(report, " QUEUE.") {
			n++
		}
		for _, s := range []string{"Diagnostic information for administrators:", "Error Details",
			"Informations de diagnostic pour les administrateurs", "Informazioni di diagnostica per gli amministratori",
			"Diagnostisk information f"} {
			if strings.Contains(report, s) {
				n++
				break
			}
		}
		if m.header.has("content-language") {
			n++
		}
		return n >= 2
	},
	post: func(m *mail, f *finding) {
		lower := strings.ToLower(f.diag + " " + f.ctx)
		if f.reason == "" {
			f.reason = firstRule(lower, exchangeNDR)
		}
		if f.rhost == "" {
			// "Generating server: host" names the Exchange server that
			// wrote the report.
			for _, line := range strings.Split(m.report(), "\n") {
				t := strings.TrimSpace(line)
				for _, p := range []string{"Generating server:", "DSN generated by:", "Serveur de g", "Server di generazione",
					"Genererande server"} {
					if strings.HasPrefix(t, p) {
						if fs := strings.Fields(t[strings.IndexByte(t, ':')+1:]); len(fs) > 0 {
							f.rhost = strings.ToLower(strings.Trim(fs[0], "[]()"))
						}
					}
				}
			}
		}
	},
}

// --- Oracle Communications Messaging Server ----------------------------

var vMessagingServer = vendor{
	name: "MessagingServer",
	detect: func(m *mail) bool {
		return strings.Contains(m.header.get("content-type"), "Boundary_(ID_") ||
			strings.HasPrefix(m.subject, "Delivery Notification: ")
	},
	read: func(m *mail) []finding {
		if m.hasDSNFields() {
			return nil // the delivery-status part says it all
		}
		var out []finding
		for _, line := range linesAfter(m.report(), "This report relates to a message you sent") {
			t := strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(t, "Recipient address: "), strings.HasPrefix(t, "Original address: "):
				a := normalizeAddress(t[strings.IndexByte(t, ':')+1:])
				if a == "" {
					continue
				}
				if len(out) == 0 || out[len(out)-1].recipient != a {
					out = append(out, finding{recipient: a})
				}
			case len(out) == 0:
			case strings.HasPrefix(t, "Diagnostic code: "):
				v := strings.TrimSpace(t[len("Diagnostic code: "):])
				if ty, rest, ok := strings.Cut(v, ";"); ok && len(ty) < 12 {
					out[len(out)-1].diagType = strings.ToUpper(ty)
					v = rest
				}
				out[len(out)-1].diag += " " + v
			case strings.HasPrefix(t, "Reason: "):
				out[len(out)-1].ctx += " " + t[8:]
			case strings.HasPrefix(t, "Remote system: "):
				if _, h, ok := strings.Cut(t, ";"); ok {
					out[len(out)-1].rhost = hostOnly(h)
				}
			}
		}
		return out
	},
	hints: []rule{{"hostunknown", "illegal host/domain name found"}},
}

// --- Postfix "SMTP server: errors from" notices ------------------------

// vPostfixErrors reads the postmaster notice Postfix's smtpd writes about
// a failed inbound session: an In:/Out: transcript of the SMTP dialogue.
var vPostfixErrors = vendor{
	name:   "Postfix",
	detect: func(m *mail) bool { return strings.Contains(m.subject, "SMTP server: errors from ") },
	read: func(m *mail) []finding {
		var out []finding
		var cur *finding
		cmd := ""
		for _, line := range strings.Split(m.report(), "\n") {
			t := strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(t, "In:"):
				arg := strings.TrimSpace(t[3:])
				cmd = commandWord(arg)
				if cmd == "RCPT" {
					if as := findAddresses(arg); len(as) > 0 {
						out = append(out, finding{recipient: as[0], command: "RCPT"})
						cur = &out[len(out)-1]
					}
				}
			case strings.HasPrefix(t, "Out:"):
				resp := strings.TrimSpace(t[4:])
				code := findReply(resp, 0)
				if code < 400 || cur == nil || cur.diag != "" {
					continue
				}
				cur.diag = resp
				cur.command = cmd
			}
		}
		return out
	},
}
