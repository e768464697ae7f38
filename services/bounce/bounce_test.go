package bounce

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// recorder keeps what the service publishes (the bus is not under test
// here; the end-to-end tests in cmd/mailbus/internal/stack use Kafka).
type recorder struct {
	mu  sync.Mutex
	evs []*mailbusv1.DeliveryEvent
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		ev := &mailbusv1.DeliveryEvent{}
		if err := bus.Decode(m, ev); err != nil {
			return err
		}
		r.evs = append(r.evs, ev)
	}
	return nil
}
func (r *recorder) Close() error { return nil }

type staticTenants map[string]*mailbusv1.Tenant

func (s staticTenants) Tenant(id string) (*mailbusv1.Tenant, bool) { t, ok := s[id]; return t, ok }
func (s staticTenants) BounceTenants(_ context.Context, d string) ([]*mailbusv1.Tenant, error) {
	var out []*mailbusv1.Tenant
	for _, t := range s {
		if normalizeDomain(t.GetBounceDomain()) == d {
			out = append(out, t)
		}
	}
	return out, nil
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

func newTestService(t *testing.T) (*Service, *recorder, *suppress.Store) {
	t.Helper()
	addr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	store := suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(t, addr)))
	tenants := staticTenants{"acme": {Id: "acme", BounceDomain: "bounce.acme.example", SoftBounceThreshold: 2}}
	rec := &recorder{}
	s := New(Config{VERPKeys: [][]byte{testKey}, FeedbackAddresses: map[string]string{"fbl@acme.example": "acme"}},
		Deps{Directory: tenants, Tenants: tenants, Suppressions: store, Publisher: rec})
	return s, rec, store
}

func TestService_complaintToAFeedbackAddressIsMatchedByTheReportedReturnPath(t *testing.T) {
	ctx := context.Background()
	s, rec, store := newTestService(t)
	verp, err := mail.VERPEncode(testKey, "acme", "m0000000000000000000000001.0", "dave@example.net", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	arf := strings.ReplaceAll(`From: feedback@provider.example
To: fbl@acme.example
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
Original-Rcpt-To: dave@example.net

--B
Content-Type: text/rfc822-headers

Return-Path: <`+verp+`>
From: alice@acme.example
To: dave@example.net
Message-ID: <m0000000000000000000000001@acme.example>
Subject: offer

--B--
`, "\n", "\r\n")
	res, err := s.Process(ctx, []target{{tenant: &mailbusv1.Tenant{Id: "acme"}}}, []byte(arf))
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.evs) != 1 || res.Unmatched != 0 {
		t.Fatalf("events %v, result %+v", rec.evs, res)
	}
	ev := rec.evs[0]
	if ev.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED || ev.GetMessageId() != "m0000000000000000000000001" ||
		ev.GetDeliveryId() != "m0000000000000000000000001.0" || ev.GetRecipients()[0] != "dave@example.net" || ev.GetTenantId() != "acme" {
		t.Fatalf("complaint event %v", ev)
	}
	e, ok, err := store.Get(ctx, "acme", "dave@example.net")
	if err != nil || !ok || e.Source != suppress.SourceComplaint {
		t.Fatalf("complaint did not suppress: %+v %v %v", e, ok, err)
	}
}

func TestService_softBouncesSuppressAtTheTenantsThreshold(t *testing.T) {
	ctx := context.Background()
	s, rec, store := newTestService(t)
	for i, id := range []string{"m0000000000000000000000001.0", "m0000000000000000000000002.0"} {
		verp, _ := mail.VERPEncode(testKey, "acme", id, "erin@example.net", "bounce.acme.example")
		_, hash, err := mail.VERPDecode(testKey, "acme", verp)
		if err != nil {
			t.Fatal(err)
		}
		tg := []target{{tenant: &mailbusv1.Tenant{Id: "acme", SoftBounceThreshold: 2}, deliveryID: id, rcptHash: hash}}
		report := "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\n" +
			"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n" +
			"Final-Recipient: rfc822; erin@example.net\r\nAction: failed\r\nStatus: 4.2.2\r\n" +
			"Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n\r\n--B--\r\n"
		if _, err := s.Process(ctx, tg, []byte(report)); err != nil {
			t.Fatal(err)
		}
		_, listed, _ := store.Get(ctx, "acme", "erin@example.net")
		if want := i == 1; listed != want {
			t.Fatalf("after %d soft bounces listed=%v, want %v", i+1, listed, want)
		}
	}
	for _, ev := range rec.evs {
		if ev.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED || ev.GetPermanent() || ev.GetReason() != "mailboxfull" {
			t.Fatalf("soft bounce event %v", ev)
		}
	}
}

func TestService_recordForAnotherAddressThanTheVERPTokenIsNotApplied(t *testing.T) {
	s, rec, store := newTestService(t)
	id := "m0000000000000000000000003.0"
	verp, _ := mail.VERPEncode(testKey, "acme", id, "frank@example.net", "bounce.acme.example")
	_, hash, _ := mail.VERPDecode(testKey, "acme", verp)
	report := "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\n" +
		"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n" +
		"Final-Recipient: rfc822; forwarded-to@elsewhere.example\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--B--\r\n"
	res, err := s.Process(context.Background(), []target{{tenant: &mailbusv1.Tenant{Id: "acme"}, deliveryID: id, rcptHash: hash}}, []byte(report))
	if err != nil {
		t.Fatal(err)
	}
	if res.Unmatched != 1 || len(rec.evs) != 0 {
		t.Fatalf("result %+v events %v", res, rec.evs)
	}
	if got, _ := store.Suppressed(context.Background(), "acme", []string{"forwarded-to@elsewhere.example"}); len(got) != 0 {
		t.Fatalf("suppressed an address the token does not vouch for: %v", got)
	}
}

