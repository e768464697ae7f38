package stack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/emersion/go-smtp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// conn is a gRPC connection with the admin token.
func (p *pipeline) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: p.AdminToken, AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// submit publishes one submission to mail.submit as a producer would.
func submit(t *testing.T, p *pipeline, idem, to string) string {
	t.Helper()
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub := &mailbusv1.Submission{
		IdempotencyId: idem, TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From: &mailbusv1.Address{Email: "alice@acme.example"}, To: []*mailbusv1.Address{{Email: to}},
		Subject: "Your order " + idem, TextBody: "Hello",
	}
	if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
		t.Fatal(err)
	}
	return ids.MessageID("acme", idem)
}

// dsn builds an RFC 3464 delivery status notification by hand, the way
// Postfix writes one, returning the original message's header.
func dsn(rcpt, status, diagnostic string, original []byte) string {
	head, _, _ := strings.Cut(strings.ReplaceAll(string(original), "\r\n", "\n"), "\n\n")
	return strings.ReplaceAll(`From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: whoever@bounce.acme.example
Subject: Undelivered Mail Returned to Sender
Date: Mon, 02 Mar 2026 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"
Auto-Submitted: auto-replied

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<`+rcpt+`>: host mx.example.net[192.0.2.1] said: `+diagnostic+` (in reply to RCPT TO command)

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Mon, 02 Mar 2026 09:59:58 +0000

Final-Recipient: rfc822; `+rcpt+`
Original-Recipient: rfc822;`+rcpt+`
Action: failed
Status: `+status+`
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; `+diagnostic+`

--BOUNDARY
Content-Type: text/rfc822-headers

`+head+`

--BOUNDARY--
`, "\n", "\r\n")
}

// sendBounce delivers one message to the bounce listener from the null
// sender, as an MTA returns a bounce.
func sendBounce(addr, rcpt, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.example.net"); err != nil {
		return err
	}
	if err := c.Mail("", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func recipientIs(status mailbusv1.DeliveryStatus, reason string) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool {
		return len(m.GetRecipients()) == 1 && m.GetRecipients()[0].GetStatus() == status && m.GetRecipients()[0].GetReason() == reason
	}
}

