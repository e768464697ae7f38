// Package health owns what mailbus knows about the places mail leaves
// through: a tenant's relays, the default relay and the MX provider sites
// of direct delivery. Every stage asks it, and nothing else, whether a
// destination may take mail now and how much:
//
//   - relay failures: three consecutive failures in a tenant's day disable
//     a relay until the tenant's midnight (the counters live in
//     pkg/limits, beside the other daily counters, because they survive
//     the loss of Redis the same way, through the quota ledger);
//   - throttling: a reply that says "slow down" (Gmail's 421 4.7.28,
//     Yahoo's TSS04, Microsoft's 4.7.650/S843, a 421 "too many
//     connections") pauses that destination, not the sender, for a
//     while, then lets its connections back one doubling at a time
//     (State, Throttled);
//   - the budget of a destination: its connections, shared by every
//     sender replica (ConnSlots), messages per connection and per minute,
//     for relays from their configuration and for MX sites from the
//     shaping rules (Shaping);
//   - falling back: a delivery that leaves its relay goes back to the
//     router without it (Fallback), whichever stage found the relay
//     unusable.
package health

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
)

// Health answers for the destinations' state, kept in Redis so that every
// replica of every stage sees the same. It is safe for concurrent use.
type Health struct {
	rdb    redis.UniversalClient
	lim    *limits.Limits
	rate   *redis_rate.Limiter
	prefix string
	log    *slog.Logger
	now    func() time.Time

	mu     sync.Mutex
	pauses map[string]pauseState // by Destination.Key; see pauseCacheTTL
}

// Options tune New; zero fields take the defaults.
type Options struct {
	// KeyPrefix starts the keys of the throttling state and the site
	// rates; default "mb:h:".
	KeyPrefix string
	Log       *slog.Logger
	// Now is the clock of pauses and ramps; default time.Now. The replicas'
	// clocks are assumed to agree to a second or so (NTP), which is all a
	// pause of minutes needs.
	Now func() time.Time
}

// New returns the health of destinations kept in rdb; lim holds the
// relays' failure counters (limits.New over the same Redis, with the
// ledger where the stage has one).
func New(rdb redis.UniversalClient, lim *limits.Limits, o Options) *Health {
	if o.KeyPrefix == "" {
		o.KeyPrefix = "mb:h:"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Health{rdb: rdb, lim: lim, rate: redis_rate.NewLimiter(rdb), prefix: o.KeyPrefix, log: o.Log, now: o.Now,
		pauses: map[string]pauseState{}}
}

// RelayFailed counts a failed send through a tenant's relay (it refused
// the connection, TLS, AUTH or MAIL FROM, or timed out; a throttling reply
// is not a failure). disabledNow is true for exactly one call among every
// replica: the failure that disabled the relay for the rest of the
// tenant's day.
func (h *Health) RelayFailed(ctx context.Context, tenant *mailbusv1.Tenant, relayID string) (consecutive int, disabledNow bool, err error) {
	return h.lim.RecordFailure(ctx, tenant.GetId(), relayID, limits.Zone(tenant.GetTimeZone()))
}

// RelaySucceeded resets the relay's consecutive failures (a disabled relay
// stays disabled until midnight). A failure to record it is logged, not
// returned: the mail went out, and the count only matters if it fails
// again.
func (h *Health) RelaySucceeded(ctx context.Context, tenant *mailbusv1.Tenant, relayID string) {
	if err := h.lim.RecordSuccess(ctx, tenant.GetId(), relayID, limits.Zone(tenant.GetTimeZone())); err != nil {
		h.log.Warn("cannot reset relay failure count", "tenant_id", tenant.GetId(), "relay_id", relayID, "err", err)
	}
}

// Disabled reports whether relayID is disabled today in the tenant's zone.
// When Redis cannot answer the relay counts as enabled: the sender records
// a failure again if it really is broken, while treating it as disabled
// would silently move mail to the default server.
func (h *Health) Disabled(ctx context.Context, tenant *mailbusv1.Tenant, relayID string) bool {
	off, err := h.lim.IsDisabled(ctx, tenant.GetId(), relayID, limits.Zone(tenant.GetTimeZone()))
	if err != nil {
		h.log.Warn("cannot read relay health, treating relay as enabled", "tenant_id", tenant.GetId(), "relay_id", relayID, "err", err)
	}
	return off
}

// Fallback is the delivery that goes back to the router after d's relay
// could not take it (exhausted, failing, gone): a copy of d that excludes
// the relay, so that routing picks the next eligible relay or the default
// server. Quota and the sender both fall back through it.
func Fallback(d *mailbusv1.Delivery) *mailbusv1.Delivery {
	f := cloneDelivery(d)
	if id := d.GetRoute().GetRelayId(); id != "" {
		f.ExcludedRelayIds = append(f.ExcludedRelayIds, id)
	}
	return f
}

func cloneDelivery(d *mailbusv1.Delivery) *mailbusv1.Delivery {
	c := proto.Clone(d).(*mailbusv1.Delivery)
	if c.Envelope == nil {
		c.Envelope = &mailbusv1.Envelope{}
	}
	return c
}
