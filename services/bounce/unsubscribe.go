package bounce

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/unsub"
)

// Unsubscriber is the part of the suppression list that takes
// unsubscribes (pkg/suppress.Store): mass mail only, never narrowing an
// entry for all mail.
type Unsubscriber interface {
	Unsubscribe(ctx context.Context, tenantID, addr, detail string) (bool, error)
}

// ReasonUnsubscribed is the reason (and warning) of the event an
// unsubscribe publishes. It is a history event, not a recipient status: the
// mail was sent, and the recipient asked for no more of its kind.
const ReasonUnsubscribed = "unsubscribed"

// Ways a recipient unsubscribed, in the event's "via" attribute.
const (
	ViaOneClick = "one-click" // RFC 8058 POST, as Gmail and Yahoo send it
	ViaPage     = "page"      // the confirmation page's button
	ViaMailto   = "mailto"    // mail to the List-Unsubscribe mailto:
)

// unsubscribe suppresses addr for the tenant's mass mail and, when the
// message is known, records it in the message's history.
func (s *Service) unsubscribe(ctx context.Context, tenantID, addr, messageID, via string) error {
	u, ok := s.supp.(Unsubscriber)
	if !ok || s.supp == nil {
		return errors.New("unsubscribe: this bounce service keeps no suppression list")
	}
	detail := "unsubscribed from mass mail (" + via + ")"
	if _, err := u.Unsubscribe(ctx, tenantID, addr, detail); err != nil {
		return err
	}
	s.metrics.suppressed.WithLabelValues("unsubscribe").Inc()
	if messageID == "" {
		s.log.InfoContext(ctx, "recipient unsubscribed; no message named, so no event", "tenant_id", tenantID, "via", via)
		return nil
	}
	ev := &mailbusv1.DeliveryEvent{
		TenantId: tenantID, MessageId: messageID, Recipients: []string{strings.ToLower(addr)},
		Stage: events.StageBounce, Reason: ReasonUnsubscribed, Warning: ReasonUnsubscribed, Detail: detail,
		OccurTime: timestamppb.New(s.now()), Attributes: map[string]string{"via": via},
	}
	// One event per recipient, message and way: a client that posts
	// twice (Gmail retries) records it once.
	ev.EventId = ids.EventID(messageID, events.StageBounce, ReasonUnsubscribed, 0, strings.ToLower(addr), via)
	return s.publish(ctx, ev)
}

var unsubscribePage = template.Must(template.New("unsubscribe").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Unsubscribe</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}
button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:.4rem;background:#2563eb;color:#fff;cursor:pointer}</style>
</head><body>
{{if .Done}}<h1>You are unsubscribed</h1><p>{{.Address}} will get no more of these mailings. Messages you asked for, such as receipts or password resets, still reach you.</p>
{{else}}<h1>Unsubscribe</h1><p>Stop these mailings to <strong>{{.Address}}</strong>?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><input type="hidden" name="via" value="page"><button type="submit">Unsubscribe</button></form>{{end}}
</body></html>`))

// UnsubscribeHandler serves the one-click unsubscribe links the router
// puts in mass mail, under any path ending in the link's token. A POST
// (RFC 8058: "List-Unsubscribe=One-Click", no second click, no cookies)
// unsubscribes at once; a GET only shows a page with a confirm button,
// because mail scanners follow links. A link that does not verify is
// refused, and nothing else is served.
func (s *Service) UnsubscribeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		link, err := unsub.Parse(s.cfg.VERPKeys, token)
		if err != nil {
			s.metrics.rcpts.WithLabelValues("unsubscribe_forged").Inc()
			http.Error(w, "This unsubscribe link is not valid: it was changed or not issued by this server. Use the link in the message as it is.", http.StatusNotFound)
			return
		}
		if _, ok := s.tenants.Tenant(link.Tenant); !ok {
			http.Error(w, "This unsubscribe link belongs to a sender that no longer exists here.", http.StatusNotFound)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_ = unsubscribePage.Execute(w, map[string]any{"Address": link.Recipient})
		case http.MethodPost:
			r.Body = http.MaxBytesReader(w, r.Body, 4096)
			if err := r.ParseForm(); err != nil {
				http.Error(w, "unreadable form", http.StatusBadRequest)
				return
			}
			via := ViaOneClick
			if r.PostForm.Get("via") == ViaPage {
				via = ViaPage
			}
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			if err := s.unsubscribe(ctx, link.Tenant, link.Recipient, link.MessageID, via); err != nil {
				s.log.Error("cannot unsubscribe", "tenant_id", link.Tenant, "err", err)
				http.Error(w, "We could not record your unsubscribe just now; please try again in a minute.", http.StatusServiceUnavailable)
				return
			}
			if via == ViaPage {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				_ = unsubscribePage.Execute(w, map[string]any{"Address": link.Recipient, "Done": true})
				return
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "unsubscribed")
		default:
			w.Header().Set("Allow", "GET, HEAD, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
}

// mailtoUnsubscribe acts on mail to an unsubscribe address: the sender
// (envelope or From) must be the recipient the address was made for; the
// subject's token, when it verifies for the same recipient, names the
// message for the event.
func (s *Service) mailtoUnsubscribe(ctx context.Context, t target, mailFrom string, raw []byte) error {
	senders := []string{mailFrom}
	if f, err := mail.HeaderFrom(raw); err == nil {
		senders = append(senders, f.Email)
	}
	for _, sender := range senders {
		if sender == "" || !unsub.MailtoMatches(s.cfg.VERPKeys, t.tenant.GetId(), t.unsubscribe, sender) {
			continue
		}
		messageID := ""
		if subj, _ := mail.HeaderValue(raw, "Subject"); subj != "" {
			f := strings.Fields(subj)
			if l, err := unsub.Parse(s.cfg.VERPKeys, f[len(f)-1]); err == nil && l.Tenant == t.tenant.GetId() && strings.EqualFold(l.Recipient, sender) {
				messageID = l.MessageID
			}
		}
		return s.unsubscribe(ctx, t.tenant.GetId(), sender, messageID, ViaMailto)
	}
	return errNotTheRecipient
}

var errNotTheRecipient = errors.New("the unsubscribe address was not made for this sender")
