package bounce

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/bounce/internal/imappoll"
)

const bounceCorpus = "../../../shared/testdata/bounces"

// mailboxPoller polls d's INBOX and Junk with the service's handler for
// tenantID.
func mailboxPoller(t *testing.T, s *Service, d *testkit.Dovecot, tenantID string) *imappoll.Poller {
	t.Helper()
	host, port, _ := net.SplitHostPort(d.Addr)
	p, _ := strconv.Atoi(port)
	poller, err := imappoll.New(imappoll.Config{Host: host, Port: p, TLS: imappoll.TLSNone, Username: d.User, Password: d.Password},
		s.MailboxHandler(tenantID), nil)
	if err != nil {
		t.Fatal(err)
	}
	return poller
}

func TestService_bounceFetchedFromTheTenantsMailboxIsMatchedByMessageIDAndSuppressesOnce(t *testing.T) {
	ctx := context.Background()
	s, rec, store := newTestService(t)
	raw, err := os.ReadFile(filepath.Join(bounceCorpus, "samples", "lhost-postfix-04.eml"))
	if err != nil {
		t.Fatalf("bounce corpus (clone the repository with shared/ beside it): %v", err)
	}
	notBounce, err := os.ReadFile(filepath.Join(bounceCorpus, "not-bounce", "is-not-bounce-01.eml"))
	if err != nil {
		t.Fatal(err)
	}
	// A real Postfix DSN (user unknown), about a message that mailbus sent
	// with its own Message-ID: the tenant's return path is its mailbox, so
	// there is no VERP address to go by.
	const orig = "<A8F82EDD-E518-4F5C-8C70-BC4EFF24AB9F@example.ne.jp>"
	if !strings.Contains(string(raw), orig) {
		t.Fatalf("lhost-postfix-04.eml no longer holds the original Message-Id %s", orig)
	}
	mid := ids.MessageID("acme", "welcome-7")
	dsn := []byte(strings.Replace(string(raw), orig, "<"+mid+"@acme.example>", 1))

	d := testkit.StartDovecot(t, "bounces@acme.example", "imap-s3cret")
	d.Deliver(t, "Junk", dsn)
	d.Deliver(t, "INBOX", notBounce)
	poller := mailboxPoller(t, s, d, "acme")

	if n, err := poller.PollOnce(ctx); err != nil || n != 2 {
		t.Fatalf("first poll = %d, %v; want both messages processed", n, err)
	}
	if len(rec.evs) != 1 {
		t.Fatalf("events %v, want one bounce", rec.evs)
	}
	ev := rec.evs[0]
	if ev.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED || !ev.GetPermanent() || ev.GetReason() != "userunknown" ||
		ev.GetMessageId() != mid || ev.GetTenantId() != "acme" ||
		len(ev.GetRecipients()) != 1 || ev.GetRecipients()[0] != "kijitora@example.co.jp" {
		t.Fatalf("bounce event %v", ev)
	}
	if e, ok, err := store.Get(ctx, "acme", "kijitora@example.co.jp"); err != nil || !ok || e.Reason != "userunknown" {
		t.Fatalf("hard bounce did not suppress: %+v %v %v", e, ok, err)
	}

	if n, err := poller.PollOnce(ctx); err != nil || n != 0 || len(rec.evs) != 1 {
		t.Fatalf("second poll = %d, %v with %d events; want nothing new", n, err, len(rec.evs))
	}

	// Handled twice (a crash between handling and marking): the same
	// event id, which the tracker stores once, and still one entry.
	if err := s.MailboxHandler("acme")(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	if len(rec.evs) != 2 || rec.evs[1].GetEventId() != ev.GetEventId() {
		t.Fatalf("reprocessing gave events %v, want the same event id again", rec.evs)
	}
	if got, err := store.Suppressed(ctx, "acme", []string{"kijitora@example.co.jp"}); err != nil || len(got) != 1 {
		t.Fatalf("suppressed after reprocessing: %v, %v", got, err)
	}
}

func TestService_mailboxOfAnUnknownTenantKeepsItsMail(t *testing.T) {
	s, rec, _ := newTestService(t)
	if err := s.MailboxHandler("globex")(context.Background(), []byte("Subject: x\r\n\r\nx\r\n")); err == nil {
		t.Fatal("handler for an unknown tenant succeeded; the poller would mark the mail handled")
	}
	if len(rec.evs) != 0 {
		t.Fatalf("events %v", rec.evs)
	}
}
