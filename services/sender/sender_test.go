package sender_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/sender"
)

// staticConfig is a configuration cache holding one tenant and its relays.
type staticConfig struct {
	tenant *mailbusv1.Tenant
	relays map[string]*configclient.RelayWithSecrets
}

func (c staticConfig) Tenant(id string) (*mailbusv1.Tenant, bool) {
	return c.tenant, id == c.tenant.GetId()
}

func (c staticConfig) Relay(id string) (*configclient.RelayWithSecrets, bool) {
	r, ok := c.relays[id]
	return r, ok
}

func (staticConfig) DefaultServer() configclient.DefaultServer { return configclient.DefaultServer{} }

func relayTo(id string, srv *testkit.SMTPServer, maxConns int32) *configclient.RelayWithSecrets {
	return &configclient.RelayWithSecrets{Relay: &mailbusv1.Relay{Id: id, TenantId: "acme", Name: id,
		Host: srv.Host(), Port: int32(srv.Port()), Security: mailbusv1.RelaySecurity_RELAY_SECURITY_NONE,
		Active: true, MaxConnections: maxConns}}
}

// gate holds the reply after the final dot of every transaction until
// opened, and counts the transactions held at once.
type gate struct {
	mu       sync.Mutex
	now      int
	peak     int
	open     chan struct{}
	openOnce sync.Once
	changed  chan struct{}
}

// newGate returns a closed gate.
func newGate() *gate { return &gate{open: make(chan struct{}), changed: make(chan struct{})} }

// releaseAtEnd opens g when the test ends, before the SMTP server started
// before this call closes, so that a failing test does not leave the
// server's connections stuck behind the gate.
func releaseAtEnd(t testing.TB, g *gate) { t.Cleanup(g.release) }

func (g *gate) release() { g.openOnce.Do(func() { close(g.open) }) }

func (g *gate) reply(c testkit.SMTPCommand) *testkit.SMTPReply {
	if c.Step != testkit.SMTPStepDot {
		return nil
	}
	g.add(1)
	defer g.add(-1)
	<-g.open
	return nil
}

func (g *gate) add(d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now += d
	g.peak = max(g.peak, g.now)
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gate) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		now, ch := g.now, g.changed
		g.mu.Unlock()
		if now >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%d transactions waiting for their final reply, want %d", now, n)
		}
	}
}

func (g *gate) maxHeld() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peak
}

// startSender runs a sender until the test ends and returns the registry
// of its metrics.
func startSender(t testing.TB, busCfg bus.Config, rdb redis.UniversalClient, cfg staticConfig, opts ...func(*sender.Config)) *prometheus.Registry {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := prometheus.NewRegistry()
	sc := sender.Config{Bus: busCfg, HeloName: "sender.test"}
	for _, o := range opts {
		o(&sc)
	}
	svc := sender.New(sc, sender.Deps{Log: log, Config: cfg, Redis: rdb, Metrics: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sender Run: %v", err)
		}
	})
	return reg
}

// publishDeliveries publishes n deliveries through relayID to mail.signed.
// They are deliveries of one message (as VERP makes one per recipient), so
// they share one partition.
func publishDeliveries(t testing.TB, busCfg bus.Config, relayID string, from, n int) {
	t.Helper()
	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := from; i < from+n; i++ {
		d := &mailbusv1.Delivery{
			TenantId: "acme", MessageId: "m1", DeliveryId: fmt.Sprintf("d%d", i), Attempt: 1,
			QueueTime: timestamppb.Now(),
			Envelope:  &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: []string{fmt.Sprintf("rcpt%d@dest.example", i)}},
			Route:     &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, RelayId: relayID},
			Message:   []byte(fmt.Sprintf("From: <alice@acme.example>\r\nSubject: %d\r\n\r\nhello\r\n", i)),
		}
		if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSender_deliversOnePartitionsRecordsConcurrentlyUpToTheRelaysConnectionLimit(t *testing.T) {
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	busCfg.HandlerTimeout = 2 * time.Minute // records wait for the gate
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGate()
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(g.reply))
	releaseAtEnd(t, g)
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relays: map[string]*configclient.RelayWithSecrets{"r1": relayTo("r1", srv, 4)}}

	publishDeliveries(t, busCfg, "r1", 0, 12)
	startSender(t, busCfg, rdb, cfg)

	// Every transaction waits at the final dot until the gate opens, so a
	// sender that delivered one record at a time would stop at one.
	g.waitHeld(t, 4)
	g.release()
	srv.WaitMessages(t, 12)
	if peak := g.maxHeld(); peak != 4 {
		t.Errorf("%d transactions were in flight at once, want 4 (the relay's max_connections)", peak)
	}
	if peak := srv.PeakOpenConnections(); peak > 4 {
		t.Errorf("%d connections were open at once, want at most 4", peak)
	}
}

