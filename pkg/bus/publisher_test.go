package bus_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func TestPublisher_sendsTheRecordsOfOnePublishTogether(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	emb, err := bus.StartEmbedded(ctx, bus.EmbeddedConfig{Addr: "127.0.0.1:0", CountRequests: true})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	cfg := testConfig(emb.Addrs())
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	// The first publish also fetches the producer ID and metadata.
	if err := bus.Publish(pub, bus.TopicRouted, &mailbusv1.Delivery{TenantId: "acme", MessageId: "warm", DeliveryId: "warm.0"}, nil); err != nil {
		t.Fatal(err)
	}

	const n = 50
	deliveries := make([]*mailbusv1.Delivery, n)
	for i := range deliveries {
		// One message's deliveries: one key, one partition.
		deliveries[i] = &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: "m1." + strconv.Itoa(i), Message: []byte("hi")}
	}
	before, _, _ := emb.Requests()
	if err := publishDeliveries(pub, bus.TopicRouted, deliveries); err != nil {
		t.Fatal(err)
	}
	after, _, _ := emb.Requests()
	// watermill-kafka's publisher sent them one request each, one after
	// the other. Sarama's producer sends the first record as soon as it
	// has it and the rest, gathered meanwhile, in the next requests: two
	// on a quiet machine, a few more when its goroutines are slow to run
	// (three once in CI under -race).
	if got := after - before; got > n/5 {
		t.Errorf("%d records of one Publish took %d produce requests, want at most %d", n, got, n/5)
	}
	if got := endOffsets(t, cfg, bus.TopicRouted); got != n+1 {
		t.Errorf("%s holds %d records, want %d", bus.TopicRouted, got, n+1)
	}
}

func TestPublisher_withEventsLingerPublishesEventsAndMailAndClosesBoth(t *testing.T) {
	brokers := startBroker(t)
	cfg := testConfig(brokers)
	cfg.EventsLinger = 5 * time.Millisecond
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	errc := make(chan error, 2*n)
	for i := range n {
		go func() {
			errc <- bus.Publish(pub, bus.TopicEvents, &mailbusv1.DeliveryEvent{TenantId: "acme", MessageId: "m" + strconv.Itoa(i), DeliveryId: "m" + strconv.Itoa(i) + ".0"}, nil)
		}()
		go func() {
			errc <- bus.Publish(pub, bus.TopicRouted, &mailbusv1.Delivery{TenantId: "acme", MessageId: "m" + strconv.Itoa(i), DeliveryId: "m" + strconv.Itoa(i) + ".0"}, nil)
		}()
	}
	for range 2 * n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := endOffsets(t, cfg, bus.TopicEvents); got != n {
		t.Errorf("%s holds %d records, want %d", bus.TopicEvents, got, n)
	}
	if got := endOffsets(t, cfg, bus.TopicRouted); got != n {
		t.Errorf("%s holds %d records, want %d", bus.TopicRouted, got, n)
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := bus.Publish(pub, bus.TopicEvents, &mailbusv1.DeliveryEvent{TenantId: "acme", MessageId: "late"}, nil); err == nil {
		t.Error("publishing an event after Close succeeded")
	}
	if err := bus.Publish(pub, bus.TopicRouted, &mailbusv1.Delivery{TenantId: "acme", MessageId: "late"}, nil); err == nil {
		t.Error("publishing a delivery after Close succeeded")
	}
}

func publishDeliveries(pub interface {
	Publish(string, ...*message.Message) error
}, topic string, ds []*mailbusv1.Delivery) error {
	msgs := make([]*message.Message, 0, len(ds))
	for _, d := range ds {
		m, err := bus.Encode(d, nil)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	return pub.Publish(topic, msgs...)
}

// endOffsets is the number of records ever published to topic.
func endOffsets(t *testing.T, cfg bus.Config, topic string) int64 {
	t.Helper()
	client := newClient(t, cfg)
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range parts {
		off, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		sum += off
	}
	return sum
}
