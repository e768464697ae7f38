package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// funcs turn the API's values into words for the templates; no page shows
// an enum constant or a raw message.
var funcs = template.FuncMap{
	"statusName":  statusName,
	"statusValue": func(s mailbusv1.DeliveryStatus) string { return statusName(s) },
	"when":        when,
	"shortID":     shortID,
	"plural":      plural,
	"kindName":    func(k mailbusv1.EmailKind) string { return enumWord(k.String(), "EMAIL_KIND_") },
	"securityName": func(s mailbusv1.RelaySecurity) string {
		switch s {
		case mailbusv1.RelaySecurity_RELAY_SECURITY_NONE:
			return "none"
		case mailbusv1.RelaySecurity_RELAY_SECURITY_STARTTLS:
			return "STARTTLS"
		case mailbusv1.RelaySecurity_RELAY_SECURITY_TLS:
			return "implicit TLS"
		}
		return "not set"
	},
	"mechName": func(m mailbusv1.AuthMechanism) string { return enumWord(m.String(), "AUTH_MECHANISM_") },
	"returnPath": func(d *mailbusv1.Domain) string {
		switch d.GetReturnPathMode() {
		case mailbusv1.ReturnPathMode_RETURN_PATH_MODE_VERP:
			return "VERP: bounces come back to mailbus on the tenant's bounce domain"
		case mailbusv1.ReturnPathMode_RETURN_PATH_MODE_FROM:
			return "the From address receives bounces"
		case mailbusv1.ReturnPathMode_RETURN_PATH_MODE_CUSTOM:
			return "bounces go to " + d.GetCustomReturnPath()
		}
		return "not set (VERP)"
	},
	"algName": func(a mailbusv1.DkimAlgorithm) string {
		switch a {
		case mailbusv1.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256:
			return "RSA-SHA256"
		case mailbusv1.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256:
			return "Ed25519-SHA256"
		}
		return "unknown"
	},
	"hasKind":   func(r *mailbusv1.Relay, k mailbusv1.EmailKind) bool { return slices.Contains(r.GetKinds(), k) },
	"hasDomain": func(r *mailbusv1.Relay, d string) bool { return slices.Contains(r.GetDomains(), d) },
	"kindsText": func(ks []mailbusv1.EmailKind) string {
		if len(ks) == 0 {
			return "all kinds"
		}
		var w []string
		for _, k := range ks {
			w = append(w, enumWord(k.String(), "EMAIL_KIND_"))
		}
		return strings.Join(w, ", ")
	},
	"join":  strings.Join,
	"reply": replyText,
	"securityOptions": func() []string {
		return []string{"RELAY_SECURITY_NONE", "RELAY_SECURITY_STARTTLS", "RELAY_SECURITY_TLS"}
	},
	"mechOptions": func() []string {
		return []string{"AUTH_MECHANISM_NONE", "AUTH_MECHANISM_PLAIN", "AUTH_MECHANISM_LOGIN", "AUTH_MECHANISM_CRAM_MD5", "AUTH_MECHANISM_XOAUTH2", "AUTH_MECHANISM_CLIENT_CERT"}
	},
	"optionWord": func(v string) string {
		for _, p := range []string{"RELAY_SECURITY_", "AUTH_MECHANISM_", "EMAIL_KIND_"} {
			if strings.HasPrefix(v, p) {
				w := enumWord(v, p)
				if w == "tls" {
					return "implicit TLS"
				}
				if w == "starttls" {
					return "STARTTLS"
				}
				return w
			}
		}
		return v
	},
	"ms":  func(n int64) string { return fmt.Sprintf("%d ms", n) },
	"add": func(a, b int) int { return a + b },
	"firstRecipients": func(m *mailbusv1.Message) string {
		var addrs []string
		for _, r := range m.GetRecipients() {
			addrs = append(addrs, r.GetAddress())
		}
		if len(addrs) == 0 {
			addrs = m.GetSummary().GetRecipients()
		}
		if len(addrs) > 2 {
			return strings.Join(addrs[:2], ", ") + fmt.Sprintf(" +%d", len(addrs)-2)
		}
		return strings.Join(addrs, ", ")
	},
}

// statusName is a status as one lower-case word ("sent", "bounced").
func statusName(s mailbusv1.DeliveryStatus) string {
	if s == mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED {
		return "note"
	}
	return enumWord(s.String(), "DELIVERY_STATUS_")
}

func enumWord(s, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(s, prefix))
	return strings.ReplaceAll(w, "_", " ")
}

// when shows a time in UTC to the minute, with seconds when they matter
// (a message's history).
func when(ts any) string {
	var t time.Time
	switch v := ts.(type) {
	case *timestamppb.Timestamp:
		if v == nil {
			return ""
		}
		t = v.AsTime()
	case time.Time:
		t = v
	}
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// replyText is what a remote server said, as it said it: "550 5.1.1 No
// such user".
func replyText(r *mailbusv1.SmtpReply) string {
	if r == nil || (r.GetCode() == 0 && r.GetText() == "") {
		return ""
	}
	parts := []string{}
	if r.GetCode() != 0 {
		parts = append(parts, fmt.Sprint(r.GetCode()))
	}
	if r.GetEnhancedCode() != "" {
		parts = append(parts, r.GetEnhancedCode())
	}
	if r.GetText() != "" {
		parts = append(parts, r.GetText())
	}
	return strings.Join(parts, " ")
}
