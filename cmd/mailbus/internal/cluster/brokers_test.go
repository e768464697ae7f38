package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// testBrokers is the broker the cluster tests run on: real Apache Kafka,
// the broker every operator runs (one per test binary, emptied for each
// test).
func testBrokers(t testing.TB) []string {
	return testkit.StartKafka(t)
}

// controlledKafka is a broker of the test's own, which it can kill and
// start again on the same log directory.
type controlledKafka struct{ b *testkit.KafkaBroker }

func startControlledKafka(t testing.TB) *controlledKafka {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := testkit.StartKafkaBroker(ctx)
	if err != nil {
		t.Fatalf("start Apache Kafka: %v", err)
	}
	t.Cleanup(b.Close)
	return &controlledKafka{b: b}
}

func (k *controlledKafka) Brokers() []string { return k.b.Addrs() }

func (k *controlledKafka) Kill(testing.TB) { k.b.Kill() }

func (k *controlledKafka) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := k.b.Restart(ctx); err != nil {
		t.Fatalf("restart Apache Kafka on its log directory: %v\n%s", err, k.b.LogTail())
	}
}
