package stack_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestPipeline_deliversKcatJSONSubmissionWithDKIMThatDkimpyVerifies(t *testing.T) {
	p := startPipeline(t, nil, nil)
	testkit.KcatProduce(t, p.Brokers, bus.TopicSubmit, "order-1001", `{
		"idempotencyId": "order-1001", "tenantId": "acme", "userId": "u-alice", "kind": "EMAIL_KIND_TRANSACTIONAL",
		"from": {"name": "Alice Ärger", "email": "alice@acme.example"},
		"to": [{"name": "Bob", "email": "bob@example.net"}],
		"subject": "Ihre Bestellung 1001", "textBody": "Hallo Bob,\nvielen Dank.", "htmlBody": "<p>Hallo Bob</p>"}`)

	got := p.smtp.WaitMessages(t, 1)[0]
	if got.To[0] != "bob@example.net" {
		t.Fatalf("delivered to %v", got.To)
	}
	if !strings.HasPrefix(got.From, "b-") || !strings.HasSuffix(got.From, "@bounce.acme.example") {
		t.Errorf("return path %q is not a VERP address on the bounce domain", got.From)
	}

	results := testkit.VerifyDKIMWithDkimpy(t, got.Data, p.dkimRecords(t, "acme-example"))
	algs := map[string]bool{}
	for _, r := range results {
		if !r.OK {
			t.Errorf("dkimpy rejects the %v signature of %v: %v", r.Algorithm, r.Domain, r.Error)
		}
		algs[r.Algorithm] = true
	}
	if !algs["rsa-sha256"] || !algs["ed25519-sha256"] {
		t.Errorf("want RSA and Ed25519 signatures, dkimpy saw %v", results)
	}

	msg := p.waitMessage(t, ids.MessageID("acme", "order-1001"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	rc := msg.GetRecipients()[0]
	if rc.GetReply().GetCode() != 250 || rc.GetReply().GetText() == "" {
		t.Errorf("sent recipient should carry the server's reply, got %v", rc.GetReply())
	}
	if msg.GetUserId() != "u-alice" || msg.GetSummary().GetSubject() != "Ihre Bestellung 1001" {
		t.Errorf("message log lost the submission's details: %v", msg)
	}
}

func TestPipeline_refusesBadInputWithAPreciseReasonAndKeepsThePartitionFlowing(t *testing.T) {
	p := startPipeline(t, nil, func(o *stack.Options) { o.MaxMessageBytes = 64 << 10 })
	sub := func(id, extra string) string {
		return `{"idempotencyId": "` + id + `", "tenantId": "acme", "kind": "EMAIL_KIND_TRANSACTIONAL",
			"from": {"email": "alice@acme.example"}, "to": [{"email": "bob@example.net"}], "textBody": "hi"` + extra + `}`
	}
	cases := []struct {
		id, record, reason, detail string
	}{
		{"crlf-subject", sub("crlf-subject", `, "subject": "Hi\r\nBcc: victim@example.org"`), "header_injection", "subject"},
		{"crlf-header", sub("crlf-header", `, "subject": "ok", "headers": [{"name": "X-Campaign", "value": "a\r\nBcc: victim@example.org"}]`), "header_injection", "X-Campaign"},
		{"bad-address", strings.Replace(sub("bad-address", `, "subject": "ok"`), "bob@example.net", "bob@", 1), "invalid_address", "bob@"},
		{"unknown-tenant", strings.Replace(sub("unknown-tenant", `, "subject": "ok"`), `"acme"`, `"nosuch"`, 1), "unknown_tenant", "nosuch"},
		{"too-large", sub("too-large", `, "subject": "big", "htmlBody": "`+strings.Repeat("x", 100<<10)+`"`), "message_too_large", "64"},
	}
	records := []string{`{"tenantId": "acme", "subject": `} // malformed JSON: poison
	for _, c := range cases {
		records = append(records, c.record)
	}
	records = append(records, sub("good-after-bad", `, "subject": "still flowing"`))
	// One key puts every record on one partition: the good record must
	// still get through after the bad ones.
	testkit.KcatProduce(t, p.Brokers, bus.TopicSubmit, "same-partition", records...)

	for _, c := range cases {
		t.Run(c.id, func(t *testing.T) {
			tenant := "acme"
			if c.id == "unknown-tenant" {
				tenant = "nosuch"
			}
			m := p.waitMessage(t, ids.MessageID(tenant, c.id), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED))
			rc := m.GetRecipients()[0]
			if rc.GetReason() != c.reason || !strings.Contains(rc.GetDetail(), c.detail) {
				t.Errorf("failed with reason %q detail %q; want reason %q and a detail naming %q", rc.GetReason(), rc.GetDetail(), c.reason, c.detail)
			}
		})
	}
	p.waitMessage(t, ids.MessageID("acme", "good-after-bad"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	for _, m := range p.smtp.Messages() {
		if strings.Contains(string(m.Data), "victim@example.org") {
			t.Fatalf("an injected header reached the relay: %s", m.Data)
		}
	}

	// The malformed record is on the poison topic with the reason.
	sub2, err := bus.NewSubscriber(testkit.BusConfig(p.Brokers), "test.poison", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	ch, err := sub2.Subscribe(context.Background(), bus.TopicPoison)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		m.Ack()
		if reason := m.Metadata.Get(bus.MetaPoisonReason); !strings.Contains(reason, "decode mailbus.v1.Submission") {
			t.Errorf("poison reason %q does not say what failed", reason)
		}
		if m.Metadata.Get(bus.MetaPoisonTopic) != bus.TopicSubmit {
			t.Errorf("poison record does not name its topic: %v", m.Metadata)
		}
	case <-time.After(testkit.WaitTimeout):
		t.Fatal("the malformed record never reached the poison topic")
	}
}

func TestPipeline_losesNothingWhenTheSenderIsKilledMidBatch(t *testing.T) {
	const n = 1000
	// Reply latency keeps SMTP transactions in flight when the sender dies.
	p := startPipeline(t, []testkit.SMTPOption{testkit.SMTPLatency(2 * time.Millisecond)}, nil)
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var batch []*message.Message
	for i := range n {
		m, err := bus.Encode(&mailbusv1.Submission{
			IdempotencyId: fmt.Sprintf("kill-%d", i), TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
			From: &mailbusv1.Address{Email: "news@fast.example"}, To: []*mailbusv1.Address{{Email: fmt.Sprintf("r%d@example.net", i)}},
			Subject: fmt.Sprintf("newsletter %d", i), TextBody: "hello",
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, m)
	}
	if err := pub.Publish(bus.TopicSubmit, batch...); err != nil {
		t.Fatal(err)
	}

	// Kill the sender once a fifth has gone out, then start a new one.
	p.smtp.WaitMessages(t, n/5)
	t.Logf("killing the sender after %d deliveries", p.smtp.Received())
	p.KillSender()
	killedAt := p.smtp.Received()
	p.RestartSender()

	// Wait as long as messages keep reaching sent, and WaitTimeout after
	// the last one did: on a busy machine the thousand take minutes, and
	// one pass over the message log alone can outlast a fixed deadline.
	var missing []string
	for i := range n {
		missing = append(missing, ids.MessageID("acme", fmt.Sprintf("kill-%d", i)))
	}
	progress := time.Now()
	for len(missing) > 0 {
		still := missing[:0]
		for _, id := range missing {
			resp, err := p.messages.GetMessage(context.Background(), &mailbusv1.GetMessageRequest{Id: id})
			if err != nil || resp.GetMessage().GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
				still = append(still, id)
			}
		}
		if len(still) < len(missing) {
			progress = time.Now()
		}
		missing = still
		if len(missing) == 0 || time.Since(progress) > testkit.WaitTimeout {
			break
		}
		t.Logf("%d messages not sent yet; the relay has received %d", len(missing), p.smtp.Received())
		time.Sleep(time.Second)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d messages have no sent status after the sender was killed, none for %s (first: %s)", len(missing), n, testkit.WaitTimeout, missing[0])
	}
	perRcpt := map[string]int{}
	for _, m := range p.smtp.Messages() {
		perRcpt[m.To[0]]++
	}
	dups := 0
	for _, c := range perRcpt {
		dups += c - 1
	}
	if len(perRcpt) != n {
		t.Fatalf("the relay received %d distinct recipients, want %d", len(perRcpt), n)
	}
	t.Logf("killed the sender after %d deliveries; all %d messages delivered and logged as sent; %d duplicate deliveries (SMTP transactions cut between the server's 250 and the sender's record)",
		killedAt, n, dups)
}
