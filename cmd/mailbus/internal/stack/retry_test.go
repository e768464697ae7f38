package stack_test

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/cli"
	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/tracker"
)

const (
	statusQueued    = mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED
	statusSent      = mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT
	statusDeferred  = mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED
	statusBounced   = mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
	statusCancelled = mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED
)

// publishSubmission publishes sub to mail.submit as a producer would and
// returns its message id.
func publishSubmission(t *testing.T, p *pipeline, sub *mailbusv1.Submission) string {
	t.Helper()
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
		t.Fatal(err)
	}
	return ids.MessageID(sub.GetTenantId(), sub.GetIdempotencyId())
}

func newsletter(idem, campaign string, to ...string) *mailbusv1.Submission {
	sub := &mailbusv1.Submission{
		IdempotencyId: idem, TenantId: "acme", UserId: "u-alice", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
		From: &mailbusv1.Address{Email: "news@acme.example"}, Subject: "Spring news " + idem,
		TextBody: "Hello,\nthe spring collection is here.", CampaignId: campaign,
	}
	for _, a := range to {
		sub.To = append(sub.To, &mailbusv1.Address{Email: a})
	}
	return sub
}

func recipient(m *mailbusv1.Message, addr string) *mailbusv1.RecipientState {
	for _, r := range m.GetRecipients() {
		if r.GetAddress() == addr {
			return r
		}
	}
	return nil
}

func recipientStatus(addr string, s mailbusv1.DeliveryStatus) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool { return recipient(m, addr).GetStatus() == s }
}

func both(a, b func(*mailbusv1.Message) bool) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool { return a(m) && b(m) }
}

// historyHas reports whether an event of stage with reason is in the
// message's history.
func historyHas(stage, reason string) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool {
		return slices.ContainsFunc(m.GetHistory(), func(e *mailbusv1.DeliveryEvent) bool {
			return e.GetStage() == stage && e.GetReason() == reason
		})
	}
}

// deliveredTo counts the messages the SMTP server accepted for addr.
func deliveredTo(srv *testkit.SMTPServer, addr string) int {
	n := 0
	for _, m := range srv.Messages() {
		if slices.Contains(m.To, addr) {
			n++
		}
	}
	return n
}

// rejectRcpt answers 550 5.1.1 to RCPT TO any of addrs while on is set.
func rejectRcpt(on *atomic.Bool, addrs ...string) testkit.SMTPReplyFunc {
	return func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if on.Load() && c.Step == testkit.SMTPStepRcpt && slices.ContainsFunc(addrs, func(a string) bool { return strings.EqualFold(c.Arg, a) }) {
			return &testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "mailbox unavailable"}
		}
		return nil
	}
}

// liftSuppression does what an operator does before retrying a hard
// bounce: a 550 5.1.1 puts the address on the tenant's suppression list
// (the bounce service does it from the sender's event, so it is waited
// for), and a retry to a suppressed address is suppressed again, as in
// SES or Postmark until the address is reactivated.
func liftSuppression(t *testing.T, p *pipeline, tenant, addr string) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(60 * time.Second); ; {
		got, err := p.Suppressions.Suppressed(ctx, tenant, []string{addr})
		if err != nil {
			t.Fatal(err)
		}
		if got[addr] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not on %s's suppression list 60s after its hard bounce", addr, tenant)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := p.Suppressions.Remove(ctx, tenant, addr); err != nil {
		t.Fatalf("lift the suppression of %s: %v", addr, err)
	}
}

