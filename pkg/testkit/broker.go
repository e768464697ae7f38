package testkit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/mailbus/mailbus/pkg/bus"
)

// StartBroker starts an embedded Kafka-protocol broker (see
// bus.StartEmbedded) on a random loopback port, in memory, and returns its
// addresses for bus.Config.Brokers. The broker stops when the test ends.
// Every call starts a separate broker, so tests do not see each other's
// topics or consumer groups.
func StartBroker(t testing.TB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	b, err := bus.StartEmbedded(ctx, bus.EmbeddedConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("start embedded kafka broker: %v", err)
	}
	t.Cleanup(b.Close)
	return b.Addrs()
}

// BusConfig returns a bus.Config for brokers with the timeouts shortened
// for tests: quick retries, short consumer group sessions (the embedded
// broker allows them) and frequent offset commits, so that a component
// test does not wait seconds for a rebalance or a backoff. Only the handler
// timeout is long (WaitTimeout): a handler cut short on a busy machine
// would be retried and, after the retries, poisoned, and the test would
// miss its record.
func BusConfig(brokers []string) bus.Config {
	return bus.Config{
		Brokers:             brokers,
		ClientID:            "mailbus-test",
		DialTimeout:         5 * time.Second,
		RetryBackoff:        50 * time.Millisecond,
		SessionTimeout:      3 * time.Second,
		HeartbeatInterval:   200 * time.Millisecond,
		FetchMaxWait:        100 * time.Millisecond,
		RebalanceTimeout:    5 * time.Second,
		CommitInterval:      100 * time.Millisecond,
		HandlerRetries:      2,
		HandlerRetryInitial: 10 * time.Millisecond,
		HandlerRetryMax:     50 * time.Millisecond,
		HandlerTimeout:      WaitTimeout,
		CloseTimeout:        5 * time.Second,
	}
}

// Stage is a consumer group and the topic it consumes.
type Stage struct{ Group, Topic string }

// WaitDrained waits, up to timeout, until every stage's group has
// committed every record of its topic, seen in one pass over the stages in
// the order given. Pass them in pipeline order (each stage's topic is what
// the one before produces): a stage commits a record only after it has
// published what the record turned into, so a pass that finds every
// stage drained proves that nothing is left in flight.
func WaitDrained(t testing.TB, brokers []string, timeout time.Duration, stages ...Stage) {
	t.Helper()
	cfg := BusConfig(brokers)
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatalf("testkit: kafka client: %v", err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatalf("testkit: kafka cluster admin: %v", err)
	}
	lagging := func() (string, error) {
		for _, s := range stages {
			if err := client.RefreshMetadata(s.Topic); err != nil {
				return "", err
			}
			parts, err := client.Partitions(s.Topic)
			if err != nil {
				return "", err
			}
			committed, err := admin.ListConsumerGroupOffsets(s.Group, map[string][]int32{s.Topic: parts})
			if err != nil {
				return "", err
			}
			for _, p := range parts {
				end, err := client.GetOffset(s.Topic, p, sarama.OffsetNewest)
				if err != nil {
					return "", err
				}
				if b := committed.GetBlock(s.Topic, p); end > 0 && (b == nil || b.Offset < end) {
					have := int64(-1)
					if b != nil {
						have = b.Offset
					}
					return fmt.Sprintf("%s has committed %d of %s/%d, which ends at %d", s.Group, have, s.Topic, p, end), nil
				}
			}
		}
		return "", nil
	}
	deadline := time.Now().Add(timeout)
	for {
		why, err := lagging()
		if err == nil && why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testkit: the consumer groups did not drain in %s: %s%v", timeout, why, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
