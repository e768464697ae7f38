package cluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// TestCluster_deliversKcatSubmissionThroughSevenProcesses is the
// production shape end to end: kcat publishes, seven service processes on
// the broker, redis-server and PostgreSQL carry the message, the project's
// SMTP server receives it with DKIM signatures that dkimpy verifies
// against the records ConfigService publishes, and the tracker process
// reports it sent over gRPC.
func TestCluster_deliversKcatSubmissionThroughSevenProcesses(t *testing.T) {
	c := startCluster(t, clusterOptions{brokers: testBrokers(t)})
	testkit.KcatProduce(t, c.brokers, bus.TopicSubmit, "order-7", `{
		"idempotencyId": "order-7", "tenantId": "acme", "userId": "u-alice", "kind": "EMAIL_KIND_TRANSACTIONAL",
		"from": {"name": "Alice", "email": "alice@acme.example"},
		"to": [{"name": "Bob", "email": "bob@example.net"}],
		"subject": "Order 7", "textBody": "Hello Bob"}`)

	got := c.smtp.WaitMessages(t, 1)[0]
	if got.To[0] != "bob@example.net" {
		t.Fatalf("delivered to %v", got.To)
	}
	if !strings.HasSuffix(got.From, "@bounce.acme.example") {
		t.Errorf("return path %q is not on the tenant's bounce domain", got.From)
	}
	dom, err := c.config.GetDomain(context.Background(), &mailbusv1.GetDomainRequest{Id: "acme-example"})
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]string{}
	for _, k := range dom.GetDomain().GetDkimKeys() {
		records[k.GetDnsName()] = k.GetDnsTxtValue()
	}
	algs := map[string]bool{}
	for _, r := range testkit.VerifyDKIMWithDkimpy(t, got.Data, records) {
		if !r.OK {
			t.Errorf("dkimpy rejects the %s signature of %s: %s", r.Algorithm, r.Domain, r.Error)
		}
		algs[r.Algorithm] = true
	}
	if !algs["rsa-sha256"] || !algs["ed25519-sha256"] {
		t.Errorf("want RSA and Ed25519 signatures, dkimpy saw %v", algs)
	}
	msg := c.waitMessage(ids.MessageID("acme", "order-7"), 2*time.Minute, func(m *mailbusv1.Message) bool {
		return m.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT
	})
	if rc := msg.GetRecipients()[0]; rc.GetReply().GetCode() != 250 {
		t.Errorf("sent recipient should carry the server's 250, got %v", rc.GetReply())
	}
}