func TestRetry_bouncedRecipientIsRetriedThroughTheRouterAndDelivered(t *testing.T) {
	var reject atomic.Bool
	reject.Store(true)
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(rejectRcpt(&reject, "bob@example.net"))}, nil)
	ctx := context.Background()

	id := publishSubmission(t, p, newsletter("spring-1", "spring", "bob@example.net", "carol@example.net"))
	p.waitMessage(t, id, both(recipientStatus("bob@example.net", statusBounced), recipientStatus("carol@example.net", statusSent)))

	// The mailbox works again; the operator reactivates the address and
	// retries.
	reject.Store(false)
	liftSuppression(t, p, "acme", "bob@example.net")
	res, err := p.messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id})
	if err != nil {
		t.Fatalf("RetryMessage: %v", err)
	}
	if got := recipient(res.GetMessage(), "bob@example.net").GetStatus(); got != statusQueued {
		t.Errorf("right after the retry bob is %v, want queued", got)
	}
	m := p.waitMessage(t, id, both(recipientStatus("bob@example.net", statusSent), historyHas("router", "retried")))
	if m.GetStatus() != statusSent {
		t.Errorf("message status %v after the retry, want sent", m.GetStatus())
	}
	p.smtp.WaitMessage(t, func(sm testkit.SMTPMessage) bool { return slices.Contains(sm.To, "bob@example.net") })

	// The history says who asked and shows the new attempt, routed again.
	var asked, routed *mailbusv1.DeliveryEvent
	for _, e := range m.GetHistory() {
		switch {
		case e.GetStage() == "tracker" && e.GetReason() == "retry_requested":
			asked = e
		case e.GetStage() == "router" && e.GetReason() == "retried":
			routed = e
		}
	}
	if asked == nil || !strings.Contains(asked.GetDetail(), "requested by admin") || asked.GetAttributes()["retry"] != "1" {
		t.Errorf("retry request in the history: %v", asked)
	}
	if routed == nil || routed.GetAttributes()["retry"] != "1" || !slices.Equal(routed.GetRecipients(), []string{"bob@example.net"}) {
		t.Errorf("the retry's routing in the history: %v", routed)
	}
	if d := recipient(m, "bob@example.net").GetDeliveryId(); !strings.HasPrefix(d, id+".t1.") {
		t.Errorf("bob's delivery %q is not the retry's", d)
	}

	// Nothing is left to retry, and carol was not sent twice.
	if _, err := p.messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if n := deliveredTo(p.smtp, "carol@example.net"); n != 1 {
		t.Errorf("carol got %d copies, want 1", n)
	}
	if n := deliveredTo(p.smtp, "bob@example.net"); n != 1 {
		t.Errorf("bob got %d copies, want 1", n)
	}
}

