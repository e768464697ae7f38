package plan

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/mail"
)

func TestPlanner_retrySendsOnlyTheNamedRecipientsUnderTheMessageWithNewIds(t *testing.T) {
	p := newPlanner(newConfig())
	sub := submission("alice@acme.example", "a@example.net", "B@example.org", "c@example.com")
	first := plan(t, p, sub)
	rs := &mailbusv1.Resubmission{
		RetryId: "tracker-retry_requested-1", MessageId: first.MessageID, Retry: 1,
		Recipients: []string{"b@example.org", "nobody@example.net"}, Submission: sub, RequestedBy: "admin name=ops",
	}
	res, err := p.Retry(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != first.MessageID || len(res.Deliveries) != 1 {
		t.Fatalf("retry planned %d deliveries of %s; want 1 of %s", len(res.Deliveries), res.MessageID, first.MessageID)
	}
	d := res.Deliveries[0]
	if d.GetDeliveryId() != ids.RetryDeliveryID(first.MessageID, 0, 1) || !slices.Equal(d.GetEnvelope().GetRcptTo(), []string{"B@example.org"}) {
		t.Errorf("retry delivery %s to %v", d.GetDeliveryId(), d.GetEnvelope().GetRcptTo())
	}
	// The VERP return path names the retry's delivery, so its bounce lands
	// on it; the message is the same, Message-ID and all.
	if id, _, err := mail.VERPDecode(verpKey, "acme", d.GetEnvelope().GetMailFrom()); err != nil || id != d.GetDeliveryId() {
		t.Errorf("VERP %q names %q, %v", d.GetEnvelope().GetMailFrom(), id, err)
	}
	if d.GetHeaderMessageId() != first.Deliveries[0].GetHeaderMessageId() {
		t.Errorf("Message-ID changed: %s, was %s", d.GetHeaderMessageId(), first.Deliveries[0].GetHeaderMessageId())
	}
	if len(res.Events) != 1 {
		t.Fatalf("events %v", res.Events)
	}
	e := res.Events[0]
	if e.GetReason() != ReasonRetried || e.GetSummary() != nil || !strings.Contains(e.GetDetail(), "retry 1 requested by admin name=ops") ||
		e.GetAttributes()["retry_id"] != rs.GetRetryId() || slices.ContainsFunc(first.Events, func(f *mailbusv1.DeliveryEvent) bool { return f.GetEventId() == e.GetEventId() }) {
		t.Errorf("retry event %v", e)
	}
	again, err := p.Retry(context.Background(), rs)
	if err != nil || again.Deliveries[0].GetDeliveryId() != d.GetDeliveryId() || again.Events[0].GetEventId() != e.GetEventId() {
		t.Errorf("the same retry planned again differs: %v, %v", again, err)
	}
	rs2 := &mailbusv1.Resubmission{RetryId: "r2", MessageId: first.MessageID, Retry: 2, Recipients: rs.Recipients, Submission: sub}
	if second, err := p.Retry(context.Background(), rs2); err != nil || second.Deliveries[0].GetDeliveryId() == d.GetDeliveryId() ||
		second.Events[0].GetEventId() == e.GetEventId() {
		t.Errorf("a second retry reuses the first's ids: %v, %v", second, err)
	}

	// A resubmission without its submission can never be planned.
	if _, err := p.Retry(context.Background(), &mailbusv1.Resubmission{MessageId: "m", Retry: 1}); !bus.IsPermanent(err) {
		t.Errorf("empty resubmission: %v, want a permanent error", err)
	}
}
