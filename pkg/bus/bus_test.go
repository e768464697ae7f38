package bus_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func contractBus_decodesJSONSubmissionPublishedByKcat(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	got := make(chan *mailbusv1.Submission, 1)
	meta := make(chan string, 1)
	runRouter(t, cfg, "router", func(r *bus.Router) error {
		return r.Handle("route", bus.TopicSubmit, bus.Handle(func(_ context.Context, msg *message.Message, s *mailbusv1.Submission) error {
			meta <- msg.Metadata.Get(bus.MetaTenantID) + " " + msg.Metadata.Get(bus.MetaIdempotencyID)
			got <- s
			return nil
		}))
	})

	record := `{
	  "idempotencyId": "order-42",
	  "tenantId": "acme",
	  "kind": "EMAIL_KIND_TRANSACTIONAL",
	  "from": {"name": "Acme", "email": "news@acme.example"},
	  "to": [{"email": "bob@example.org"}],
	  "subject": "Your order",
	  "textBody": "Thanks!",
	  "metadata": {"order": "42"}
	}`
	kcatProduce(t, brokers, bus.TopicSubmit, "order-42", []byte(record), "content-type=application/json")

	want := &mailbusv1.Submission{
		IdempotencyId: "order-42",
		TenantId:      "acme",
		Kind:          mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From:          &mailbusv1.Address{Name: "Acme", Email: "news@acme.example"},
		To:            []*mailbusv1.Address{{Email: "bob@example.org"}},
		Subject:       "Your order",
		TextBody:      "Thanks!",
		Metadata:      map[string]string{"order": "42"},
	}
	if s := receive(t, got, "the submission"); !proto.Equal(s, want) {
		t.Errorf("handler got %v, want %v", s, want)
	}
	// The record's ids reach the metadata even though kcat set none.
	if m := receive(t, meta, "metadata"); m != "acme order-42" {
		t.Errorf("tenant and idempotency metadata = %q, want %q", m, "acme order-42")
	}
}

func contractBus_malformedRecordGoesToPoisonWithReasonAndNextIsConsumed(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	handled := make(chan consumed, 10)
	runRouter(t, cfg, "router", func(r *bus.Router) error {
		return r.Handle("route", bus.TopicSubmit, bus.Handle(func(ctx context.Context, _ *message.Message, s *mailbusv1.Submission) error {
			p, _ := kafka.MessagePartitionFromCtx(ctx)
			o, _ := kafka.MessagePartitionOffsetFromCtx(ctx)
			handled <- consumed{partition: p, offset: o, msg: message.NewMessage(s.GetSubject(), nil)}
			return nil
		}))
	})

	const jsonCT = "content-type=application/json"
	bad := []struct {
		name    string
		payload string
		headers []string
		reason  []string
	}{
		{"malformed json", `{"tenantId": "acme",`, []string{jsonCT}, []string{"decode mailbus.v1.Submission from application/json"}},
		{"unknown field", `{"tenantId":"acme","foo":1}`, []string{jsonCT}, []string{"decode mailbus.v1.Submission from application/json", `unknown field "foo"`}},
		{"missing tenant", `{"subject":"who?"}`, []string{jsonCT}, []string{"record has no tenant_id"}},
		{"garbage protobuf", "\xff\xff\xff\xff", []string{"content-type=application/x-protobuf"}, []string{"decode mailbus.v1.Submission from application/x-protobuf"}},
		{"garbage without content-type", "\x0a\xff\xff", nil, []string{"from application/x-protobuf (sniffed"}},
	}
	// One key: every record lands on the same partition, in this order.
	for _, b := range bad {
		kcatProduce(t, brokers, bus.TopicSubmit, "k1", []byte(b.payload), b.headers...)
	}
	kcatProduce(t, brokers, bus.TopicSubmit, "k1", []byte(`{"tenantId":"acme","subject":"good"}`), jsonCT)

	good := receive(t, handled, "the good record")
	if good.msg.UUID != "good" {
		t.Fatalf("handled %q, want the good record", good.msg.UUID)
	}
	if good.offset != int64(len(bad)) {
		t.Errorf("good record at offset %d, want %d (after the bad ones)", good.offset, len(bad))
	}

	poisoned := collect(t, cfg, "test.poison", bus.TopicPoison, len(bad))
	// Poison records are keyed by their own ids, so they are spread over
	// mail.poison's partitions; put them back in their original order.
	slices.SortFunc(poisoned, func(a, b consumed) int {
		ao, _ := strconv.Atoi(a.msg.Metadata.Get(bus.MetaPoisonOffset))
		bo, _ := strconv.Atoi(b.msg.Metadata.Get(bus.MetaPoisonOffset))
		return ao - bo
	})
	for i, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			md := poisoned[i].msg.Metadata
			reason := md.Get(bus.MetaPoisonReason)
			for _, w := range b.reason {
				if !strings.Contains(reason, w) {
					t.Errorf("reason %q does not contain %q", reason, w)
				}
			}
			want := map[string]string{
				bus.MetaPoisonTopic:     bus.TopicSubmit,
				bus.MetaPoisonHandler:   "route",
				bus.MetaPoisonPartition: strconv.Itoa(int(good.partition)),
				bus.MetaPoisonOffset:    strconv.Itoa(i),
				bus.MetaPoisonPermanent: "true",
			}
			for k, v := range want {
				if got := md.Get(k); got != v {
					t.Errorf("poison metadata %s = %q, want %q", k, got, v)
				}
			}
			if string(poisoned[i].msg.Payload) != b.payload {
				t.Errorf("poisoned payload = %q, want the original %q", poisoned[i].msg.Payload, b.payload)
			}
		})
	}
	select {
	case extra := <-handled:
		t.Errorf("handler also got %q", extra.msg.UUID)
	default:
	}
}

