package stack_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// routingSeed is a tenant with a mass relay limited to %d recipients a day,
// a workflow relay, and a default system relay; each is its own SMTP test
// server.
const routingSeed = `tenants:
  - id: acme
    name: ACME
    time_zone: Europe/Berlin
    default_from: noreply
    domain_alias: acme.example
    bounce_domain: bounce.acme.example
    admin_emails: [it@acme.example]
    domains:
      - id: acme-example
        name: acme.example
        return_path: verp
        dkim_keys:
          - selector: e2026
            algorithm: ed25519
            generate: true
    relays:
      - id: mass-relay
        name: mass
        host: 127.0.0.1
        port: %d
        security: none
        auth: {mechanism: none}
        priority: 10
        kinds: [mass]
        daily_limit: %d
        domains: [acme.example]
      - id: wf-relay
        name: workflow
        host: 127.0.0.1
        port: %d
        security: none
        auth: {mechanism: none}
        priority: 10
        kinds: [workflow]
        from_filter: acme.example
        domains: [acme.example]
default_server:
  mode: relay
  relay:
    id: system-relay
    name: system
    host: 127.0.0.1
    port: %d
    security: none
`

// TestRouting_massLimitOverflowWorkflowRelayFailuresAndDefaultServer is the
// issue's scenario: where every recipient left from, with which From, and
// that quota's counts, the events and the message log agree.
func TestRouting_massLimitOverflowWorkflowRelayFailuresAndDefaultServer(t *testing.T) {
	const massLimit = 3
	massSrv := testkit.StartSMTP(t)
	// The workflow relay refuses every transaction at MAIL FROM with 421.
	wfSrv := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyAt(testkit.SMTPStepMail,
		testkit.SMTPReply{Code: 421, Enhanced: "4.3.2", Text: "service not available"})))
	defSrv := testkit.StartSMTP(t)
	seed := filepath.Join(t.TempDir(), "routing-seed.yaml")
	if err := os.WriteFile(seed, []byte(fmt.Sprintf(routingSeed, massSrv.Port(), massLimit, wfSrv.Port(), defSrv.Port())), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPipeline(t, nil, func(o *stack.Options) { o.SeedFile = seed })
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	submit := func(s *mailbusv1.Submission) string {
		t.Helper()
		s.TenantId, s.UserId, s.TextBody = "acme", "u1", "hello"
		if err := bus.Publish(pub, bus.TopicSubmit, s, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
		return ids.MessageID("acme", s.GetIdempotencyId())
	}
	to := func(addrs ...string) []*mailbusv1.Address {
		var out []*mailbusv1.Address
		for _, a := range addrs {
			out = append(out, &mailbusv1.Address{Email: a})
		}
		return out
	}
	sent := hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)

	// A mixed batch: a newsletter to 5 (mass relay takes 3 a day), three
	// workflow mails (the workflow relay fails each), one individual mail
	// from a domain the tenant does not own (no relay serves it).
	massRcpts := []string{"m1@example.net", "m2@example.net", "m3@example.net", "m4@example.net", "m5@example.net"}
	massID := submit(&mailbusv1.Submission{IdempotencyId: "news-1", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
		From: &mailbusv1.Address{Name: "ACME News", Email: "news@acme.example"}, Subject: "News", To: to(massRcpts...)})
	var wfIDs []string
	for i := range 3 {
		wfIDs = append(wfIDs, submit(&mailbusv1.Submission{IdempotencyId: fmt.Sprintf("wf-%d", i), Kind: mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW,
			From: &mailbusv1.Address{Name: "Alice", Email: "alice@acme.example"}, Subject: "Ticket", To: to(fmt.Sprintf("w%d@example.org", i))}))
	}
	indID := submit(&mailbusv1.Submission{IdempotencyId: "ind-1", Kind: mailbusv1.EmailKind_EMAIL_KIND_INDIVIDUAL,
		From: &mailbusv1.Address{Name: "Bob", Email: "bob@partner.example"}, Subject: "Hi", To: to("i1@example.com")})

	for _, id := range append([]string{massID, indID}, wfIDs...) {
		p.waitMessage(t, id, sent)
	}
	// Three failures in one day disabled the workflow relay: a fourth
	// workflow mail goes straight to the default server.
	wfConns := wfSrv.Connections()
	wf4 := submit(&mailbusv1.Submission{IdempotencyId: "wf-4", Kind: mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW,
		From: &mailbusv1.Address{Email: "alice@acme.example"}, Subject: "Ticket", To: to("w4@example.org")})
	wfIDs = append(wfIDs, wf4)
	p.waitMessage(t, wf4, sent)
	if n := wfSrv.Connections(); n != wfConns {
		t.Errorf("the disabled workflow relay got %d more connections; it must be skipped until midnight", n-wfConns)
	}
	// The administrators' notice about the disabled relay, via the default server.
	notice := defSrv.WaitMessage(t, func(m testkit.SMTPMessage) bool {
		return len(m.To) == 1 && m.To[0] == "it@acme.example"
	})
	p.waitMessage(t, ids.MessageID("acme", "relay-disabled/wf-relay/"+limits.DayKey(time.Now(), limits.Zone("Europe/Berlin"))), sent)

	// Where every recipient left from, and with which From.
	leftFrom := map[string]string{}
	fromOf := map[string]mail.Address{}
	replyTo := map[string]string{}
	for name, srv := range map[string]*testkit.SMTPServer{"mass": massSrv, "workflow": wfSrv, "default": defSrv} {
		for _, m := range srv.Messages() {
			for _, rc := range m.To {
				if prev, dup := leftFrom[rc]; dup {
					t.Errorf("%s left twice: via %s and %s", rc, prev, name)
				}
				leftFrom[rc] = name
				f, err := mail.HeaderFrom(m.Data)
				if err != nil {
					t.Fatalf("From of the mail to %s: %v", rc, err)
				}
				fromOf[rc] = f
				replyTo[rc] = headerField(m.Data, "Reply-To")
			}
		}
	}
	viaMass := 0
	for _, rc := range massRcpts {
		switch leftFrom[rc] {
		case "mass":
			viaMass++
		case "default":
		default:
			t.Errorf("newsletter recipient %s left via %q", rc, leftFrom[rc])
		}
		if fromOf[rc].Email != "news@acme.example" {
			t.Errorf("newsletter to %s carried From %v, want news@acme.example", rc, fromOf[rc])
		}
	}
	if viaMass != massLimit {
		t.Errorf("%d newsletter recipients left via the mass relay, want its daily limit %d; the rest via the default server", viaMass, massLimit)
	}
	for i := range 5 {
		if i == 3 {
			continue
		}
		rc := fmt.Sprintf("w%d@example.org", i)
		if leftFrom[rc] != "default" || fromOf[rc].Email != "alice@acme.example" {
			t.Errorf("workflow mail to %s left via %q with From %v; want the default server, From unchanged", rc, leftFrom[rc], fromOf[rc])
		}
	}
	if got := fromOf["i1@example.com"]; leftFrom["i1@example.com"] != "default" || got.Email != "noreply@acme.example" || got.Name != "Bob (via ACME)" ||
		!strings.Contains(replyTo["i1@example.com"], "bob@partner.example") {
		t.Errorf("individual mail left via %q with From %v, Reply-To %q; want the default server, \"Bob (via ACME)\" <noreply@acme.example>, Reply-To bob@partner.example",
			leftFrom["i1@example.com"], got, replyTo["i1@example.com"])
	}
	if f, _ := mail.HeaderFrom(notice.Data); f.Email != "noreply@acme.example" {
		t.Errorf("notice From %v, want noreply@acme.example", f)
	}
	if len(wfSrv.Messages()) != 0 || massSrv.Received() != massLimit {
		t.Errorf("workflow relay accepted %d, mass relay %d messages", len(wfSrv.Messages()), massSrv.Received())
	}

	// The message log agrees: every recipient sent, with the relay it left through.
	msg := p.waitMessage(t, massID, sent)
	onRelay := 0
	for _, r := range msg.GetRecipients() {
		if r.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
			t.Errorf("recipient %s is %v", r.GetAddress(), r.GetStatus())
		}
		// The log's delivery id says which delivery carried the recipient:
		// the first one on the relay, a re-route (<base>.r1) on the default
		// server. (Its relay_id is not checked for re-routed recipients: the
		// tracker keeps the last non-empty relay id, and default-server
		// events have none, so it still names the exhausted relay.)
		rerouted := strings.HasSuffix(r.GetDeliveryId(), ".r1")
		if leftFrom[r.GetAddress()] == "mass" {
			onRelay++
			if r.GetRelayId() != "mass-relay" || rerouted {
				t.Errorf("message log says %s left as %s via %q; it left via the mass relay", r.GetAddress(), r.GetDeliveryId(), r.GetRelayId())
			}
		} else if !rerouted {
			t.Errorf("message log says %s left as %s; it was re-routed to the default server", r.GetAddress(), r.GetDeliveryId())
		}
	}
	if onRelay != massLimit {
		t.Errorf("%d recipients on the mass relay, want %d", onRelay, massLimit)
	}
	for _, id := range wfIDs[:3] {
		m := p.waitMessage(t, id, sent)
		if r := m.GetRecipients()[0]; !strings.HasSuffix(r.GetDeliveryId(), ".r1") {
			t.Errorf("message log says %s left as %s, want the re-routed delivery", r.GetAddress(), r.GetDeliveryId())
		}
	}
	if r := p.waitMessage(t, wf4, sent).GetRecipients()[0]; strings.Contains(r.GetDeliveryId(), ".r") || r.GetRelayId() != "" {
		t.Errorf("the fourth workflow mail left as %s via %q; it should have been routed to the default server at once", r.GetDeliveryId(), r.GetRelayId())
	}

	// Quota counted every recipient exactly once, relays and default server
	// together: 5 + 4 + 1 + the notice; the mass relay exactly its limit.
	u, err := limits.New(p.Redis).Usage(context.Background(), "acme", "mass-relay", limits.Zone("Europe/Berlin"))
	if err != nil {
		t.Fatal(err)
	}
	if u.Relay != massLimit || u.Tenant != 11 {
		t.Errorf("quota usage %+v, want mass relay %d and tenant 11", u, massLimit)
	}
	disabled, err := limits.New(p.Redis).IsDisabled(context.Background(), "acme", "wf-relay", limits.Zone("Europe/Berlin"))
	if err != nil || !disabled {
		t.Errorf("workflow relay disabled = %v (%v), want disabled for today", disabled, err)
	}
}

// headerField returns the first value of a header field, unfolded.
func headerField(msg []byte, name string) string {
	head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	head = strings.NewReplacer("\r\n ", " ", "\r\n\t", " ").Replace(head)
	for _, line := range strings.Split(head, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
