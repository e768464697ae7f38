package stack_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/complaints"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/quota"
)

// arfReport is a feedback-loop report (RFC 5965) about original, as a
// provider sends one when its user marks the message as spam.
func arfReport(rcpt string, original []byte) string {
	head, _, _ := strings.Cut(strings.ReplaceAll(string(original), "\r\n", "\n"), "\n\n")
	return strings.ReplaceAll(`From: feedback@provider.example
To: fbl@acme.example
Subject: complaint about a message from acme.example
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

`+head+`

--B--
`, "\n", "\r\n")
}

// A tenant over the complaint rate: its mass mail waits for the next day
// with the reason in the message log, its administrators get one notice
// through the default server, and its transactional mail still leaves.
func TestPipeline_complaintsOverTheRatePauseMassMailWarnTheAdministratorsAndLetTransactionalMailThrough(t *testing.T) {
	p := startPipeline(t, nil, func(o *stack.Options) {
		b, err := os.ReadFile(o.SeedFile)
		if err != nil {
			t.Fatal(err)
		}
		seed := strings.Replace(string(b), "    time_zone: Europe/Berlin\n", "    time_zone: Europe/Berlin\n    admin_emails: [ops@acme.example]\n", 1)
		if err := os.WriteFile(o.SeedFile, []byte(seed), 0o600); err != nil {
			t.Fatal(err)
		}
		// One complaint on one message is over any rate once the
		// minimum volume is one message.
		o.TuneQuota = func(c *quota.Config) { c.Complaints = complaints.Policy{MinVolume: 1} }
	})
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	send := func(id string, kind mailbusv1.EmailKind, to string) string {
		t.Helper()
		if err := bus.Publish(pub, bus.TopicSubmit, &mailbusv1.Submission{
			IdempotencyId: id, TenantId: "acme", Kind: kind,
			From: &mailbusv1.Address{Email: "news@acme.example"}, To: []*mailbusv1.Address{{Email: to}},
			Subject: id, TextBody: "hello",
		}, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
		return ids.MessageID("acme", id)
	}
	paused := func(m *mailbusv1.Message) bool {
		return slices.ContainsFunc(m.GetHistory(), func(e *mailbusv1.DeliveryEvent) bool {
			return e.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED && e.GetReason() == complaints.Reason
		})
	}

	first := send("news-1", mailbusv1.EmailKind_EMAIL_KIND_MASS, "ann@example.net")
	p.waitMessage(t, first, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	got := p.smtp.WaitMessage(t, func(m testkit.SMTPMessage) bool { return strings.Contains(string(m.Data), "Subject: news-1") })
	// Ann marks it as spam; her provider reports it to the return path.
	if err := sendBounce(p.BounceAddr, got.From, arfReport("ann@example.net", got.Data)); err != nil {
		t.Fatalf("send the complaint to the bounce listener: %v", err)
	}
	p.waitMessage(t, first, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED))

	second := send("news-2", mailbusv1.EmailKind_EMAIL_KIND_MASS, "bob@example.net")
	var day string
	for _, e := range p.waitMessage(t, second, paused).GetHistory() {
		if e.GetReason() == complaints.Reason {
			day = limits.DayKey(e.GetOccurTime().AsTime(), limits.Zone("Europe/Berlin"))
			if !strings.Contains(e.GetDetail(), "transactional mail still flows") {
				t.Errorf("the pause's detail does not say what still flows: %q", e.GetDetail())
			}
		}
	}
	reset := send("reset-1", mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL, "bob@example.net")
	p.waitMessage(t, reset, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))

	isNotice := func(m testkit.SMTPMessage) bool {
		return slices.Contains(m.To, "ops@acme.example") && strings.Contains(string(m.Data), "is paused: complaint rate")
	}
	notice := p.smtp.WaitMessage(t, isNotice)
	if !strings.Contains(string(notice.Data), "Transactional mail still flows") {
		t.Errorf("the notice does not say transactional mail still flows:\n%s", notice.Data)
	}
	// Another paused message warns nobody again.
	third := send("news-3", mailbusv1.EmailKind_EMAIL_KIND_MASS, "carol@example.net")
	p.waitMessage(t, third, paused)
	noticeID := ids.MessageID("acme", complaints.NoticeIdempotencyID("acme", day))
	p.waitMessage(t, noticeID, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	n := 0
	for _, m := range p.smtp.Messages() {
		if isNotice(m) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the administrators got %d notices, want 1", n)
	}
}