func contractBus_panicInHandlerGoesToPoisonAfterRetriesAndServiceGoesOn(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	var attempts atomic.Int32
	handled := make(chan string, 10)
	runRouter(t, cfg, "sender", func(r *bus.Router) error {
		return r.Handle("send", bus.TopicSigned, bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			if d.GetDeliveryId() == "boom" {
				attempts.Add(1)
				panic("relay table is nil")
			}
			handled <- d.GetDeliveryId()
			return nil
		}))
	})
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for _, id := range []string{"boom", "after"} {
		// Same message id: same partition, so "after" waits behind "boom".
		if err := bus.Publish(pub, bus.TopicSigned, &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: id}, nil); err != nil {
			t.Fatal(err)
		}
	}

	if id := receive(t, handled, "the record after the panicking one"); id != "after" {
		t.Errorf("handled %q, want %q", id, "after")
	}
	if got, want := attempts.Load(), int32(cfg.HandlerRetries+1); got != want {
		t.Errorf("panicking handler ran %d times, want %d (first attempt and %d retries)", got, want, cfg.HandlerRetries)
	}
	p := collect(t, cfg, "test.poison", bus.TopicPoison, 1)[0].msg
	if r := p.Metadata.Get(bus.MetaPoisonReason); !strings.Contains(r, "relay table is nil") {
		t.Errorf("poison reason %q does not name the panic", r)
	}
	if got := p.Metadata.Get(bus.MetaPoisonPermanent); got != "false" {
		t.Errorf("%s = %q, want false (retries ran out)", bus.MetaPoisonPermanent, got)
	}
	if got := p.Metadata.Get(bus.MetaDeliveryID); got != "boom" {
		t.Errorf("poisoned record's delivery_id = %q, want boom", got)
	}
}

func contractBus_permanentErrorSkipsRetries(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	cfg.HandlerRetries = 5
	var attempts atomic.Int32
	runRouter(t, cfg, "signer", func(r *bus.Router) error {
		return r.Handle("sign", bus.TopicAdmitted, bus.Handle(func(context.Context, *message.Message, *mailbusv1.Delivery) error {
			attempts.Add(1)
			return bus.Permanent(errors.New("no DKIM key for acme.example"))
		}))
	})
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicAdmitted, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1"}, nil); err != nil {
		t.Fatal(err)
	}
	p := collect(t, cfg, "test.poison", bus.TopicPoison, 1)[0].msg
	if got := attempts.Load(); got != 1 {
		t.Errorf("handler ran %d times, want 1", got)
	}
	if r := p.Metadata.Get(bus.MetaPoisonReason); r != "no DKIM key for acme.example" {
		t.Errorf("poison reason = %q", r)
	}
}

