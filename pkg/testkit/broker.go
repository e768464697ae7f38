package testkit

import (
	"context"
	"testing"
	"time"

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