// Copies of one delivery attempt share a partition, and the concurrent
// consumer runs them side by side: the router's once-a-day notice planned
// by two fallbacks, or a record redelivered while the first copy is still
// in its SMTP transaction. Only one may reach the relay.
func TestSender_sendsCopiesOfOneDeliveryInFlightTogetherOnce(t *testing.T) {
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	busCfg.HandlerTimeout = 2 * time.Minute
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGate()
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(g.reply))
	releaseAtEnd(t, g)
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relays: map[string]*configclient.RelayWithSecrets{"r1": relayTo("r1", srv, 4)}}

	for range 3 {
		publishDeliveries(t, busCfg, "r1", 0, 1)
	}
	publishDeliveries(t, busCfg, "r1", 1, 1)
	reg := startSender(t, busCfg, rdb, cfg)

	// d0 and d1 are held at the final dot; the relay has room for two
	// more, which copies of d0 would take if nothing kept them back.
	g.waitHeld(t, 2)
	g.release()
	srv.WaitMessages(t, 2)
	testkit.Eventually(t, time.Minute, func() bool {
		return counterValue(t, reg, "mailbus_sender_attempts_already_made_total") == 2
	}, "the two later copies of d0 to be skipped")
	if peak, n := g.maxHeld(), srv.Received(); peak != 2 || n != 2 {
		t.Errorf("the relay held %d transactions at once and received %d messages; want 2 and 2 (d0 once, d1)", peak, n)
	}
}

// counterValue is the sum of the named counter's series in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func TestSender_aSlowRelayDoesNotHoldUpAnotherRelaysMailOnTheSamePartition(t *testing.T) {
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	busCfg.HandlerTimeout = 2 * time.Minute
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGate()
	slow := testkit.StartSMTP(t, testkit.SMTPReplies(g.reply))
	releaseAtEnd(t, g)
	fast := testkit.StartSMTP(t)
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relays: map[string]*configclient.RelayWithSecrets{"slow": relayTo("slow", slow, 2), "fast": relayTo("fast", fast, 2)}}

	// Five deliveries to the stuck relay come first on the partition.
	publishDeliveries(t, busCfg, "slow", 0, 5)
	publishDeliveries(t, busCfg, "fast", 5, 5)
	startSender(t, busCfg, rdb, cfg)

	fast.WaitMessages(t, 5)
	if n := slow.Received(); n != 0 {
		t.Errorf("the slow relay finished %d messages while its gate was closed", n)
	}
	g.release()
	slow.WaitMessages(t, 5)
}

// BenchmarkSender_slowRelay measures the sender alone against a relay that
// answers each message a second after its final dot (as Office 365 or a
// scanning Exchange does), with max_connections 100: the deliveries (of
// one message, so on one partition) are published first, then one sender
// replica delivers them. It reports messages per second from the
// first message on, and the most transactions the relay had in flight at
// once; 100/s is what the relay allows.
//
//	go test -run '^$' -bench Sender_slowRelay -benchtime 1x ./services/sender
func BenchmarkSender_slowRelay(b *testing.B) {
	const n, conns = 1000, 100
	busCfg := testkit.BusConfig(testkit.StartBroker(b))
	busCfg.HandlerTimeout = 2 * time.Minute
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(b)})
	b.Cleanup(func() { _ = rdb.Close() })
	g := newGate()
	g.release()
	var first sync.Once
	var start time.Time
	srv := testkit.StartSMTP(b, testkit.SMTPDiscard(), testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if c.Step == testkit.SMTPStepDot {
			// The clock starts at the first message, not while the
			// consumer group forms.
			first.Do(func() { start = time.Now() })
			g.add(1)
			defer g.add(-1)
			time.Sleep(time.Second)
		}
		return nil
	}))
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relays: map[string]*configclient.RelayWithSecrets{"r1": relayTo("r1", srv, conns)}}
	publishDeliveries(b, busCfg, "r1", 0, n)
	b.ResetTimer()
	startSender(b, busCfg, rdb, cfg)
	for deadline := time.Now().Add(5 * time.Minute); srv.Received() < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages delivered in 5 minutes", srv.Received(), n)
		}
	}
	first.Do(func() {}) // start was set by the first message
	elapsed := time.Since(start)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(g.maxHeld()), "in-flight")
}