func contractBus_roundTripPropagatesMetadataAndKeysByMessageID(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	const perMessage = 5
	messageIDs := []string{"m-a", "m-b", "m-c", "m-d", "m-e", "m-f", "m-g", "m-h"}
	total := perMessage * len(messageIDs)

	type seen struct {
		delivery  *mailbusv1.Delivery
		partition int32
	}
	got := make(chan seen, total)
	runRouter(t, cfg, "quota", func(r *bus.Router) error {
		return r.Handle("admit", bus.TopicRouted, bus.Handle(func(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
			p, _ := kafka.MessagePartitionFromCtx(ctx)
			got <- seen{d, p}
			// What every stage does: emit an event carrying the incoming
			// record's ids and trace context.
			return r.Publish(bus.TopicEvents, &mailbusv1.DeliveryEvent{
				EventId: "e-" + d.GetDeliveryId(), DeliveryId: d.GetDeliveryId(), Stage: "quota",
			}, bus.MetaFrom(msg))
		}))
	})

	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	sent := map[string]*mailbusv1.Delivery{}
	for i := range perMessage {
		for _, mid := range messageIDs {
			d := &mailbusv1.Delivery{
				TenantId: "acme", MessageId: mid, DeliveryId: fmt.Sprintf("%s-%d", mid, i),
				Envelope: &mailbusv1.Envelope{MailFrom: "b@acme.example", RcptTo: []string{"x@example.org"}},
				Message:  []byte("Subject: hi\r\n\r\nhello\r\n"),
				Attempt:  1,
			}
			sent[d.DeliveryId] = d
			meta := message.Metadata{bus.MetaCorrelationID: "corr-" + d.DeliveryId, bus.MetaTraceparent: traceparent}
			if err := bus.Publish(pub, bus.TopicRouted, d, meta); err != nil {
				t.Fatal(err)
			}
		}
	}

	partitionOf := map[string]int32{}
	partitions := map[int32]bool{}
	for range total {
		s := receive(t, got, "deliveries")
		want := sent[s.delivery.GetDeliveryId()]
		if !proto.Equal(s.delivery, want) {
			t.Errorf("handler got %v, want %v", s.delivery, want)
		}
		mid := s.delivery.GetMessageId()
		if p, ok := partitionOf[mid]; ok && p != s.partition {
			t.Errorf("message %s on partitions %d and %d, want one", mid, p, s.partition)
		}
		partitionOf[mid] = s.partition
		partitions[s.partition] = true
	}
	if len(partitions) < 2 {
		t.Errorf("%d message ids all on partitions %v, want them spread", len(messageIDs), partitions)
	}

	for _, ev := range collect(t, cfg, "test.events", bus.TopicEvents, total) {
		md := ev.msg.Metadata
		did := md.Get(bus.MetaDeliveryID)
		d, ok := sent[did]
		if !ok {
			t.Errorf("event with unknown delivery_id %q", did)
			continue
		}
		want := map[string]string{
			bus.MetaCorrelationID: "corr-" + did,
			bus.MetaTraceparent:   traceparent,
			bus.MetaTenantID:      "acme",
			bus.MetaMessageID:     d.GetMessageId(),
			bus.MetaContentType:   bus.ContentTypeProtobuf,
		}
		for k, v := range want {
			if got := md.Get(k); got != v {
				t.Errorf("event of %s: metadata %s = %q, want %q", did, k, got, v)
			}
		}
		// Events are keyed by message id too, so they follow the message.
		if ev.partition != partitionOf[d.GetMessageId()] {
			t.Errorf("event of %s on partition %d, its message on %d", did, ev.partition, partitionOf[d.GetMessageId()])
		}
	}
}

func contractBus_carriesMailLargerThanKafkasDefaultOneMegabyte(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	got := make(chan int, 1)
	runRouter(t, cfg, "sender", func(r *bus.Router) error {
		return r.Handle("send", bus.TopicSigned, bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			got <- len(d.GetMessage())
			return nil
		}))
	})
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	// Random bytes, so that compression cannot shrink it under 1 MB.
	big := make([]byte, 5<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(pub, bus.TopicSigned, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1", Message: big}, nil); err != nil {
		t.Fatalf("publish a 5 MiB delivery: %v", err)
	}
	if n := receive(t, got, "the big delivery"); n != len(big) {
		t.Errorf("handler got a %d-byte message, want %d", n, len(big))
	}
}

