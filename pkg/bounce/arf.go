package bounce

import (
	"encoding/json"
	"strings"
)

// UndisclosedRecipient is the placeholder recipient of a complaint report
// that names no recipient at all (neither Original-Rcpt-To nor a usable To:
// in the reported message). It is the convention sisimai uses, so that
// reports compare across tools; callers match such records by
// OriginalMessageID or their own headers instead.
const UndisclosedRecipient = "undisclosed-recipient-in-headers@libsisimai.org.invalid"

// isFeedbackReport reports whether m is an RFC 5965 abuse report or one of
// the providers' look-alikes (Microsoft JMRP, Apple's unsubscribe).
func isFeedbackReport(m *mail) bool {
	ct := strings.ToLower(m.header.get("content-type"))
	if strings.Contains(ct, "report-type") && strings.Contains(ct, "feedback-report") {
		return true
	}
	if len(m.feedback) > 0 {
		return true
	}
	subj := strings.ToLower(m.subject)
	from := strings.ToLower(m.from)
	if strings.Contains(subj, "complaint about message from ") &&
		(strings.Contains(from, "staff@hotmail.com") || strings.Contains(from, "complaints@email-abuse.amazonses.com")) {
		return true
	}
	return strings.EqualFold(strings.TrimSpace(m.header.get("x-apple-unsubscribe")), "true")
}

// readFeedback reads complaint reports into findings with reason feedback.
func readFeedback(m *mail) []finding {
	if fs := readSESNotification(m); fs != nil {
		return fs
	}
	if !isFeedbackReport(m) {
		return nil
	}
	var out []finding
	ftype, agentHost, date, srcIP := "", "", "", ""
	var rcpts []string
	for _, body := range m.feedback {
		for _, block := range splitDSNFields(body) {
			for _, f := range block {
				switch f.name {
				case "feedback-type":
					if ftype == "" {
						ftype = strings.ToLower(strings.TrimSpace(f.value))
					}
				case "original-rcpt-to", "removal-recipient":
					if a := normalizeAddress(f.value); a != "" {
						rcpts = append(rcpts, a)
					}
				case "reporting-mta":
					agentHost = hostOnly(f.value)
				case "arrival-date", "received-date":
					date = f.value
				case "source-ip":
					srcIP = strings.TrimSpace(f.value)
				}
			}
		}
	}
	diag := oneLine(m.report())
	if strings.EqualFold(strings.TrimSpace(m.header.get("x-apple-unsubscribe")), "true") && len(m.feedback) == 0 {
		// Apple Mail's unsubscribe: the complainer is the sender of the
		// report itself.
		if a := normalizeAddress(m.header.get("from")); a != "" {
			rcpts = []string{a}
			ftype = "opt-out"
		}
	}
	if ftype == "" {
		ftype = "abuse"
	}
	if len(rcpts) == 0 {
		// Fall back to the reported message's recipient.
		a := ""
		if to := m.original.get("to"); to != "" {
			if as := findAddresses(to); len(as) > 0 {
				a = as[0]
			}
		}
		if a == "" {
			a = UndisclosedRecipient
		}
		rcpts = []string{a}
	}
	seen := map[string]bool{}
	for _, r := range rcpts {
		if seen[r] {
			continue
		}
		seen[r] = true
		out = append(out, finding{
			recipient: r, reason: "feedback", feedback: ftype, diag: diag,
			lhost: agentHost, rhost: srcIP, date: date, agent: "ARF",
		})
	}
	return out
}

