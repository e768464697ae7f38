// Package limits holds the quota stage's shared state in Redis: daily
// recipient counters per relay and per tenant, the per-relay send rate, and
// relay failure tracking. Every replica of every stage sees the same state,
// and every check-and-change is one Lua script, so replicas never race.
//
// # Daily limits
//
// Limits are counted in recipients per calendar day in the tenant's IANA time
// zone. The day (YYYY-MM-DD, see DayKey) is part of every counter key, so a
// new day starts from zero at the tenant's midnight, also when that day is 23
// or 25 hours long; keys expire a retention period (two days by default)
// after their day ends, only to free memory.
//
// Admit checks and counts a delivery in one script: when the relay's count
// plus the delivery's recipients would pass the relay's limit the answer is
// RelayExhausted; otherwise when the tenant's would pass the tenant's limit it
// is TenantExhausted; otherwise both counters grow and the answer is
// Admitted. A rejection changes no counter, so an exhausted relay never eats
// into the tenant's quota. A limit of 0 means unlimited. AdmitDefault is the
// same for the default server, which only the tenant limit applies to.
//
// # Idempotency
//
// Delivery is at least once, so the script also keeps a marker per delivery
// (mb:q:{tenant}:seen:{delivery}). It records the decision per route (a relay,
// or the default server) and the delivery's current charge: the route, day
// and recipients it is counted for.
//
//   - A delivery seen again on a route it was already decided on gets that
//     first decision back (Result.Replayed) and changes no counter.
//   - A delivery that arrives on a new route (re-routed through
//     mail.fallback) first has its charge on the old route released, so a
//     delivery is counted at most once at any time, wherever it is counted.
//   - Refund releases the current charge explicitly, for a delivery that
//     will not be sent on the route it was admitted for. It is idempotent,
//     and the route's decision is forgotten so the next attempt on that route
//     is decided afresh.
//
// Markers expire with the counters of the day they were last decided on.
//
// # Rate
//
// AllowRate is a GCRA limiter per relay (github.com/go-redis/redis_rate),
// run against the Redis server's clock so that replicas with skewed clocks
// still share one schedule. It answers at once with a retry-after instead of
// waiting, so the caller can delay a delivery without holding its partition.
//
// # Relay failures
//
// RecordFailure counts a relay's consecutive failures per day in the tenant's
// zone; the third (by default) disables the relay until the tenant's next
// midnight. RecordSuccess resets the count of a relay that is not disabled.
//
// # When Redis loses its data
//
// Redis is run as a cache, often without persistence, so a restart can lose
// every counter in the middle of a day. A counter that is simply absent must then not read
// as zero: that would let a relay carry its whole limit a second time.
// Limits with a Ledger (WithLedger; the services use KafkaLedger on
// mail.quota.ledger) keep the counters durable in two parts:
//
//   - Ceilings. A limited counter (relay or tenant, limit > 0) grows only up
//     to a ceiling that the ledger already holds. When an admission would
//     pass it, a new ceiling is first appended to the ledger, a step above
//     the count (a fiftieth of the limit, at least one recipient, and at
//     least enough for the admissions of this process waiting for it,
//     which share the write; never past the limit; WithLedgerSteps), and
//     only then raised in Redis. So at any moment the ledger's highest
//     ceiling is at least what was admitted.
//   - A restored marker per tenant (mb:q:{tenant}:restored, no expiry).
//     Every script that counts or reads a tenant's counters refuses to
//     run without it. The caller then reads the tenant's ledger entries and
//     a script puts each counter back at its highest ceiling, puts back the
//     relays disabled for the day, and sets the marker, all at once. A
//     tenant with nothing in the ledger (a new Redis, a new tenant) starts
//     from zero the same way. Admit, RecordFailure, IsDisabled and Usage
//     wait for the restore (bounded by their context) and never count on
//     zeroed counters; when the ledger cannot be read they return an
//     error, which the stage retries.
//
// A relay is disabled in the ledger by the failure that disables it (and
// by every later one), before RecordFailure returns.
//
// The worst case of a loss, per day:
//
//   - No relay and no tenant passes its daily limit.
//   - Each limited counter loses at most one step of capacity, or the
//     recipients of the admissions that were waiting for a new ceiling at
//     that moment when they are more: recipients counted as sent that were
//     not, the ceiling's lead over the count. With a limit of 1,500 a step
//     is 30 recipients; limits under 100 lose nothing when one delivery at
//     a time waits. Add the recipients refunded since the ceiling was last
//     raised (Refund lowers the count, not the ceiling).
//   - A delivery admitted before the loss and seen again afterwards (a
//     redelivered record, a delivery paced onto a retry topic) has lost its
//     marker, so it is decided and counted again: capacity again, and if
//     its relay is exhausted by then, it also goes back through
//     mail.fallback, which can send it twice.
//   - Counters of unlimited relays and tenants (limit 0) restart from their
//     last ceiling, which is none: they enforce nothing, and ceilings would
//     be writes for nothing.
//   - Consecutive failures that had not yet disabled a relay are forgotten:
//     it takes up to three fresh ones (each of which falls back, so no mail
//     is lost). A disabled relay stays disabled.
//   - The rate limiter's state is gone: a relay may get one extra burst.
//
// Why ceilings in a ledger of their own rather than re-reading the day's
// mail.admitted records: at millions of messages a day a restore would
// have to read the whole day's message bodies, and it would still need to
// tell refunds and re-routes apart, while ceilings cost nothing on the hot
// path but one small write per step (at most DefaultLedgerSteps per
// counter per day, whatever the volume) and a restore reads a few records
// per counter. Periodic checkpoints of the counters would be as cheap but
// would lose what was admitted since the last one, so a loss could let a
// relay pass its limit; ceilings are written before the admissions they
// allow, so it cannot.
//
// What is not detected is a loss that keeps the marker: Redis must not
// evict keys on its own (maxmemory-policy noeviction), or an evicted counter
// would count from zero; and a failover to a replica that lagged behind
// loses the admissions of the replication lag (usually milliseconds) while
// keeping the marker.
//
// # Redis Cluster
//
// All keys of a tenant share the hash tag {tenant}, so every script touches
// one slot. Scripts only touch keys passed in KEYS: when a charge must be
// released whose keys the caller could not know in advance, the script says
// so and the call is repeated with those keys declared.
package limits