func contractBus_kcatReadsRecordsPublishedByBus(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ev := &mailbusv1.DeliveryEvent{EventId: "e1", TenantId: "acme", MessageId: "m1", Detail: "hello from sarama"}
	if err := bus.Publish(pub, bus.TopicEvents, ev, nil); err != nil {
		t.Fatal(err)
	}
	// The batch is LZ4-compressed and idempotent; librdkafka must read it.
	out := kcat(t, nil, "-C", "-b", strings.Join(brokers, ","), "-t", bus.TopicEvents, "-o", "beginning", "-c", "1", "-e", "-q", "-f", "%k|%h|%s")
	key, rest, _ := strings.Cut(out, "|")
	if key != "m1" {
		t.Errorf("kcat key = %q, want the message id m1", key)
	}
	for _, w := range []string{"content-type=application/x-protobuf", "tenant_id=acme", "hello from sarama"} {
		if !strings.Contains(rest, w) {
			t.Errorf("kcat output %q does not contain %q", rest, w)
		}
	}
}

func contractEnsureTopics_createsMissingTopicsOnce(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	topics := []string{"test.ensure.a", "test.ensure.b", bus.TopicSubmit}
	for range 2 {
		if err := bus.EnsureTopics(t.Context(), cfg, topics, 4); err != nil {
			t.Fatalf("EnsureTopics: %v", err)
		}
	}
	out := kcat(t, nil, "-L", "-b", strings.Join(brokers, ","), "-t", "test.ensure.a")
	if !strings.Contains(out, `topic "test.ensure.a" with 4 partitions`) {
		t.Errorf("kcat -L:\n%s\nwant test.ensure.a with 4 partitions", out)
	}
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: "test.ensure.a", ConfigNames: []string{"max.message.bytes"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := cfg.TopicMaxMessageBytes(); len(entries) != 1 || entries[0].Value != strconv.Itoa(want) {
		t.Errorf("test.ensure.a config = %+v, want max.message.bytes %d", entries, want)
	}
}

func TestEmbedded_dataDirKeepsRecordsAndOffsetsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() *bus.Embedded {
		e, err := bus.StartEmbedded(t.Context(), bus.EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: dir, Partitions: 1})
		if err != nil {
			t.Fatalf("StartEmbedded: %v", err)
		}
		return e
	}
	e := start()
	cfg := testConfig(e.Addrs())
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := bus.Publish(pub, bus.TopicSubmit, &mailbusv1.Submission{TenantId: "acme", Subject: strconv.Itoa(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	// Consume and commit one record in a group.
	if got := collect(t, cfg, "test.keep", bus.TopicSubmit, 1); got[0].offset != 0 {
		t.Fatalf("first record at offset %d", got[0].offset)
	}
	e.Close()

	e = start()
	defer e.Close()
	cfg.Brokers = e.Addrs()
	all := collect(t, cfg, "test.fresh", bus.TopicSubmit, 3)
	for i, c := range all {
		s := &mailbusv1.Submission{}
		if err := bus.Decode(c.msg, s); err != nil || s.GetSubject() != strconv.Itoa(i) {
			t.Errorf("record %d after restart = %v, %v", i, s, err)
		}
	}
	if rest := collect(t, cfg, "test.keep", bus.TopicSubmit, 1); rest[0].offset != 1 {
		t.Errorf("group resumed at offset %d, want 1 (its committed offset survived)", rest[0].offset)
	}
}

func BenchmarkBus_publishConsume(b *testing.B) {
	brokers := startBroker(b)
	cfg := testConfig(brokers)
	r, err := bus.NewRouter(cfg, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	var count atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	target := int64(b.N)
	if err := r.Handle("count", bus.TopicSigned, bus.Handle(func(context.Context, *message.Message, *mailbusv1.Delivery) error {
		if count.Add(1) == target {
			once.Do(func() { close(done) })
		}
		return nil
	})); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			b.Error(err)
		}
	}()
	<-r.Running()
	pub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	body := []byte(strings.Repeat("Lorem ipsum dolor sit amet. ", 40)) // ~1 KiB mail

	b.ResetTimer()
	// Publishers in parallel, as the replicas of a stage would: the sync
	// producer batches concurrent sends into one request.
	const publishers = 16
	var wg sync.WaitGroup
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < b.N; i += publishers {
				d := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m" + strconv.Itoa(i%64), DeliveryId: strconv.Itoa(i), Message: body}
				if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-b.Context().Done():
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
