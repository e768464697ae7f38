package limits

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/redisembed"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/redis/go-redis/v9"
)

// backend is a Redis-protocol server the suite runs against: the real
// redis-server that production uses, and the embedded one of `mailbus dev`
// as `mailbus dev` runs it (keeping its data in a directory), which must
// behave the same; each with and without a ledger on a real (embedded)
// Kafka broker, because the scripts take other paths with one.
type backend struct {
	name   string
	ledger bool
	start  func(t testing.TB) string
}

func backends() []backend {
	return []backend{
		{name: "redis-server", start: testkit.StartRedis},
		{name: "miniredis", start: startEmbedded},
		{name: "redis-server+ledger", ledger: true, start: testkit.StartRedis},
		{name: "miniredis+ledger", ledger: true, start: startEmbedded},
	}
}

// server is a started backend.
type server struct {
	addr    string
	brokers []string // nil without a ledger
}

func (b backend) run(t testing.TB) server {
	t.Helper()
	s := server{addr: b.start(t)}
	if b.ledger {
		s.brokers = testkit.StartBroker(t)
	}
	return s
}

// replica returns Limits of their own (their own connection pool and
// ledger reader), as a separate process would have, over prefix.
func (s server) replica(t testing.TB, prefix string, opts ...Option) *Limits {
	t.Helper()
	opts = append([]Option{WithKeyPrefix(prefix)}, opts...)
	if s.brokers != nil {
		lg := NewKafkaLedger(testkit.BusConfig(s.brokers), nil)
		t.Cleanup(func() { _ = lg.Close() })
		opts = append(opts, WithLedger(lg))
	}
	return New(newClient(t, s.addr), opts...)
}

func startEmbedded(t testing.TB) string {
	t.Helper()
	addr, stop, err := redisembed.Start("", redisembed.WithDataDir(t.TempDir()))
	if err != nil {
		t.Fatalf("start embedded redis: %v", err)
	}
	t.Cleanup(stop)
	return addr
}

// forEachBackend runs fn once per backend, each with a fresh server.
func forEachBackend(t *testing.T, fn func(t *testing.T, srv server)) {
	t.Helper()
	forEachBackendWhere(t, func(backend) bool { return true }, fn)
}

// forEachBackendWhere runs fn once per backend that keep accepts.
func forEachBackendWhere(t *testing.T, keep func(backend) bool, fn func(t *testing.T, srv server)) {
	t.Helper()
	for _, b := range backends() {
		if !keep(b) {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			fn(t, b.run(t))
		})
	}
}

// concurrent picks the backends for the tests that admit hundreds of
// deliveries from dozens of goroutines: the embedded server runs one
// command at a time and starts a Lua interpreter per script, and with a
// ledger, ceilings make contended admissions run their script several
// times, which takes it most of a minute on a busy machine. The scripts
// are the same, and the other tests run them on it with a ledger.
func concurrent(b backend) bool { return b.name != "miniredis+ledger" }

// clock is a settable clock shared by a test's Limits.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *clock { return &clock{now: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// newClient returns a client of its own (its own connection pool), as a
// separate quota replica would have.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 16})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// harness is one test's Limits with helpers that fail the test on errors.
type harness struct {
	t      testing.TB
	l      *Limits
	rdb    *redis.Client
	clock  *clock
	prefix string
}

func newHarness(t testing.TB, srv server, clk *clock, opts ...Option) *harness {
	t.Helper()
	prefix := testkit.RedisKeyPrefix(t, srv.addr)
	l := srv.replica(t, prefix, append([]Option{WithClock(clk.Now)}, opts...)...)
	return &harness{t: t, l: l, rdb: l.rdb.(*redis.Client), clock: clk, prefix: prefix}
}

func (h *harness) admit(req Request) Result {
	h.t.Helper()
	res, err := h.l.Admit(context.Background(), req)
	if err != nil {
		h.t.Fatalf("Admit(%+v): %v", req, err)
	}
	return res
}

func (h *harness) admitDefault(req Request) Result {
	h.t.Helper()
	res, err := h.l.AdmitDefault(context.Background(), req)
	if err != nil {
		h.t.Fatalf("AdmitDefault(%+v): %v", req, err)
	}
	return res
}

func (h *harness) refund(tenant, delivery string) bool {
	h.t.Helper()
	ok, err := h.l.Refund(context.Background(), tenant, delivery)
	if err != nil {
		h.t.Fatalf("Refund(%s, %s): %v", tenant, delivery, err)
	}
	return ok
}

func (h *harness) usage(tenant, relay string, loc *time.Location) Usage {
	h.t.Helper()
	u, err := h.l.Usage(context.Background(), tenant, relay, loc)
	if err != nil {
		h.t.Fatalf("Usage(%s, %s): %v", tenant, relay, err)
	}
	return u
}

func (h *harness) wantUsage(tenant, relay string, loc *time.Location, want Usage) {
	h.t.Helper()
	if got := h.usage(tenant, relay, loc); got != want {
		h.t.Fatalf("usage of %s/%s = %+v, want %+v", tenant, relay, got, want)
	}
}

func wantResult(t testing.TB, got Result, want Result) {
	t.Helper()
	if got != want {
		t.Fatalf("result = %+v, want %+v", got, want)
	}
}

func mustZone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load zone %s: %v", name, err)
	}
	return loc
}
