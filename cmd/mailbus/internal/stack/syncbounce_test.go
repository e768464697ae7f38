package stack_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// A relay that refuses a recipient at RCPT with 550 5.1.1, as Gmail does
// for an account that does not exist, sends no DSN: the refusal itself
// must put the address on the tenant's suppression list, so that the next
// message to it is suppressed instead of sent. A 550 5.7.1 policy refusal
// is a soft bounce by the classifier and does not suppress after one.
func TestPipeline_synchronousHardRefusalSuppressesTheAddressAndAPolicyRefusalDoesNot(t *testing.T) {
	const (
		gone   = "gone@example.net"
		policy = "policy@example.net"
	)
	var goneRcpts atomic.Int32
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(
		func(c testkit.SMTPCommand) *testkit.SMTPReply {
			if c.Step == testkit.SMTPStepRcpt && strings.EqualFold(c.Arg, gone) {
				goneRcpts.Add(1)
				return &testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces."}
			}
			return nil
		},
		testkit.SMTPReplyToRcpt(policy, testkit.SMTPReply{Code: 550, Enhanced: "5.7.1", Text: "Message rejected due to local policy"}),
	)}, nil)
	ctx := context.Background()
	bounced := mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED

	first := submit(t, p, "sync-1", gone)
	m := p.waitMessage(t, first, recipientIs(bounced, "userunknown"))
	if rc := m.GetRecipients()[0]; rc.GetReply().GetEnhancedCode() != "5.1.1" {
		t.Errorf("bounced recipient lost the relay's reply: %v", rc)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := p.Suppressions.Suppressed(ctx, "acme", []string{gone})
		if err != nil {
			t.Fatal(err)
		}
		if got[gone] == "userunknown" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not on the suppression list 60s after the relay refused it with 550 5.1.1: %v", gone, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e, ok, err := p.Suppressions.Get(ctx, "acme", gone)
	if err != nil || !ok || e.Source != "bounce" || !strings.Contains(e.Detail, "550 5.1.1 The email account that you tried to reach does not exist") {
		t.Fatalf("suppression entry %+v, %v, %v", e, ok, err)
	}

	// The router drops the address from the next message: the relay is
	// not asked again.
	second := submit(t, p, "sync-2", gone)
	p.waitMessage(t, second, recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED, "suppressed"))
	if n := goneRcpts.Load(); n != 1 {
		t.Errorf("the relay was asked to take %s %d times, want once", gone, n)
	}

	// A policy refusal bounces the message but is a soft bounce: one does
	// not reach the default threshold of 3.
	third := submit(t, p, "sync-3", policy)
	// (The message log folds a soft bounce into the recipient's state as
	// deferred; the sender's bounced event is in its history.)
	var refusal *mailbusv1.DeliveryEvent
	p.waitMessage(t, third, func(m *mailbusv1.Message) bool {
		for _, ev := range m.GetHistory() {
			if ev.GetStage() == "sender" && ev.GetStatus() == bounced {
				refusal = ev
				return true
			}
		}
		return false
	})
	if refusal.GetPermanent() {
		t.Fatalf("the classifier took a 550 5.7.1 policy refusal for a hard bounce: %v", refusal)
	}
	// Once the consumer has handled every event, the address is still
	// not on the list.
	testkit.WaitDrained(t, p.Brokers, 60*time.Second, testkit.Stage{Group: bus.Group("bounce", "sync"), Topic: bus.TopicEvents})
	got, err := p.Suppressions.Suppressed(ctx, "acme", []string{policy})
	if err != nil || len(got) != 0 {
		t.Fatalf("one policy refusal suppressed %s: %v %v", policy, got, err)
	}
}
