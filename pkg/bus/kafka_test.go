package bus_test

import (
	"context"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// contractPublisher_isIdempotentAndCompressesWithLZ4 reads back the record
// batches the publisher wrote, as the broker stores them: they must carry a
// producer id with consecutive sequence numbers (idempotence negotiated
// with InitProducerId, not silently off) and be LZ4 compressed.
func contractPublisher_isIdempotentAndCompressesWithLZ4(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const n = 3
	for range n {
		// One message id: one partition, one batch per synchronous publish.
		if err := bus.Publish(pub, bus.TopicEvents, &mailbusv1.DeliveryEvent{TenantId: "acme", MessageId: "m1"}, nil); err != nil {
			t.Fatal(err)
		}
	}

	batches := fetchBatches(t, cfg, bus.TopicEvents)
	if len(batches) != n {
		t.Fatalf("read %d batches, want %d (one per publish)", len(batches), n)
	}
	for i, b := range batches {
		if b.ProducerID < 0 {
			t.Errorf("batch %d has producer id %d: the producer is not idempotent", i, b.ProducerID)
		}
		if b.ProducerID != batches[0].ProducerID {
			t.Errorf("batch %d has producer id %d, batch 0 %d: want one producer", i, b.ProducerID, batches[0].ProducerID)
		}
		if b.FirstSequence != int32(i) {
			t.Errorf("batch %d has sequence %d, want %d", i, b.FirstSequence, i)
		}
		if b.Codec != sarama.CompressionLZ4 {
			t.Errorf("batch %d compression codec = %v, want LZ4", i, b.Codec)
		}
	}
}

// fetchBatches returns the record batches of every partition of topic as
// the partition leaders store them, which a consumer does not show.
func fetchBatches(t *testing.T, cfg bus.Config, topic string) []*sarama.RecordBatch {
	t.Helper()
	client := newClient(t, cfg)
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []*sarama.RecordBatch
	for _, p := range parts {
		leader, err := client.Leader(topic, p)
		if err != nil {
			t.Fatal(err)
		}
		// Version 4, the oldest Kafka 4 still serves (KIP-896), is the
		// first with record batches and read isolation.
		req := &sarama.FetchRequest{Version: 4, MaxWaitTime: 100, MinBytes: 1, MaxBytes: 16 << 20, Isolation: sarama.ReadUncommitted}
		req.AddBlock(topic, p, 0, 16<<20, -1)
		resp, err := leader.Fetch(req)
		if err != nil {
			t.Fatalf("fetch %s/%d: %v", topic, p, err)
		}
		block := resp.GetBlock(topic, p)
		if block == nil || block.Err != sarama.ErrNoError {
			t.Fatalf("fetch %s/%d: %+v", topic, p, block)
		}
		for _, rs := range block.RecordsSet {
			if rs.RecordBatch != nil {
				out = append(out, rs.RecordBatch)
			}
		}
	}
	return out
}

func contractBus_recordInterruptedByShutdownIsRedeliveredNotPoisoned(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicSigned, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1"}, nil); err != nil {
		t.Fatal(err)
	}

	// The first replica is stopped while the handler is busy sending.
	started := make(chan struct{})
	first, err := bus.NewRouter(cfg, "sender", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Handle("send", bus.TopicSigned, bus.Handle(func(ctx context.Context, _ *message.Message, _ *mailbusv1.Delivery) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	receive(t, started, "the first replica to start handling")
	cancel()
	if err := receive(t, done, "the first replica to stop"); err != nil {
		t.Fatalf("first replica Run: %v", err)
	}

	// The next replica gets the record again.
	got := make(chan string, 1)
	runRouter(t, cfg, "sender", func(r *bus.Router) error {
		return r.Handle("send", bus.TopicSigned, bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			got <- d.GetDeliveryId()
			return nil
		}))
	})
	if id := receive(t, got, "the redelivered record"); id != "d1" {
		t.Errorf("redelivered %q, want d1", id)
	}

	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	parts, err := client.Partitions(bus.TopicPoison)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if n, err := client.GetOffset(bus.TopicPoison, p, sarama.OffsetNewest); err != nil || n != 0 {
			t.Errorf("mail.poison partition %d holds %d records (err %v), want none", p, n, err)
		}
	}
}
