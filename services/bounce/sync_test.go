package bounce

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// syncService runs the consumer of the sender's refusals (RunSync) on the
// embedded broker and a real redis-server for tenant acme, whose soft
// bounces suppress at 2, and returns a publisher to mail.events.
func syncService(t *testing.T) (*Service, *suppress.Store, message.Publisher) {
	t.Helper()
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	raddr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	t.Cleanup(func() { rdb.Close() })
	store := suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(t, raddr)))
	tenants := staticTenants{"acme": {Id: "acme", SoftBounceThreshold: 2, SoftBounceWindowDays: 7}}
	s := New(Config{Bus: busCfg}, Deps{Tenants: tenants, Directory: tenants, Suppressions: store,
		Metrics: prometheus.NewRegistry(), Publisher: &recorder{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.RunSync(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sync consumer: %v", err)
		}
	})
	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return s, store, pub
}

// senderEvent is an event the sender publishes about delivery id of
// message m1 (one partition, in order) to rcpt.
func senderEvent(id, rcpt string, status mailbusv1.DeliveryStatus, reason string, permanent bool, code int, enhanced, text string) *mailbusv1.DeliveryEvent {
	dl := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: id, Attempt: 1,
		Envelope: &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: []string{rcpt}}}
	e := events.ForDelivery(dl, events.StageSender, status, reason, "refused by relay r1 at RCPT", time.Now(), rcpt)
	events.WithReply(e, code, enhanced, text)
	e.Permanent = permanent
	return e
}

func publishEvents(t *testing.T, pub message.Publisher, evs ...*mailbusv1.DeliveryEvent) {
	t.Helper()
	for _, ev := range evs {
		if err := bus.Publish(pub, bus.TopicEvents, ev, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
	}
}

// waitSuppressed polls the tenant's list until addr is on it.
func waitSuppressed(t *testing.T, store *suppress.Store, addr string) suppress.Entry {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		e, ok, err := store.Get(context.Background(), "acme", addr)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return e
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s was not suppressed within 60s", addr)
	return suppress.Entry{}
}

func TestSync_hardRefusalOfTheSenderSuppressesTheAddressWithTheReply(t *testing.T) {
	s, store, pub := syncService(t)
	const text = "The email account that you tried to reach does not exist."
	publishEvents(t, pub, senderEvent("m1.0", "Gone@Example.net", mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		"userunknown", true, 550, "5.1.1", text))
	e := waitSuppressed(t, store, "gone@example.net")
	if e.Source != suppress.SourceBounce || e.Reason != "userunknown" || !strings.Contains(e.Detail, "550 5.1.1 "+text) {
		t.Fatalf("entry after a synchronous hard bounce: %+v", e)
	}
	if n := testutil.ToFloat64(s.metrics.suppressed.WithLabelValues(suppress.SourceBounce)); n != 1 {
		t.Errorf("suppressed_total{source=bounce} = %v, want 1", n)
	}
}

func TestSync_softRefusalsCountOnceEachAndSuppressAtTheThreshold(t *testing.T) {
	_, store, pub := syncService(t)
	bounced := mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
	soft := func(id string) *mailbusv1.DeliveryEvent {
		return senderEvent(id, "erin@example.net", bounced, "securityerror", false, 550, "5.7.1", "Message rejected by policy")
	}
	publishEvents(t, pub,
		// The same refusal twice (a redelivered record) is one soft
		// bounce: with the tenant's threshold of 2 it must not suppress.
		soft("m1.0"), soft("m1.0"),
		// Sent and deferred events change nothing.
		senderEvent("m1.1", "frank@example.net", mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, "", false, 250, "2.0.0", "OK"),
		senderEvent("m1.2", "gina@example.net", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "mailboxfull", false, 452, "4.2.2", "Mailbox full"),
		// On the same partition after them: once this one is on the list,
		// the ones before have been handled.
		senderEvent("m1.3", "marker@example.net", bounced, "userunknown", true, 550, "5.1.1", "No such user"))
	waitSuppressed(t, store, "marker@example.net")
	got, err := store.Suppressed(context.Background(), "acme", []string{"erin@example.net", "frank@example.net", "gina@example.net"})
	if err != nil || len(got) != 0 {
		t.Fatalf("suppressed after one soft bounce counted twice, a sent and a deferred event: %v %v", got, err)
	}

	// A second delivery refused the same way reaches the threshold.
	publishEvents(t, pub, soft("m1.4"))
	e := waitSuppressed(t, store, "erin@example.net")
	if e.Source != suppress.SourceSoft || e.Reason != "securityerror" {
		t.Fatalf("entry after two soft bounces: %+v", e)
	}
}
