package quota_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/quota"
)

// waitTimeout bounds every wait for records; a deadlock guard, not a timing
// assertion.
const waitTimeout = 60 * time.Second

// memConfig is an in-memory quota.ConfigSource, the stage's own port.
type memConfig struct {
	mu      sync.Mutex
	tenants map[string]*mailbusv1.Tenant
	relays  map[string]*mailbusv1.Relay
}

func (c *memConfig) Tenant(id string) (*mailbusv1.Tenant, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tenants[id]
	return t, ok
}

func (c *memConfig) Relay(id string) (*configclient.RelayWithSecrets, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.relays[id]
	if !ok {
		return nil, false
	}
	return &configclient.RelayWithSecrets{Relay: r}, true
}

// clock is the injected quota.Deps.Now, moved by the tests across midnights.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// harness runs quota stages on a real broker and a real redis-server and
// records everything they publish.
type harness struct {
	t      *testing.T
	bus    bus.Config
	pub    message.Publisher
	conf   *memConfig
	clock  *clock
	rdb    *redis.Client
	limits *limits.Limits

	mu   sync.Mutex
	recs map[string][]record
	seen map[string]bool // watermill UUIDs of the records collected
}

type record struct {
	delivery *mailbusv1.Delivery
	event    *mailbusv1.DeliveryEvent
}

// outTopics are the topics the quota stage publishes to.
func outTopics() []string {
	ts := []string{bus.TopicAdmitted, bus.TopicFallback, bus.TopicEvents}
	for _, rt := range bus.RetryTopics() {
		ts = append(ts, rt.Topic)
	}
	return ts
}

func newHarness(t *testing.T, tenant *mailbusv1.Tenant, relays ...*mailbusv1.Relay) *harness {
	t.Helper()
	return newHarnessOn(t, testkit.StartRedis(t), tenant, relays...)
}

// newHarnessOn is newHarness on the Redis at redisAddr.
func newHarnessOn(t *testing.T, redisAddr string, tenant *mailbusv1.Tenant, relays ...*mailbusv1.Relay) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := testkit.BusConfig(testkit.StartBroker(t))
	if err := bus.EnsureTopics(ctx, cfg, bus.AllTopics(), 4); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	t.Cleanup(func() { rdb.Close() })
	h := &harness{
		t: t, bus: cfg, rdb: rdb, recs: map[string][]record{}, seen: map[string]bool{},
		conf:  &memConfig{tenants: map[string]*mailbusv1.Tenant{tenant.GetId(): tenant}, relays: map[string]*mailbusv1.Relay{}},
		clock: &clock{t: time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)},
	}
	for _, r := range relays {
		h.conf.relays[r.GetId()] = r
	}
	h.limits = limits.New(rdb, limits.WithClock(h.clock.Now))
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	h.pub = pub
	// mail.poison too, which no test expects anything on: dump shows it.
	for _, topic := range append(outTopics(), bus.TopicPoison) {
		sub, err := bus.NewSubscriber(cfg, "test."+topic, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Close() })
		ch, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go h.collect(topic, ch)
	}
	return h
}

// startQuota starts one quota replica; call it more than once for several
// replicas sharing the consumer group.
func (h *harness) startQuota(cfg quota.Config) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Bus = h.bus
	svc := quota.New(cfg, quota.Deps{Log: testLog(h.t), Config: h.conf, Redis: h.rdb, Now: h.clock.Now})
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			h.t.Errorf("quota: %v", err)
		}
	})
}

func (h *harness) collect(topic string, ch <-chan *message.Message) {
	for m := range ch {
		var r record
		var err error
		if topic == bus.TopicEvents {
			r.event = &mailbusv1.DeliveryEvent{}
			err = bus.Decode(m, r.event)
		} else {
			r.delivery = &mailbusv1.Delivery{}
			err = bus.Decode(m, r.delivery)
		}
		m.Ack()
		if err != nil {
			h.t.Errorf("decode record of %s: %v", topic, err)
			continue
		}
		h.mu.Lock()
		// A record the test's own consumer group is given again (after a
		// rebalance on a slow machine) keeps its UUID; a record quota
		// published again has a new one, and counts.
		if !h.seen[m.UUID] {
			h.seen[m.UUID] = true
			h.recs[topic] = append(h.recs[topic], r)
		}
		h.mu.Unlock()
	}
}