// sesNotification is the subset of an Amazon SES (via SNS) notification
// that matters here.
type sesNotification struct {
	Type             string `json:"Type"`
	Message          string `json:"Message"`
	NotificationType string `json:"notificationType"`
	EventType        string `json:"eventType"`
	Bounce           *struct {
		BounceType        string `json:"bounceType"`
		BounceSubType     string `json:"bounceSubType"`
		BouncedRecipients []struct {
			EmailAddress   string `json:"emailAddress"`
			Action         string `json:"action"`
			Status         string `json:"status"`
			DiagnosticCode string `json:"diagnosticCode"`
		} `json:"bouncedRecipients"`
		Timestamp    string `json:"timestamp"`
		ReportingMTA string `json:"reportingMTA"`
		RemoteMTAIP  string `json:"remoteMtaIp"`
	} `json:"bounce"`
	Complaint *struct {
		ComplainedRecipients []struct {
			EmailAddress string `json:"emailAddress"`
		} `json:"complainedRecipients"`
		Timestamp             string `json:"timestamp"`
		ComplaintFeedbackType string `json:"complaintFeedbackType"`
	} `json:"complaint"`
	Delivery *struct {
		Timestamp    string   `json:"timestamp"`
		Recipients   []string `json:"recipients"`
		SMTPResponse string   `json:"smtpResponse"`
		ReportingMTA string   `json:"reportingMTA"`
	} `json:"delivery"`
	Mail *struct {
		MessageID string `json:"messageId"`
		Headers   []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"headers"`
	} `json:"mail"`
}

// readSESNotification reads Amazon SES bounce, complaint and delivery
// notifications delivered as JSON (SNS e-mail subscriptions).
func readSESNotification(m *mail) []finding {
	body := strings.TrimSpace(m.report())
	start := strings.IndexByte(body, '{')
	if start < 0 || !strings.Contains(body, "notificationType") && !strings.Contains(body, "eventType") {
		return nil
	}
	end := strings.LastIndexByte(body, '}')
	if end <= start {
		return nil
	}
	var n sesNotification
	if err := json.Unmarshal([]byte(body[start:end+1]), &n); err != nil {
		// Mail clients wrap long lines; the JSON may be split by "\n".
		joined := strings.ReplaceAll(body[start:end+1], "\n", "")
		if err := json.Unmarshal([]byte(joined), &n); err != nil {
			return nil
		}
	}
	if n.Type == "Notification" && n.Message != "" {
		var inner sesNotification
		if err := json.Unmarshal([]byte(n.Message), &inner); err != nil {
			return nil
		}
		n = inner
	}
	kind := n.NotificationType
	if kind == "" {
		kind = n.EventType
	}
	if n.Mail != nil && len(m.original) == 0 {
		for _, h := range n.Mail.Headers {
			m.original = append(m.original, field{key: strings.ToLower(h.Name), value: h.Value})
		}
	}
	var out []finding
	switch kind {
	case "Bounce":
		if n.Bounce == nil {
			return nil
		}
		for _, r := range n.Bounce.BouncedRecipients {
			f := finding{
				recipient: r.EmailAddress, action: r.Action, status: r.Status,
				diag: oneLine(r.DiagnosticCode), lhost: hostOnly(strings.TrimPrefix(n.Bounce.ReportingMTA, "dsn;")),
				date: n.Bounce.Timestamp, agent: "AmazonSES", diagType: "SMTP",
			}
			f.reply = findReply(f.diag, 0)
			if f.diag == "" {
				f.diag = n.Bounce.BounceType + " " + n.Bounce.BounceSubType
			}
			// The bounce subtype is not used: the diagnostic code is
			// more specific, and SES's "Suppressed" is an earlier hard
			// bounce that the diagnostic still names.
			f.command = findCommand(strings.ToLower(f.diag))
			out = append(out, f)
		}
	case "Complaint":
		if n.Complaint == nil {
			return nil
		}
		ft := n.Complaint.ComplaintFeedbackType
		if ft == "" {
			ft = "abuse"
		}
		for _, r := range n.Complaint.ComplainedRecipients {
			out = append(out, finding{recipient: r.EmailAddress, reason: "feedback", feedback: ft,
				date: n.Complaint.Timestamp, agent: "AmazonSES"})
		}
	case "Delivery":
		if n.Delivery == nil {
			return nil
		}
		for _, r := range n.Delivery.Recipients {
			f := finding{recipient: r, action: "delivered", diag: n.Delivery.SMTPResponse,
				date: n.Delivery.Timestamp, lhost: n.Delivery.ReportingMTA, agent: "AmazonSES", reason: "delivered"}
			f.status = findStatus(f.diag)
			f.reply = findReplyAny(f.diag)
			out = append(out, f)
		}
	}
	return out
}

// findReplyAny is findReply that also accepts 2xx codes.
func findReplyAny(s string) int {
	if c := findReply(s, '2'); c != 0 {
		return c
	}
	return findReply(s, 0)
}