func TestSuppressionServer_authorizesByTenantAndRole(t *testing.T) {
	addr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	srv := NewSuppressionServer(suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(t, addr))), nil)
	tests := []struct {
		name      string
		id        *auth.Identity
		tenant    string
		wantRead  codes.Code
		wantWrite codes.Code
	}{
		{"admin", &auth.Identity{Role: auth.RoleAdmin}, "acme", codes.OK, codes.OK},
		{"tenant admin of the tenant", &auth.Identity{Role: auth.RoleTenantAdmin, TenantID: "acme"}, "acme", codes.OK, codes.OK},
		{"tenant admin of another tenant", &auth.Identity{Role: auth.RoleTenantAdmin, TenantID: "globex"}, "acme", codes.PermissionDenied, codes.PermissionDenied},
		{"user reads but does not write", &auth.Identity{Role: auth.RoleUser, TenantID: "acme", UserID: "u1"}, "acme", codes.OK, codes.PermissionDenied},
		{"pipeline reads but does not write", &auth.Identity{Role: auth.RolePipeline}, "acme", codes.OK, codes.PermissionDenied},
		{"nobody", nil, "acme", codes.Unauthenticated, codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.id != nil {
				ctx = auth.NewContext(ctx, *tc.id)
			}
			_, err := srv.ListSuppressions(ctx, &mailbusv1.ListSuppressionsRequest{TenantId: tc.tenant})
			if status.Code(err) != tc.wantRead {
				t.Errorf("List: %v, want %v", err, tc.wantRead)
			}
			_, err = srv.AddSuppression(ctx, &mailbusv1.AddSuppressionRequest{Suppression: &mailbusv1.Suppression{TenantId: tc.tenant, Address: "Grace@Example.net"}})
			if status.Code(err) != tc.wantWrite {
				t.Errorf("Add: %v, want %v", err, tc.wantWrite)
			}
			_, err = srv.RemoveSuppression(ctx, &mailbusv1.RemoveSuppressionRequest{TenantId: tc.tenant, Address: "grace@example.net"})
			if status.Code(err) != tc.wantWrite {
				t.Errorf("Remove: %v, want %v", err, tc.wantWrite)
			}
		})
	}
	admin := auth.NewContext(context.Background(), auth.Identity{Role: auth.RoleAdmin})
	if _, err := srv.AddSuppression(admin, &mailbusv1.AddSuppressionRequest{Suppression: &mailbusv1.Suppression{TenantId: "acme", Address: "not an address"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad address: %v", err)
	}
	if _, err := srv.AddSuppression(admin, &mailbusv1.AddSuppressionRequest{Suppression: &mailbusv1.Suppression{TenantId: "acme", Address: "Heidi@Example.net"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.ListSuppressions(admin, &mailbusv1.ListSuppressionsRequest{TenantId: "acme"})
	if err != nil || len(resp.GetSuppressions()) != 1 || resp.GetSuppressions()[0].GetAddress() != "heidi@example.net" ||
		resp.GetSuppressions()[0].GetReason() != "manual" || resp.GetSuppressions()[0].GetSource() != suppress.SourceAPI {
		t.Fatalf("list after add: %v %v", resp, err)
	}
}

func TestConnLimiter_boundsConnectionsInAllPerAddressAndPerMinute(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := newConnLimiter(4, 2, 3, func() time.Time { return now })
	admit := func(addr, wantReason string) func() {
		t.Helper()
		release, reason, _ := l.admit(addr)
		if reason != wantReason {
			t.Fatalf("admit(%s): refused for %q, want %q", addr, reason, wantReason)
		}
		return release
	}
	r1 := admit("192.0.2.1", "")
	admit("192.0.2.1", "")
	admit("192.0.2.1", refusedPerAddress)
	// Another address is not limited by the first one's share...
	admit("192.0.2.2", "")
	admit("192.0.2.3", "")
	// ...but by the total.
	admit("192.0.2.4", refusedTotal)
	r1()
	r4 := admit("192.0.2.1", "")
	if got := l.open(); got != 4 {
		t.Fatalf("open = %d, want 4", got)
	}
	r4()
	// Two connections are open and three have started this minute: the
	// fourth waits for the next minute although a slot is free.
	admit("192.0.2.1", refusedRate)
	now = now.Add(time.Minute)
	admit("192.0.2.1", "")
}

func TestAddrKey_countsAnIPv6HostByItsSlash64(t *testing.T) {
	a := addrKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1"), Port: 25})
	b := addrKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9"), Port: 26})
	c := addrKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 25})
	if a != b || a == c {
		t.Fatalf("keys %q %q %q: want one per /64", a, b, c)
	}
	if got := addrKey(&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1")}); got != "192.0.2.1" {
		t.Fatalf("IPv4-mapped address keyed as %q", got)
	}
}
