package plan

import (
	"context"
	"strings"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/unsub"
)

func TestPlanner_massMailGetsSignedUnsubscribeLinksPerRecipientAndOneFeedbackID(t *testing.T) {
	c := newConfig()
	now := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	p := New(c, nil, nil, Options{VERPKey: verpKey, UnsubscribeURL: "https://links.example/unsubscribe/", Now: func() time.Time { return now }})
	sub := submission("bob@fast.example", "x@example.net", "y@example.net") // return path From: no VERP
	sub.Kind, sub.CampaignId = mailbusv1.EmailKind_EMAIL_KIND_MASS, "spring sale"
	res := plan(t, p, sub)
	if len(res.Deliveries) != 2 {
		t.Fatalf("%d deliveries, want one per recipient (each carries its own link)", len(res.Deliveries))
	}
	for _, d := range res.Deliveries {
		rcpt := d.GetEnvelope().GetRcptTo()[0]
		lu := headerValues(d.GetMessage(), "List-Unsubscribe")
		if len(lu) != 1 || !strings.HasPrefix(lu[0], "<https://links.example/unsubscribe/") {
			t.Fatalf("List-Unsubscribe of %s: %q", rcpt, lu)
		}
		tok := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(lu[0])[0], "<https://links.example/unsubscribe/"), ">,")
		if l, err := unsub.Parse([][]byte{verpKey}, tok); err != nil || l.Recipient != rcpt || l.Tenant != "acme" || l.MessageID != d.GetMessageId() {
			t.Errorf("link of %s names %+v (%v)", rcpt, l, err)
		}
		if !strings.Contains(lu[0], "<mailto:"+unsub.MailtoLocal(verpKey, "acme", rcpt)+"@bounce.acme.example?subject=unsubscribe%20"+tok+">") {
			t.Errorf("mailto link of %s missing: %q", rcpt, lu[0])
		}
		if got := headerValues(d.GetMessage(), "List-Unsubscribe-Post"); len(got) != 1 || got[0] != "List-Unsubscribe=One-Click" {
			t.Errorf("List-Unsubscribe-Post = %q", got)
		}
		if got := headerValues(d.GetMessage(), "Feedback-ID"); len(got) != 1 || got[0] != "spring-sale:mass:acme:mailbus" {
			t.Errorf("Feedback-ID = %q", got)
		}
	}

	// A reroute keeps the recipient's link and Feedback-ID, once each.
	again, err := p.Reroute(context.Background(), cloneWithExcluded(res.Deliveries[0], "acme-relay"))
	if err != nil {
		t.Fatal(err)
	}
	m := again.Deliveries[0].GetMessage()
	if len(headerValues(m, "List-Unsubscribe")) != 1 || len(headerValues(m, "Feedback-ID")) != 1 {
		t.Errorf("after a reroute: List-Unsubscribe %q, Feedback-ID %q; want one each", headerValues(m, "List-Unsubscribe"), headerValues(m, "Feedback-ID"))
	}

	// A producer's own List-Unsubscribe is kept, and transactional mail
	// gets none.
	own := submission("bob@fast.example", "z@example.net")
	own.IdempotencyId, own.Kind = "own", mailbusv1.EmailKind_EMAIL_KIND_MASS
	own.Headers = []*mailbusv1.Header{{Name: "List-Unsubscribe", Value: "<https://crm.example/u/1>"}}
	if lu := headerValues(plan(t, p, own).Deliveries[0].GetMessage(), "List-Unsubscribe"); len(lu) != 1 || lu[0] != "<https://crm.example/u/1>" {
		t.Errorf("producer's own List-Unsubscribe became %q", lu)
	}
	tx := submission("bob@fast.example", "z@example.net")
	tx.IdempotencyId, tx.Kind = "tx", mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL
	if lu := headerValues(plan(t, p, tx).Deliveries[0].GetMessage(), "List-Unsubscribe"); len(lu) != 0 {
		t.Errorf("transactional mail got List-Unsubscribe %q", lu)
	}
}
