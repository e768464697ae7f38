package bus_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// randomBytes are bytes that LZ4 cannot shrink, so that a broker judging
// the compressed batch sees them at full size.
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// The defect this guards against: a record larger than the producer's
// limit failed its handler, its poison copy was larger still, watermill's
// poison queue nacked it, and Kafka handed the same record over for ever:
// nothing after it on its partition was handled again.
func TestBus_recordTooLargeToCopyGoesToPoisonWithoutPayloadAndNextIsHandled(t *testing.T) {
	brokers := startBroker(t)
	cfg := testConfig(brokers)
	cfg.MaxMessageBytes = 256 << 10
	const topic = "test.size.in"

	handled := make(chan string, 10)
	runRouter(t, cfg, "stage", func(r *bus.Router) error {
		return r.Handle("forward", topic, bus.Handle(func(_ context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
			// Passing the record on needs a record as large as it.
			if err := r.Publish(bus.TopicSigned, d, bus.MetaFrom(msg)); err != nil {
				return err
			}
			handled <- d.GetDeliveryId()
			return nil
		}))
	})

	// A producer whose limit allows what the stage's does not, as a
	// producer outside mailbus or a stage with a larger limit would be.
	bigCfg := cfg
	bigCfg.MaxMessageBytes = 4 << 20
	pub, err := bus.NewPublisher(bigCfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	big := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: "d-big", Message: randomBytes(t, 1<<20)}
	// Many headers, each small: clipping values is not enough, only the
	// bare copy of the ids and the reason fits.
	manyHeaders := message.Metadata{}
	for i := range 100 {
		manyHeaders.Set(fmt.Sprintf("x-producer-%03d", i), strings.Repeat("h", 4<<10))
	}
	wide := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: "d-wide", Message: randomBytes(t, 300<<10)}
	small := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: "d-small", Message: []byte("hello")}
	// One message id: the same partition, in this order.
	for _, rec := range []struct {
		d    *mailbusv1.Delivery
		meta message.Metadata
	}{{big, nil}, {wide, manyHeaders}, {small, nil}} {
		if err := bus.Publish(pub, topic, rec.d, rec.meta); err != nil {
			t.Fatalf("publish %s: %v", rec.d.GetDeliveryId(), err)
		}
	}

	if got := receive(t, handled, "the record after the oversized ones"); got != "d-small" {
		t.Fatalf("handled %s, want d-small", got)
	}
	poisoned := collect(t, cfg, "test.poison", bus.TopicPoison, 2)
	byID := map[string]consumed{}
	for _, p := range poisoned {
		byID[p.msg.Metadata.Get(bus.MetaDeliveryID)] = p
	}
	for i, c := range []struct {
		d           *mailbusv1.Delivery
		keepsHeader bool
	}{{big, true}, {wide, false}} {
		id := c.d.GetDeliveryId()
		t.Run(id, func(t *testing.T) {
			p, ok := byID[id]
			if !ok {
				t.Fatalf("no poison copy of %s; got %v", id, byID)
			}
			md := p.msg.Metadata
			if len(p.msg.Payload) != 0 {
				t.Errorf("poison copy has a %d-byte payload, want none", len(p.msg.Payload))
			}
			want := map[string]string{
				bus.MetaPoisonPayloadDropped: "true",
				bus.MetaPoisonPayloadSize:    strconv.Itoa(proto.Size(c.d)),
				bus.MetaPoisonTopic:          topic,
				bus.MetaPoisonHandler:        "forward",
				bus.MetaPoisonOffset:         strconv.Itoa(i),
				bus.MetaPoisonPermanent:      "true",
				bus.MetaMessageID:            "m1",
				bus.MetaTenantID:             "acme",
			}
			for k, v := range want {
				if got := md.Get(k); got != v {
					t.Errorf("poison metadata %s = %q, want %q", k, got, v)
				}
			}
			if md.Get(bus.MetaPoisonPartition) == "" {
				t.Error("poison copy does not say which partition the record was on")
			}
			reason := md.Get(bus.MetaPoisonReason)
			if !strings.Contains(reason, bus.TopicSigned) || !strings.Contains(reason, "over the 262144 bytes (256 KiB) limit") {
				t.Errorf("reason %q does not say what was too large for which limit", reason)
			}
			hasProducerHeader := md.Get("x-producer-000") != ""
			if c.d == wide && (hasProducerHeader || md.Get(bus.MetaPoisonMetaClipped) != "true") {
				t.Errorf("the copy of a record with too many headers should keep only the ids and reason, marked clipped: %v", md)
			}
		})
	}
	if n := testutil.ToFloat64(bus.PoisonRecords.WithLabelValues(topic, "forward", bus.PoisonPayloadDropped)); n != 2 {
		t.Errorf("poison records counted without payload = %v, want 2", n)
	}
}