import (
	"errors"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/exterr"
	"golang.org/x/sync/singleflight"
)

// DefaultKeyPrefix starts every key this package writes.
const DefaultKeyPrefix = "mb:q:"

// DefaultRetention is how long counters and markers outlive their day: long
// enough for redeliveries after an outage, short enough to keep Redis small.
const DefaultRetention = 48 * time.Hour

// DefaultFailureThreshold is the number of consecutive failures in one day
// that disables a relay until the next day.
const DefaultFailureThreshold = 3

// ErrInvalid wraps every error about a malformed request, so callers can tell
// a delivery that will never pass (poison) from a Redis outage (retry). It
// is permanent by exterr.IsPermanent, and so is every error wrapping it: a
// handler that returns one has its record poisoned after one attempt, not
// after the whole retry backoff.
var ErrInvalid = exterr.Permanent(errors.New("invalid quota request"))

// Limits checks and counts deliveries against limits kept in Redis. It is
// safe for concurrent use and holds no state of its own besides the client
// and the ledger.
type Limits struct {
	rdb              redis.UniversalClient
	rate             *redis_rate.Limiter
	now              func() time.Time
	prefix           string
	retention        time.Duration
	failureThreshold int
	ledger           Ledger
	ledgerSteps      int

	// restoring shares one restore per tenant among this process's
	// concurrent calls; raises batches their ceiling raises (see
	// raiseCeiling).
	restoring singleflight.Group
	raiseMu   sync.Mutex
	raises    map[string]*ceilingRaises
}

// Option changes a default of New.
type Option func(*Limits)

// WithClock sets the clock that decides which day it is (tests move it across
// midnights and DST changes). The rate limiter does not use it: it runs on
// the Redis server's clock.
func WithClock(now func() time.Time) Option {
	return func(l *Limits) { l.now = now }
}

// WithKeyPrefix replaces DefaultKeyPrefix, for example to share one Redis
// between environments or to isolate tests. It must not contain '{' or '}'
// because the hash tag must be the tenant id.
func WithKeyPrefix(prefix string) Option {
	return func(l *Limits) { l.prefix = prefix }
}

// WithRetention replaces DefaultRetention.
func WithRetention(d time.Duration) Option {
	return func(l *Limits) { l.retention = d }
}

// WithFailureThreshold replaces DefaultFailureThreshold.
func WithFailureThreshold(n int) Option {
	return func(l *Limits) { l.failureThreshold = n }
}

// New returns Limits that keep their state in rdb, which may be a single
// server, a failover client or a Redis Cluster client.
func New(rdb redis.UniversalClient, opts ...Option) *Limits {
	l := &Limits{
		rdb:              rdb,
		rate:             redis_rate.NewLimiter(rdb),
		now:              time.Now,
		prefix:           DefaultKeyPrefix,
		retention:        DefaultRetention,
		failureThreshold: DefaultFailureThreshold,
		ledgerSteps:      DefaultLedgerSteps,
		raises:           map[string]*ceilingRaises{},
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// keyTTL is how long keys written at now for the day it falls on in loc
// must live: until the retention after that day ends. It is relative (EXPIRE,
// not EXPIREAT) so that a skew between our clock and the Redis server's, or a
// test clock set in the past, cannot make a fresh key expire at once.
func (l *Limits) keyTTL(now time.Time, loc *time.Location) int64 {
	return ttlSeconds(NextMidnight(now, loc).Add(l.retention).Sub(now))
}

// ttlSeconds rounds up to whole seconds, at least 1, since EXPIRE 0 deletes.
func ttlSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}