func TestBounce_hardBounceMarksTheRecipientBouncedAndSuppressesTheAddress(t *testing.T) {
	p := startPipeline(t, nil, nil)
	ctx := context.Background()
	const rcpt = "gone@example.net"
	first := submit(t, p, "bounce-1", rcpt)
	sent := p.smtp.WaitMessages(t, 1)[0]
	p.waitMessage(t, first, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	if !strings.HasSuffix(sent.From, "@bounce.acme.example") {
		t.Fatalf("return path %q is not on the bounce domain", sent.From)
	}

	report := dsn(rcpt, "5.1.1", "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown in virtual mailbox table", sent.Data)
	if err := sendBounce(p.BounceAddr, sent.From, report); err != nil {
		t.Fatalf("the bounce listener refused a DSN for a VERP address it made: %v", err)
	}
	m := p.waitMessage(t, first, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown"))
	rc := m.GetRecipients()[0]
	if rc.GetReply().GetEnhancedCode() != "5.1.1" || !strings.Contains(rc.GetDetail(), "User unknown") {
		t.Errorf("bounced recipient lost the report's status or words: %v", rc)
	}
	hard := false
	for _, ev := range m.GetHistory() {
		if ev.GetStage() == "bounce" && ev.GetPermanent() && ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED {
			hard = true
		}
	}
	if !hard {
		t.Errorf("no hard bounce event in the history: %v", m.GetHistory())
	}

	// The address is on the tenant's list, for SuppressionService too.
	supp := mailbusv1.NewSuppressionServiceClient(p.conn(t))
	list, err := supp.ListSuppressions(ctx, &mailbusv1.ListSuppressionsRequest{TenantId: "acme", Addresses: []string{"Gone@Example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetSuppressions()) != 1 || list.GetSuppressions()[0].GetReason() != "userunknown" || list.GetSuppressions()[0].GetSource() != "bounce" {
		t.Fatalf("suppression list after a hard bounce: %v", list.GetSuppressions())
	}

	// The router drops the address from the next submission.
	second := submit(t, p, "bounce-2", rcpt)
	p.waitMessage(t, second, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED, "suppressed"))

	// An administrator takes it off the list, and mail flows again.
	if _, err := supp.RemoveSuppression(ctx, &mailbusv1.RemoveSuppressionRequest{TenantId: "acme", Address: rcpt}); err != nil {
		t.Fatal(err)
	}
	third := submit(t, p, "bounce-3", rcpt)
	p.waitMessage(t, third, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
}

func TestBounce_softBounceKeepsSentWithANoteAndCountsTowardsTheThreshold(t *testing.T) {
	p := startPipeline(t, nil, nil)
	const rcpt = "full@example.net"
	id := submit(t, p, "soft-1", rcpt)
	sent := p.smtp.WaitMessages(t, 1)[0]
	p.waitMessage(t, id, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	report := dsn(rcpt, "4.2.2", "452 4.2.2 <full@example.net>: Mailbox full", sent.Data)
	if err := sendBounce(p.BounceAddr, sent.From, report); err != nil {
		t.Fatal(err)
	}
	m := p.waitMessage(t, id, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, "mailboxfull"))
	if !strings.Contains(m.GetRecipients()[0].GetDetail(), "soft bounce") {
		t.Errorf("sent recipient has no soft-bounce note: %v", m.GetRecipients()[0])
	}
	got, err := p.Suppressions.Suppressed(context.Background(), "acme", []string{rcpt})
	if err != nil || len(got) != 0 {
		t.Fatalf("one soft bounce must not suppress (default threshold 3): %v %v", got, err)
	}
}

func TestBounce_listenerRefusesAddressesItDidNotMakeAtRCPT(t *testing.T) {
	p := startPipeline(t, nil, nil)
	good, err := mail.VERPEncode(p.VERPKey, "acme", "m0000000000000000000000000.0", "bob@example.net", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	local, _, _ := strings.Cut(good, "@")
	flipped := []byte(local)
	if flipped[len(flipped)-1] == 'a' {
		flipped[len(flipped)-1] = 'b'
	} else {
		flipped[len(flipped)-1] = 'a'
	}
	otherKey, err := mail.VERPEncode([]byte("another key of sixteen bytes or more"), "acme", "m0000000000000000000000000.0", "bob@example.net", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	otherDomain, err := mail.VERPEncode(p.VERPKey, "acme", "m0000000000000000000000000.0", "bob@example.net", "bounce.nobody.example")
	if err != nil {
		t.Fatal(err)
	}
	msg := dsn("bob@example.net", "5.1.1", "550 5.1.1 User unknown", []byte("Message-ID: <x@y>\r\n\r\n"))
	tests := []struct {
		name, rcpt string
	}{
		{"altered signature", string(flipped) + "@bounce.acme.example"},
		{"signed with another key", otherKey},
		{"not a VERP address", "postmaster@bounce.acme.example"},
		{"no tenant has the bounce domain", otherDomain},
		{"relaying attempt", "victim@example.org"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := sendBounce(p.BounceAddr, tc.rcpt, msg)
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
				t.Fatalf("RCPT TO:<%s> answered %v; want 550 5.1.1", tc.rcpt, err)
			}
		})
	}
}

func TestBounce_garbageToAValidAddressIsAcceptedAndChangesNothing(t *testing.T) {
	p := startPipeline(t, nil, nil)
	id := submit(t, p, "garbage-1", "carol@example.net")
	sent := p.smtp.WaitMessages(t, 1)[0]
	p.waitMessage(t, id, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	garbage := []string{
		"this is not a mail at all\r\n",
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recip",
		"From: a@b\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n\x00\xff\xfe--\r\n",
	}
	for i, g := range garbage {
		if err := sendBounce(p.BounceAddr, sent.From, g); err != nil {
			t.Fatalf("garbage #%d: %v", i, err)
		}
	}
	// A real bounce after the garbage still works: the listener survived
	// and nothing else changed the message.
	report := dsn("carol@example.net", "5.1.1", "550 5.1.1 User unknown", sent.Data)
	if err := sendBounce(p.BounceAddr, sent.From, report); err != nil {
		t.Fatal(err)
	}
	m := p.waitMessage(t, id, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown"))
	n := 0
	for _, ev := range m.GetHistory() {
		if ev.GetStage() == "bounce" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("want exactly one bounce event (the real one), history: %v", m.GetHistory())
	}
	select {
	case <-p.Done():
		t.Fatalf("pipeline failed: %v", p.Err())
	case <-time.After(0):
	}
}

// globexTenant is a second tenant with its own bounce domain, relaying to
// the same test server as acme.
const globexTenant = `  - id: globex
    name: Globex
    time_zone: UTC
    bounce_domain: bounce.globex.example
    domains:
      - id: globex-example
        name: globex.example
        return_path: verp
        dkim_keys:
          - selector: e2026
            algorithm: ed25519
            generate: true
    relays:
      - id: globex-relay
        name: relay
        host: 127.0.0.1
        port: %s
        security: none
        auth:
          mechanism: none
        priority: 10
        domains: [globex.example]
`

// withGlobex adds globexTenant to the pipeline's seed.
func withGlobex(t *testing.T) func(*stack.Options) {
	return func(o *stack.Options) {
		seed, err := os.ReadFile(o.SeedFile)
		if err != nil {
			t.Fatal(err)
		}
		port := regexp.MustCompile(`port: (\d+)`).FindSubmatch(seed)
		if port == nil {
			t.Fatal("no relay port in the seed")
		}
		seed = bytes.Replace(seed, []byte("tenants:\n"), []byte("tenants:\n"+fmt.Sprintf(globexTenant, port[1])), 1)
		if err := os.WriteFile(o.SeedFile, seed, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// submitAs publishes one submission of tenant from a sender address.
func submitAs(t *testing.T, p *pipeline, tenant, from, idem, to string) string {
	t.Helper()
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub := &mailbusv1.Submission{
		IdempotencyId: idem, TenantId: tenant, Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From: &mailbusv1.Address{Email: from}, To: []*mailbusv1.Address{{Email: to}},
		Subject: "Your order " + idem, TextBody: "Hello",
	}
	if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
		t.Fatal(err)
	}
	return ids.MessageID(tenant, idem)
}

// A VERP address names a delivery of one tenant; at another tenant's
// bounce domain it must be refused, or anyone holding a return path of
// tenant A could put A's recipient on tenant B's suppression list (and
// report A's message to the tracker as B's).
func TestBounce_VERPAddressIsAcceptedOnlyAtItsOwnTenantsBounceDomain(t *testing.T) {
	p := startPipeline(t, nil, withGlobex(t))
	ctx := context.Background()
	const rcptA, rcptB = "gone-a@example.net", "gone-b@example.net"
	idA := submitAs(t, p, "acme", "alice@acme.example", "cross-a", rcptA)
	idB := submitAs(t, p, "globex", "gina@globex.example", "cross-b", rcptB)
	sentTo := func(rcpt string) func(testkit.SMTPMessage) bool {
		return func(m testkit.SMTPMessage) bool { return len(m.To) == 1 && m.To[0] == rcpt }
	}
	sentA := p.smtp.WaitMessage(t, sentTo(rcptA))
	sentB := p.smtp.WaitMessage(t, sentTo(rcptB))
	p.waitMessage(t, idA, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	p.waitMessage(t, idB, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	localA, domainA, _ := strings.Cut(sentA.From, "@")
	localB, domainB, _ := strings.Cut(sentB.From, "@")
	if domainA != "bounce.acme.example" || domainB != "bounce.globex.example" {
		t.Fatalf("return paths %q and %q are not on their tenants' bounce domains", sentA.From, sentB.From)
	}
	reportA := dsn(rcptA, "5.1.1", "550 5.1.1 <gone-a@example.net>: User unknown", sentA.Data)
	reportB := dsn(rcptB, "5.1.1", "550 5.1.1 <gone-b@example.net>: User unknown", sentB.Data)

	for _, tc := range []struct{ name, rcpt, report string }{
		{"acme's address at globex's domain", localA + "@" + domainB, reportA},
		{"globex's address at acme's domain", localB + "@" + domainA, reportB},
		{"acme's address at globex's domain in other case", strings.ToUpper(localA) + "@Bounce.Globex.Example", reportA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sendBounce(p.BounceAddr, tc.rcpt, tc.report)
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "not issued for this bounce domain") {
				t.Fatalf("RCPT TO:<%s> answered %v; want 550 saying the address was not issued for this bounce domain", tc.rcpt, err)
			}
		})
	}

	// Each tenant's own address at its own domain, in any letter case,
	// is accepted and suppresses on that tenant's list only.
	if err := sendBounce(p.BounceAddr, strings.ToUpper(localA)+"@Bounce.ACME.Example", reportA); err != nil {
		t.Fatalf("acme's VERP address at acme's bounce domain (other case) refused: %v", err)
	}
	if err := sendBounce(p.BounceAddr, localB+"@"+domainB, reportB); err != nil {
		t.Fatalf("globex's VERP address at globex's bounce domain refused: %v", err)
	}
	mA := p.waitMessage(t, idA, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown"))
	mB := p.waitMessage(t, idB, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown"))
	for _, m := range []*mailbusv1.Message{mA, mB} {
		n := 0
		for _, ev := range m.GetHistory() {
			if ev.GetStage() == "bounce" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("message %s: want exactly one bounce event (its own), history: %v", m.GetId(), m.GetHistory())
		}
	}
	for _, tc := range []struct {
		tenant, addr string
		want         bool
	}{
		{"acme", rcptA, true}, {"globex", rcptA, false},
		{"globex", rcptB, true}, {"acme", rcptB, false},
	} {
		got, err := p.Suppressions.Suppressed(ctx, tc.tenant, []string{tc.addr})
		if err != nil {
			t.Fatal(err)
		}
		if listed := len(got) == 1; listed != tc.want {
			t.Errorf("%s on %s's suppression list: %v, want %v", tc.addr, tc.tenant, listed, tc.want)
		}
	}
}