// A producer need not set an idempotency id: the message id then comes
// from the record's place in Kafka, which the router and the tracker
// (keeping the submission for retries) must read alike, although the
// tracker handles mail.submit with the concurrent subscriber.
func TestRetry_messagesSubmittedWithoutAnIdempotencyIDAreRetriedEachAsItself(t *testing.T) {
	var reject atomic.Bool
	reject.Store(true)
	addrs := []string{"dan1@example.net", "dan2@example.net", "dan3@example.net"}
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(rejectRcpt(&reject, addrs...))}, nil)
	ctx := context.Background()
	for _, a := range addrs {
		publishSubmission(t, p, newsletter("", "no-idempotency-id", a))
	}

	byAddr := map[string]string{}
	for deadline := time.Now().Add(stack.WaitTimeout); len(byAddr) < len(addrs); {
		res, err := p.messages.ListMessages(ctx, &mailbusv1.ListMessagesRequest{TenantId: "acme", Status: statusBounced})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.GetMessages() {
			for _, r := range m.GetRecipients() {
				byAddr[r.GetAddress()] = m.GetId()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("bounced messages after %s: %v, want one for each of %v", stack.WaitTimeout, byAddr, addrs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	reject.Store(false)
	for _, a := range addrs {
		liftSuppression(t, p, "acme", a)
		if _, err := p.messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: byAddr[a]}); err != nil {
			t.Fatalf("RetryMessage of the message to %s: %v", a, err)
		}
	}
	for _, a := range addrs {
		m := p.waitMessage(t, byAddr[a], recipientStatus(a, statusSent))
		if len(m.GetRecipients()) != 1 {
			t.Errorf("message %s to %s has recipients %v after its retry", byAddr[a], a, m.GetRecipients())
		}
	}
	for _, a := range addrs {
		if n := deliveredTo(p.smtp, a); n != 1 {
			t.Errorf("%s got %d copies, want 1", a, n)
		}
	}
}

func TestRetry_bulkRetriesTheBouncedMessagesOfACampaignOnly(t *testing.T) {
	var reject atomic.Bool
	reject.Store(true)
	// One address per message: the first hard bounce of an address
	// suppresses it, and a later message to it would be suppressed, not
	// bounced.
	bobs := []string{"bob1@example.net", "bob2@example.net", "bob3@example.net"}
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(rejectRcpt(&reject, bobs...))}, nil)
	ctx := context.Background()

	spring1 := publishSubmission(t, p, newsletter("bulk-1", "spring", bobs[0]))
	spring2 := publishSubmission(t, p, newsletter("bulk-2", "spring", bobs[1]))
	autumn := publishSubmission(t, p, newsletter("bulk-3", "autumn", bobs[2]))
	for _, id := range []string{spring1, spring2, autumn} {
		p.waitMessage(t, id, hasStatus(statusBounced))
	}
	reject.Store(false)
	for _, b := range bobs {
		liftSuppression(t, p, "acme", b)
	}

	var total mailbusv1.BulkResult
	token := ""
	for {
		res, err := p.messages.RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{
			Filter:   &mailbusv1.MessageFilter{TenantId: "acme", CampaignId: "spring", Status: statusBounced, RelayId: "acme-relay"},
			PageSize: 1, PageToken: token,
		})
		if err != nil {
			t.Fatalf("RetryMessages: %v", err)
		}
		r := res.GetResult()
		total.Matched += r.GetMatched()
		total.Changed += r.GetChanged()
		total.Recipients += r.GetRecipients()
		if len(r.GetRefused()) > 0 {
			t.Errorf("refused: %v", r.GetRefused())
		}
		if token = r.GetNextPageToken(); token == "" {
			break
		}
	}
	if total.Matched != 2 || total.Changed != 2 || total.Recipients != 2 {
		t.Errorf("bulk retry matched %d, changed %d, recipients %d; want 2, 2, 2", total.Matched, total.Changed, total.Recipients)
	}
	for _, id := range []string{spring1, spring2} {
		p.waitMessage(t, id, hasStatus(statusSent))
	}
	m, err := p.messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: autumn})
	if err != nil || m.GetMessage().GetStatus() != statusBounced {
		t.Errorf("the autumn campaign's message was touched: %v, %v", m.GetMessage().GetStatus(), err)
	}

	// The operator's command does the same.
	var out bytes.Buffer
	root := cli.Root()
	root.SetOut(&out)
	root.SetArgs([]string{"messages", "retry", "--api", p.GRPCAddr, "--token", p.AdminToken, "--campaign", "autumn", "--status", "bounced"})
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("mailbus messages retry: %v", err)
	}
	if got := out.String(); !strings.Contains(got, "1 messages matched: 1 retried (1 recipients), 0 with nothing to retry, 0 refused") {
		t.Errorf("mailbus messages retry printed %q", got)
	}
	p.waitMessage(t, autumn, hasStatus(statusSent))
}