func TestPublisher_refusesARecordOverItsLimitAndPublishesNoneOfTheBatch(t *testing.T) {
	brokers := startBroker(t)
	cfg := testConfig(brokers)
	cfg.MaxMessageBytes = 64 << 10
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const topic = "test.size.batch"
	small, err := bus.Encode(&mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1", Message: []byte("hi")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	big, err := bus.Encode(&mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d2", Message: randomBytes(t, 100<<10)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	size, err := bus.RecordSize(topic, big)
	if err != nil {
		t.Fatal(err)
	}
	err = pub.Publish(topic, small, big)
	var tl *bus.RecordTooLargeError
	if !errors.As(err, &tl) || !bus.IsTooLarge(err) || !bus.IsPermanent(err) {
		t.Fatalf("Publish = %v, want a permanent *RecordTooLargeError", err)
	}
	if tl.Topic != topic || tl.Size != size || tl.Limit != 64<<10 {
		t.Errorf("error = %+v, want topic %s, size %d, limit %d", tl, topic, size, 64<<10)
	}
	if !strings.Contains(err.Error(), "over the 65536 bytes (64 KiB) limit") {
		t.Errorf("error %q does not name the limit", err)
	}

	// Nothing of the batch went out: the small record would otherwise be
	// delivered without its sibling.
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		t.Fatal(err)
	}
	for _, p := range parts {
		if off, err := client.GetOffset(topic, p, sarama.OffsetNewest); err != nil || off != 0 {
			t.Errorf("partition %d of %s has end offset %d (%v), want nothing published", p, topic, off, err)
		}
	}
}

func TestPublisher_brokersRefusalOfARecordAsTooLargeIsPermanentAndNamesTheRecord(t *testing.T) {
	brokers := startBroker(t)
	cfg := testConfig(brokers)
	// A topic whose limit is below the producer's, as on a cluster where
	// an operator did not raise max.message.bytes.
	const topic = "test.size.small-topic"
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	limit := "1000000"
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"max.message.bytes": &limit}}, false); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	err = bus.Publish(pub, topic, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1", Message: randomBytes(t, 2<<20)}, nil)
	var tl *bus.RecordTooLargeError
	if !errors.As(err, &tl) || !bus.IsPermanent(err) {
		t.Fatalf("Publish = %v, want a permanent *RecordTooLargeError", err)
	}
	if !errors.Is(err, sarama.ErrMessageSizeTooLarge) || tl.Limit != 0 || tl.Size < 2<<20 {
		t.Errorf("error = %+v, want the broker's MESSAGE_TOO_LARGE for a record over 2 MiB", tl)
	}
	// The producer still works after the refusal.
	if err := bus.Publish(pub, topic, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d2", Message: []byte("hi")}, nil); err != nil {
		t.Fatalf("publish after a refusal: %v", err)
	}
	recs := collect(t, cfg, "test.small-topic", topic, 1)
	d := &mailbusv1.Delivery{}
	if err := bus.Decode(recs[0].msg, d); err != nil || d.GetDeliveryId() != "d2" {
		t.Errorf("topic holds %v (%v), want only d2", d, err)
	}
}

func TestRecordLimit_leavesRoomForBase64AndWhatStagesAdd(t *testing.T) {
	const mib = 1 << 20
	if got, want := bus.RecordLimit(0), 25*mib+25*mib/3+bus.RecordReserve; got != want {
		t.Errorf("RecordLimit(0) = %d, want %d (25 MiB mail)", got, want)
	}
	cfg := bus.Config{}
	if cfg.DeliveryLimit() < 25*mib+25*mib/4 {
		t.Errorf("default DeliveryLimit %d leaves no room for a 25 MiB message and its submission's fields", cfg.DeliveryLimit())
	}
	if cfg.TopicMaxMessageBytes() <= bus.RecordLimit(0) {
		t.Errorf("TopicMaxMessageBytes %d is not above the producer's limit %d", cfg.TopicMaxMessageBytes(), bus.RecordLimit(0))
	}
	if _, err := bus.ProducerConfig(bus.Config{MaxMessageBytes: bus.RecordLimit(80 * mib)}); err == nil {
		t.Error("ProducerConfig accepts a record limit above sarama's 100 MiB request limit")
	}
}
