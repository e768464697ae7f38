package cluster_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
)

type chaosResult struct {
	scenario                               string
	published, delivered, duplicates, lost int
	notFinal                               int
	statuses                               map[mailbusv1.DeliveryStatus]int
}

type scenario struct {
	name  string
	fault func(t *testing.T, c *cluster)
	// ownKafka runs the scenario on a broker of its own (16 partitions)
	// that the fault may kill; otherwise on the shared test broker.
	ownKafka bool
}

// TestCluster_losesNothingWhenTheSenderProcessIsKilledMidBatch is the
// short fault scenario that make test runs on every change (make chaos
// runs them all with 10,000 messages): the sender process is killed with
// SIGKILL a third of the way through a batch and started again; every
// message must end delivered and final in the message log.
func TestCluster_losesNothingWhenTheSenderProcessIsKilledMidBatch(t *testing.T) {
	res := runChaos(t, scenario{name: "kill -9 sender", fault: func(t *testing.T, c *cluster) {
		c.replica("sender", 0).kill()
		c.restart("sender", 0)
	}}, 400)
	t.Logf("%+v", res)
	if res.lost > 0 || res.notFinal > 0 || res.delivered != res.published {
		t.Errorf("kill -9 sender: published %d, delivered %d, %d lost, %d not final", res.published, res.delivered, res.lost, res.notFinal)
	}
}

func runChaos(t *testing.T, sc scenario, n int) chaosResult {
	var c *cluster
	if sc.ownKafka {
		kafka := startControlledKafka(t)
		c = startCluster(t, clusterOptions{brokers: kafka.Brokers(), partitions: 16, controlledRedis: true})
		c.kafka = kafka
	} else {
		c = startCluster(t, clusterOptions{brokers: testBrokers(t), controlledRedis: true})
	}
	pub, err := bus.NewPublisher(bus.Config{Brokers: c.brokers, ClientID: "chaos"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	var published atomic.Int64
	pubDone := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("chaos-%d", i)
			sub := &mailbusv1.Submission{
				IdempotencyId: id, TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
				From:    &mailbusv1.Address{Email: "alice@acme.example"},
				To:      []*mailbusv1.Address{{Email: fmt.Sprintf("r%d@example.net", i)}},
				Subject: "chaos " + strconv.Itoa(i), TextBody: "Hello",
			}
			if err := publishRetrying(pub, sub); err != nil {
				pubDone <- fmt.Errorf("publish %s: %w", id, err)
				return
			}
			published.Add(1)
		}
		pubDone <- nil
	}()

	// The fault strikes when about a third of the batch is through.
	waitUntil(t, 10*time.Minute, func() bool { return c.smtp.Received() >= n/3 }, "a third of the batch delivered")
	t.Logf("%s at %d delivered", sc.name, c.smtp.Received())
	sc.fault(t, c)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}

	// Wait until every message reached the sink or stopped moving.
	delivered := func() (distinct, total int) {
		seen := map[string]bool{}
		msgs := c.smtp.Messages()
		for _, m := range msgs {
			for _, r := range m.To {
				seen[r] = true
			}
		}
		return len(seen), len(msgs)
	}
	last, lastChange := -1, time.Now()
	for time.Since(lastChange) < 3*time.Minute {
		d, _ := delivered()
		if d >= n {
			break
		}
		if d != last {
			last, lastChange = d, time.Now()
		}
		time.Sleep(time.Second)
	}
	distinct, total := delivered()
	res := chaosResult{scenario: sc.name, published: int(published.Load()), delivered: distinct, duplicates: total - distinct}

	// Every message must be final in the message log; wait for the log to
	// catch up with the sink, then count.
	var statuses map[mailbusv1.DeliveryStatus]int
	var notFinal int
	deadline := time.Now().Add(5 * time.Minute)
	for {
		statuses, notFinal = c.statusCounts(t, n)
		if notFinal == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	res.statuses, res.notFinal = statuses, notFinal
	failed := statuses[mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED] + statuses[mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED]
	res.lost = max(0, res.published-distinct-failed)
	return res
}

// publishRetrying publishes sub, retrying while the broker is away (the
// Kafka scenario kills it under the producer's feet): a producer that got
// no acknowledgement retries, and idempotency ids make that safe.
func publishRetrying(pub message.Publisher, sub *mailbusv1.Submission) error {
	var err error
	for range 120 {
		if err = bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{bus.MetaIdempotencyID: sub.GetIdempotencyId()}); err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return err
}

// statusCounts reads every chaos message's status from the tracker.
func (c *cluster) statusCounts(t *testing.T, n int) (map[mailbusv1.DeliveryStatus]int, int) {
	counts := map[mailbusv1.DeliveryStatus]int{}
	notFinal := 0
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: ids.MessageID("acme", fmt.Sprintf("chaos-%d", i))})
		cancel()
		if err != nil {
			notFinal++
			continue
		}
		st := resp.GetMessage().GetStatus()
		counts[st]++
		switch st {
		case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
			mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
			mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED:
		default:
			notFinal++
		}
	}
	return counts, notFinal
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
