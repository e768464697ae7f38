package stack_test

import (
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// A relay that answers "421 4.7.28 unusual rate" is paused, and the
// message log tells the user why their mail waits, in the relay's words,
// until when.
func TestPipeline_aThrottledRelaysRecipientsWaitWithTheReasonInTheMessageLog(t *testing.T) {
	throttle := testkit.SMTPReplies(testkit.SMTPReplyAt(testkit.SMTPStepDot,
		testkit.SMTPReply{Code: 421, Enhanced: "4.7.28", Text: "Our system has detected an unusual rate of unsolicited mail"}))
	p := startPipeline(t, []testkit.SMTPOption{throttle}, nil)
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicSubmit, &mailbusv1.Submission{
		IdempotencyId: "throttled-1", TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
		From: &mailbusv1.Address{Email: "news@acme.example"}, To: []*mailbusv1.Address{{Email: "a@example.net"}, {Email: "b@example.net"}},
		Subject: "news", TextBody: "hello",
	}, message.Metadata{}); err != nil {
		t.Fatal(err)
	}
	const waiting = "waiting: relay relay throttled us: 421 4.7.28 Our system has detected an unusual rate of unsolicited mail; paused until "
	m := p.waitMessage(t, ids.MessageID("acme", "throttled-1"), func(m *mailbusv1.Message) bool {
		for _, r := range m.GetRecipients() {
			if r.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED {
				return false
			}
		}
		return len(m.GetRecipients()) == 2
	})
	for _, r := range m.GetRecipients() {
		if r.GetReason() != "throttled" || !strings.HasPrefix(r.GetDetail(), waiting) {
			t.Errorf("%s: %s %q %q, want throttled %q...", r.GetAddress(), r.GetStatus(), r.GetReason(), r.GetDetail(), waiting)
		}
	}
	if n := p.smtp.Received(); n != 0 {
		t.Errorf("the throttling relay received %d messages", n)
	}
}