func TestRetry_afterTheRetentionIsRefusedWithTheReason(t *testing.T) {
	const retention = 3 * time.Second
	p := startPipeline(t,
		[]testkit.SMTPOption{testkit.SMTPReplies(testkit.SMTPReplyToRcpt("bob@example.net", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}))},
		func(o *stack.Options) {
			o.TuneTracker = func(c *tracker.Config) { c.Retention, c.PurgeInterval = retention, 500*time.Millisecond }
		})
	ctx := context.Background()
	id := publishSubmission(t, p, newsletter("old-1", "", "bob@example.net"))
	before := p.waitMessage(t, id, hasStatus(statusBounced))

	// Past the retention, counted from the message's first event, which
	// is after the submission was read.
	time.Sleep(time.Until(before.GetCreateTime().AsTime().Add(retention + time.Second)))
	_, err := p.messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "kept for 3s") {
		t.Fatalf("RetryMessage past the retention = %v, want FailedPrecondition saying the content was kept for 3s", err)
	}
	t.Logf("refused: %s", status.Convert(err).Message())
	after, err := p.messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: id})
	if err != nil || len(after.GetMessage().GetHistory()) != len(before.GetHistory()) || after.GetMessage().GetStatus() != statusBounced {
		t.Errorf("a refused retry changed the message: %v, %v", after.GetMessage(), err)
	}
}

func TestCancel_messageHeldBeforeTheSenderNeverReachesTheSMTPServer(t *testing.T) {
	p := startPipeline(t, nil, nil)
	ctx := context.Background()

	// With the sender down, the message waits on mail.signed.
	p.KillSender()
	id := publishSubmission(t, p, newsletter("held-1", "", "dave@example.net"))
	p.waitMessage(t, id, hasStatus(statusQueued))
	res, err := p.messages.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: id})
	if err != nil {
		t.Fatalf("CancelMessage: %v", err)
	}
	if res.GetMessage().GetStatus() != statusCancelled {
		t.Errorf("after CancelMessage the message is %v, want cancelled", res.GetMessage().GetStatus())
	}
	if n, err := p.Redis.Exists(ctx, cancelled.Key("acme", id)).Result(); err != nil || n != 1 {
		t.Fatalf("cancel marker: %d, %v", n, err)
	}
	p.RestartSender()

	// Whichever stage held it stops it and says so.
	m := p.waitMessage(t, id, func(m *mailbusv1.Message) bool {
		return slices.ContainsFunc(m.GetHistory(), func(e *mailbusv1.DeliveryEvent) bool {
			return e.GetStage() != "tracker" && e.GetReason() == cancelled.Reason
		})
	})
	if m.GetStatus() != statusCancelled {
		t.Errorf("status %v, want cancelled", m.GetStatus())
	}
	// A message sent after it shows that the sender is running and would
	// have sent the cancelled one by now.
	next := publishSubmission(t, p, newsletter("held-2", "", "erin@example.net"))
	p.waitMessage(t, next, hasStatus(statusSent))
	if n := deliveredTo(p.smtp, "dave@example.net"); n != 0 {
		t.Errorf("the cancelled message reached the SMTP server %d times", n)
	}

	// A cancelled message is not retried.
	_, err = p.messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "cancelled") {
		t.Errorf("retrying a cancelled message = %v, want FailedPrecondition saying it was cancelled", err)
	}
}

func TestCancel_deliveryWaitingOnARetryTopicIsNeverSent(t *testing.T) {
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPReplies(testkit.SMTPReplyOnce(
		testkit.SMTPReplyToRcpt("dave@example.net", testkit.SMTPReply{Code: 451, Enhanced: "4.2.0", Text: "greylisted, try later"})))}, nil)
	ctx := context.Background()

	id := publishSubmission(t, p, newsletter("grey-1", "", "dave@example.net"))
	p.waitMessage(t, id, hasStatus(statusDeferred))
	if _, err := p.messages.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: id}); err != nil {
		t.Fatalf("CancelMessage: %v", err)
	}

	// The retry topic gives the delivery back to the sender after a
	// minute; the sender finds the marker and does not connect.
	m := p.waitMessageWithin(t, id, historyHas("sender", cancelled.Reason), stack.WaitTimeout+2*time.Minute)
	if m.GetStatus() != statusCancelled {
		t.Errorf("status %v, want cancelled", m.GetStatus())
	}
	if n := deliveredTo(p.smtp, "dave@example.net"); n != 0 {
		t.Errorf("the cancelled delivery reached the SMTP server %d times after its retry", n)
	}
}
