package bounce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/redis/go-redis/v9"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// tenantDirectory maps bounce domains to tenants, as the config service's
// tenants would (a tenant may be listed under several domains, and a
// domain under several tenants).
type tenantDirectory map[string][]*mailbusv1.Tenant

func (d tenantDirectory) BounceTenants(_ context.Context, domain string) ([]*mailbusv1.Tenant, error) {
	return d[domain], nil
}

// twoTenants serves acme (bounce domains bounce.acme.example and
// bounce2.acme.example) and globex (bounce.globex.example), who share
// shared.example, each with a feedback-loop address.
func twoTenants(t *testing.T) (*recorder, *suppress.Store, string) {
	t.Helper()
	raddr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	t.Cleanup(func() { rdb.Close() })
	store := suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(t, raddr)))
	acme := &mailbusv1.Tenant{Id: "acme", BounceDomain: "bounce.acme.example"}
	globex := &mailbusv1.Tenant{Id: "globex", BounceDomain: "bounce.globex.example"}
	dir := tenantDirectory{
		"bounce.acme.example": {acme}, "bounce2.acme.example": {acme},
		"bounce.globex.example": {globex}, "shared.example": {acme, globex},
	}
	rec := &recorder{}
	s := New(Config{Addr: "127.0.0.1:0", VERPKeys: [][]byte{testKey},
		FeedbackAddresses: map[string]string{"fbl@acme.example": "acme", "fbl@globex.example": "globex"}},
		Deps{Directory: dir, Tenants: staticTenants{"acme": acme, "globex": globex}, Suppressions: store, Publisher: rec})
	return rec, store, serve(t, s)
}

// serve runs the service's SMTP listener until the test ends and returns
// its address.
func serve(t *testing.T, s *Service) string {
	t.Helper()
	addr, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("listener: %v", err)
		}
	})
	return addr.String()
}

