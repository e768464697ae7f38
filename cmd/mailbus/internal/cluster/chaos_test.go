//go:build chaos

package cluster_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
)

// The fault scenarios of `make chaos`: the multi-process cluster carries a
// batch of messages (MAILBUS_CHAOS_MESSAGES, default 10,000) while one
// fault happens in the middle, and the test counts what became of every
// message. The bar is 0 lost and every message final in every scenario;
// duplicates are counted and explained in README.md.
//
// They are behind the chaos build tag because together they run for many
// minutes: `make chaos` runs them; `make test` runs the cluster's
// end-to-end test and one short sender crash instead.

type chaosResult struct {
	scenario                               string
	published, delivered, duplicates, lost int
	notFinal                               int
	statuses                               map[mailbusv1.DeliveryStatus]int
}

type scenario struct {
	name  string
	fault func(t *testing.T, c *cluster)
}

func TestChaos(t *testing.T) {
	n := 10000
	if s := os.Getenv("MAILBUS_CHAOS_MESSAGES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("MAILBUS_CHAOS_MESSAGES=%q: want a positive number", s)
		}
		n = v
	}
	var scenarios []scenario
	for _, s := range []string{"router", "quota", "signer", "sender", "tracker", "bounce"} {
		scenarios = append(scenarios, scenario{"kill -9 " + s, func(t *testing.T, c *cluster) {
			c.replica(s, 0).kill()
			c.restart(s, 0)
		}})
	}
	scenarios = append(scenarios,
		scenario{"kill -9 kafka", func(t *testing.T, c *cluster) {
			c.kafka.Kill(t)
			c.kafka.Restart(t)
		}},
		scenario{"redis down 20s, back empty", func(t *testing.T, c *cluster) {
			c.redis.stop()
			time.Sleep(20 * time.Second)
			c.redis.start(t)
		}},
		scenario{"add sender replicas 2 and 3", func(t *testing.T, c *cluster) {
			c.start("sender", "MAILBUS_HELO_NAME=mailbus.test")
			c.start("sender", "MAILBUS_HELO_NAME=mailbus.test")
		}},
	)
	if only := os.Getenv("MAILBUS_CHAOS_ONLY"); only != "" {
		var keep []scenario
		for _, s := range scenarios {
			if strings.Contains(s.name, only) {
				keep = append(keep, s)
			}
		}
		scenarios = keep
	}
	var results []chaosResult
	for _, sc := range scenarios {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			res := runChaos(t, sc, n)
			results = append(results, res)
			if res.lost > 0 || res.notFinal > 0 {
				t.Errorf("%s: %d lost, %d not final", sc.name, res.lost, res.notFinal)
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-30s %9s %9s %10s %5s %9s  %s\n", "scenario", "published", "delivered", "duplicates", "lost", "not final", "final statuses")
	for _, r := range results {
		fmt.Fprintf(&b, "%-30s %9d %9d %10d %5d %9d  %v\n", r.scenario, r.published, r.delivered, r.duplicates, r.lost, r.notFinal, r.statuses)
	}
	fmt.Print(b.String())
}

func runChaos(t *testing.T, sc scenario, n int) chaosResult {
	kafka := startControlledKafka(t)
	c := startCluster(t, clusterOptions{brokers: kafka.Brokers(), partitions: 16, controlledRedis: true})
	c.kafka = kafka
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