// publish sends deliveries to mail.routed as the router would.
func (h *harness) publish(ds ...*mailbusv1.Delivery) {
	h.t.Helper()
	for _, d := range ds {
		if err := bus.Publish(h.pub, bus.TopicRouted, d, message.Metadata{}); err != nil {
			h.t.Fatal(err)
		}
	}
}

// deliveries returns the deliveries published to topic so far.
func (h *harness) deliveries(topic string) []*mailbusv1.Delivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*mailbusv1.Delivery
	for _, r := range h.recs[topic] {
		out = append(out, r.delivery)
	}
	return out
}

// retried returns the deliveries published to any retry topic.
func (h *harness) retried() []*mailbusv1.Delivery {
	var out []*mailbusv1.Delivery
	for _, rt := range bus.RetryTopics() {
		out = append(out, h.deliveries(rt.Topic)...)
	}
	return out
}

func (h *harness) events() []*mailbusv1.DeliveryEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*mailbusv1.DeliveryEvent
	for _, r := range h.recs[bus.TopicEvents] {
		out = append(out, r.event)
	}
	return out
}

// decided counts how many of ids have come out of quota on an output topic
// but mail.events. Each counts once: a delivery that quota handled twice
// (at least once) must not stand in for one not handled yet.
func (h *harness) decided(ids map[string]bool) int {
	out := map[string]bool{}
	for _, topic := range outTopics() {
		if topic == bus.TopicEvents {
			continue
		}
		for _, d := range h.deliveries(topic) {
			if ids[d.GetDeliveryId()] {
				out[d.GetDeliveryId()] = true
			}
		}
	}
	return len(out)
}

// wait polls until cond holds.
func (h *harness) wait(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; records: %s", what, h.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDecided waits until every one of ds has come out of quota on a
// delivery topic (admitted, fallback or retry).
func (h *harness) waitDecided(ds ...*mailbusv1.Delivery) {
	h.t.Helper()
	ids := map[string]bool{}
	for _, d := range ds {
		ids[d.GetDeliveryId()] = true
	}
	h.wait(fmt.Sprintf("%d deliveries to be decided", len(ds)), func() bool { return h.decided(ids) >= len(ds) })
}

func (h *harness) usage(tenant *mailbusv1.Tenant, relayID string) limits.Usage {
	h.t.Helper()
	u, err := h.limits.Usage(context.Background(), tenant.GetId(), relayID, limits.Zone(tenant.GetTimeZone()))
	if err != nil {
		h.t.Fatal(err)
	}
	return u
}

func (h *harness) dump() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for topic, rs := range h.recs {
		for _, r := range rs {
			if r.event != nil {
				fmt.Fprintf(&b, "\n  %s: %s %v %s %s", topic, r.event.GetDeliveryId(), r.event.GetStatus(), r.event.GetReason(), r.event.GetDetail())
			} else {
				fmt.Fprintf(&b, "\n  %s: %s excluded=%v", topic, r.delivery.GetDeliveryId(), r.delivery.GetExcludedRelayIds())
			}
		}
	}
	return b.String()
}

// delivery makes a routed delivery of n recipients; relayID "" is the
// default server.
func delivery(tenant, id, relayID string, n int) *mailbusv1.Delivery {
	d := &mailbusv1.Delivery{
		DeliveryId: id, MessageId: strings.SplitN(id, ".", 2)[0], TenantId: tenant, Attempt: 1,
		Kind:     mailbusv1.EmailKind_EMAIL_KIND_MASS,
		Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX},
		Envelope: &mailbusv1.Envelope{MailFrom: "news@acme.example"},
		Message:  []byte("From: news@acme.example\r\nSubject: hi\r\n\r\nhi\r\n"),
	}
	if relayID != "" {
		d.Route = &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, RelayId: relayID}
	}
	for i := range n {
		d.Envelope.RcptTo = append(d.Envelope.RcptTo, fmt.Sprintf("r%d-%s@example.net", i, id))
	}
	return d
}

// rerouted is what the router makes of a fallback record when no relay is
// left: the same recipients on the default server under id <base>.rN.
func rerouted(d *mailbusv1.Delivery) *mailbusv1.Delivery {
	nd := proto.Clone(d).(*mailbusv1.Delivery)
	nd.DeliveryId = fmt.Sprintf("%s.r%d", d.GetDeliveryId(), len(d.GetExcludedRelayIds()))
	nd.Route = &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX}
	nd.QuotaDay = ""
	return nd
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