func verpFor(t *testing.T, tenant, deliveryID, rcpt, domain string) string {
	t.Helper()
	a, err := mail.VERPEncode(testKey, tenant, deliveryID, rcpt, domain)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// send delivers msg to rcpt over SMTP from the null sender, as an MTA
// returns a bounce.
func send(addr, rcpt, msg string) error {
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
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func hardBounce(rcpt string) string {
	return strings.ReplaceAll(`From: MAILER-DAEMON@mx.example.net
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; `+rcpt+`
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--B--
`, "\n", "\r\n")
}

func complaint(rcpt, returnPath, messageID string) string {
	return strings.ReplaceAll(`From: feedback@provider.example
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an email abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: provider-fbl/1.0
Version: 1
Original-Rcpt-To: `+rcpt+`

--B
Content-Type: text/rfc822-headers

Return-Path: <`+returnPath+`>
From: someone@example.com
To: `+rcpt+`
Message-ID: <`+messageID+`@example.com>
Subject: offer

--B--
`, "\n", "\r\n")
}

// suppressedOn returns the tenants whose lists have addr.
func suppressedOn(t *testing.T, store *suppress.Store, addr string) []string {
	t.Helper()
	var out []string
	for _, tenant := range []string{"acme", "globex"} {
		got, err := store.Suppressed(context.Background(), tenant, []string{addr})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			out = append(out, tenant)
		}
	}
	return out
}

func TestListener_acceptsAVERPAddressOnlyAtABounceDomainOfItsTenant(t *testing.T) {
	rec, store, addr := twoTenants(t)
	const id = "m0000000000000000000000001.0"
	tests := []struct {
		name, tenant, domain string
		accept               bool
	}{
		{"own domain", "acme", "bounce.acme.example", true},
		{"the tenant's other bounce domain, in other case", "acme", "BOUNCE2.Acme.Example", true},
		{"a domain the tenant shares", "acme", "shared.example", true},
		{"another tenant's domain", "acme", "bounce.globex.example", false},
		{"another tenant's domain, in other case", "acme", "Bounce.GLOBEX.example", false},
		{"the other tenant at the first one's domain", "globex", "bounce2.acme.example", false},
		{"the other tenant at the shared domain", "globex", "shared.example", true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rcpt := fmt.Sprintf("r%d@example.net", i)
			// The address is made on the tenant's main bounce domain and
			// sent to tc.domain: the domain is not part of the MAC.
			verp := verpFor(t, tc.tenant, id, rcpt, "bounce."+tc.tenant+".example")
			to := strings.ToUpper(verp[:strings.LastIndexByte(verp, '@')]) + "@" + tc.domain
			before := len(rec.evs)
			err := send(addr, to, hardBounce(rcpt))
			if !tc.accept {
				var se *smtp.SMTPError
				if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "not issued for this bounce domain") {
					t.Fatalf("RCPT TO:<%s> answered %v; want 550 saying it was not issued for this bounce domain", to, err)
				}
				if got := suppressedOn(t, store, rcpt); len(got) != 0 {
					t.Fatalf("%s suppressed on %v by a refused bounce", rcpt, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("RCPT TO:<%s>: %v", to, err)
			}
			rec.mu.Lock()
			evs := rec.evs[before:]
			rec.mu.Unlock()
			if len(evs) != 1 || evs[0].GetTenantId() != tc.tenant || evs[0].GetDeliveryId() != id {
				t.Fatalf("events %v; want one bounce of %s's delivery %s", evs, tc.tenant, id)
			}
			if got := suppressedOn(t, store, rcpt); len(got) != 1 || got[0] != tc.tenant {
				t.Fatalf("%s suppressed on %v, want only on %s's list", rcpt, got, tc.tenant)
			}
		})
	}
}

func TestListener_complaintFollowsTheTenantOfTheReportedReturnPath(t *testing.T) {
	rec, store, addr := twoTenants(t)
	// A provider's feedback loop for a shared IP address sends globex a
	// complaint about acme's message: the return path says it is acme's.
	// The reported Message-ID is one mailbus made, so that the tenant's
	// own Message-ID fallback would match it too.
	msgID := ids.MessageID("acme", "offer-2")
	id := ids.DeliveryID(msgID, 0, 0)
	verp := verpFor(t, "acme", id, "dave@example.net", "bounce.acme.example")
	if err := send(addr, "FBL@Globex.example", complaint("dave@example.net", verp, msgID)); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	evs := append([]*mailbusv1.DeliveryEvent(nil), rec.evs...)
	rec.mu.Unlock()
	if len(evs) != 1 || evs[0].GetTenantId() != "acme" || evs[0].GetDeliveryId() != id ||
		evs[0].GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED {
		t.Fatalf("events %v; want one complaint about acme's delivery %s", evs, id)
	}
	if got := suppressedOn(t, store, "dave@example.net"); len(got) != 1 || got[0] != "acme" {
		t.Fatalf("dave@example.net suppressed on %v, want only on acme's list", got)
	}

	// Nor does the Message-ID make a complaint globex's when the return
	// path is acme's, for another recipient.
	if err := send(addr, "fbl@globex.example", complaint("frank@example.net", verp, msgID)); err != nil {
		t.Fatal(err)
	}
	if got := suppressedOn(t, store, "frank@example.net"); len(got) != 0 {
		t.Fatalf("frank@example.net suppressed on %v by a complaint about acme's mail to someone else", got)
	}

	// A return path that verifies for no tenant does not let the
	// Message-ID name the message instead.
	forged, err := mail.VERPEncode([]byte("a key that mailbus does not have"), "acme", id, "erin@example.net", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	if err := send(addr, "fbl@acme.example", complaint("erin@example.net", forged, msgID)); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	n := len(rec.evs)
	rec.mu.Unlock()
	if n != 1 {
		t.Fatalf("a complaint with a forged return path was applied: %v", rec.evs[1:])
	}
	if got := suppressedOn(t, store, "erin@example.net"); len(got) != 0 {
		t.Fatalf("erin@example.net suppressed on %v by a forged complaint", got)
	}
}
