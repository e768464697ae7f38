package bus_test

import (
	"context"
	"sync"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// TestPublisher_isIdempotentAndCompressesWithLZ4 looks at the record batches
// the publisher sends to kfake (the broker under StartEmbedded): they must
// carry a producer id (idempotence negotiated, not silently off) and be LZ4
// compressed.
func TestPublisher_isIdempotentAndCompressesWithLZ4(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, bus.TopicEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var (
		mu      sync.Mutex
		batches []kmsg.RecordBatch
	)
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, tp := range r.(*kmsg.ProduceRequest).Topics {
			for _, p := range tp.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(p.Records); err != nil {
					t.Errorf("read produced batch: %v", err)
					continue
				}
				mu.Lock()
				batches = append(batches, b)
				mu.Unlock()
			}
		}
		return nil, nil, false // let kfake handle it
	})

	pub, err := bus.NewPublisher(testConfig(c.ListenAddrs()), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for range 3 {
		if err := bus.Publish(pub, bus.TopicEvents, &mailbusv1.DeliveryEvent{TenantId: "acme", MessageId: "m1"}, nil); err != nil {
			t.Fatal(err)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(batches) == 0 {
		t.Fatal("saw no produce requests")
	}
	for i, b := range batches {
		if b.ProducerID < 0 {
			t.Errorf("batch %d has producer id %d: the producer is not idempotent", i, b.ProducerID)
		}
		if codec := b.Attributes & 0x07; codec != int16(sarama.CompressionLZ4) {
			t.Errorf("batch %d compression codec = %d, want LZ4 (%d)", i, codec, sarama.CompressionLZ4)
		}
	}
}

func TestBus_recordInterruptedByShutdownIsRedeliveredNotPoisoned(t *testing.T) {
	brokers := startBroker(t)
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

	client, err := sarama.NewClient(brokers, sarama.NewConfig())
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
