package limits

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Ledger is the durable record that daily counters are restored from when
// Redis has lost them (see the package comment, "When Redis loses its
// data"). KafkaLedger is the production one.
type Ledger interface {
	// Append stores e durably: once it returns nil, every later Entries
	// call, in any process, sees e.
	Append(ctx context.Context, e LedgerEntry) error
	// Entries returns the tenant's entries in space of at least its
	// current day, with the highest value appended per day and counter. It
	// sees every entry whose Append returned before Entries was called.
	Entries(ctx context.Context, space, tenant string) ([]LedgerEntry, error)
}

// LedgerEntry says that a tenant's counter may have reached Value on Day:
// for a daily counter, its ceiling (no more than Value recipients can have
// been admitted); for a relay's failures, that the relay is disabled.
type LedgerEntry struct {
	// Space is the key prefix of the Limits that wrote it (DefaultKeyPrefix
	// in production), which keeps apart what Limits with different prefixes
	// keep apart in Redis.
	Space  string `json:"space"`
	Tenant string `json:"tenant"`
	// Day is the quota day, YYYY-MM-DD in the tenant's zone.
	Day string `json:"day"`
	// Counter is "tenant", "relay:<relay id>" or "disabled:<relay id>".
	Counter string `json:"counter"`
	Value   int64  `json:"value"`
}

// Ledger counter names.
const (
	counterTenant         = "tenant"
	counterRelayPrefix    = "relay:"
	counterDisabledPrefix = "disabled:"
)

// DefaultLedgerSteps is how many ceilings a limited counter takes to reach
// its limit: each ledger write lets the counter grow by a fiftieth of its
// limit (at least one recipient, or one delivery's when more). A step is
// what a loss of Redis may cost a counter in capacity, and the steps bound
// the ledger writes per counter per day.
const DefaultLedgerSteps = 50

// WithLedger backs the counters with a durable ledger, so that a loss of
// Redis never lets a relay or a tenant pass its daily limit, and a relay
// disabled for the day stays disabled. Without one (tests, tools) counters
// that Redis lost start again from zero.
func WithLedger(lg Ledger) Option {
	return func(l *Limits) { l.ledger = lg }
}

// WithLedgerSteps replaces DefaultLedgerSteps.
func WithLedgerSteps(n int) Option {
	return func(l *Limits) { l.ledgerSteps = max(1, n) }
}

// step is how far one ceiling lets a counter with this limit grow.
func (l *Limits) step(limit int64) int64 {
	return max(1, limit/int64(l.ledgerSteps))
}

// ledgerFlag tells the scripts whether a ledger backs the counters, so
// that they refuse to count on a Redis whose tenant state was never
// restored, and keep limited counters within their ceilings.
func (l *Limits) ledgerFlag() string {
	if l.ledger == nil {
		return "0"
	}
	return "1"
}

// Script statuses besides the ones of each script's own answers.
const (
	// statusRestore: the tenant's restored marker is missing, so Redis
	// lost the tenant's state (or never had it): restore, then ask again.
	statusRestore = 3
	// statusCeiling: the admission fits the limit but not the counter's
	// ceiling: raise the ceiling, then ask again.
	statusCeiling = 4
)

// raiseScript raises a counter's ceiling once the ledger holds it.
//
//	KEYS[1] the tenant's restored marker
//	KEYS[2] the ceiling
//	ARGV[1] the new ceiling, ARGV[2] time to live of the day's keys (seconds)
//
// Returns 0 when the marker is missing (Redis lost the tenant's state since
// the admission asked for the ceiling: restore first), else 1.
var raiseScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local v = tonumber(ARGV[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], v, 'EX', ARGV[2])
end
return 1
`)

// restoreScript puts a tenant's state back from the ledger and marks the
// tenant restored; a tenant that is already marked is left alone, so that
// several replicas restoring at once restore once.
//
//	KEYS[1] the tenant's restored marker
//	KEYS[2..] counters and ceilings to raise
//	ARGV[1] the marker's value, then per key of KEYS[2..] its value and
//	time to live (seconds)
//
// Keys are only ever raised: a counter that Redis still holds (for example
// after an upgrade from a version without the marker) keeps the higher of
// its own count and the ledger's.
var restoreScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 2, #KEYS do
  local v = tonumber(ARGV[2 * i - 2])
  if v > tonumber(redis.call('GET', KEYS[i]) or '0') then
    redis.call('SET', KEYS[i], v, 'EX', ARGV[2 * i - 1])
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
`)

// restore puts the tenant's counters, ceilings and disabled relays back
// from the ledger. Concurrent calls for one tenant in this process share
// one restore; calls in other processes are made harmless by the script.
// loc is the tenant's zone, which decides when each day's keys expire.
func (l *Limits) restore(ctx context.Context, tenant string, loc *time.Location) error {
	_, err, _ := l.restoring.Do(tenant, func() (any, error) {
		entries, err := l.ledger.Entries(ctx, l.prefix, tenant)
		if err != nil {
			return nil, fmt.Errorf("restore quota state of tenant %q: read ledger: %w", tenant, err)
		}
		now := l.now()
		keys := []string{l.restoredKey(tenant)}
		args := []any{now.UTC().Format(time.RFC3339)}
		raise := func(key string, v int64, ttl time.Duration) {
			keys = append(keys, key)
			args = append(args, v, ttlSeconds(ttl))
		}
		for _, e := range entries {
			start, err := time.ParseInLocation(dayLayout, e.Day, zone(loc))
			if err != nil || e.Value <= 0 {
				continue // malformed: the rest can still be restored
			}
			end := NextMidnight(start, loc)
			keep := end.Add(l.retention).Sub(now)
			switch {
			case e.Counter == counterTenant:
				if keep > 0 {
					raise(l.tenantDayKey(tenant, e.Day), e.Value, keep)
					raise(l.tenantCeilKey(tenant, e.Day), e.Value, keep)
				}
			case strings.HasPrefix(e.Counter, counterRelayPrefix):
				relayID := strings.TrimPrefix(e.Counter, counterRelayPrefix)
				if keep > 0 && relayID != "" {
					raise(l.relayDayKey(tenant, relayID, e.Day), e.Value, keep)
					raise(l.relayCeilKey(tenant, relayID, e.Day), e.Value, keep)
				}
			case strings.HasPrefix(e.Counter, counterDisabledPrefix):
				relayID := strings.TrimPrefix(e.Counter, counterDisabledPrefix)
				if left := end.Sub(now); left > 0 && relayID != "" {
					raise(l.failKey(tenant, relayID, e.Day), int64(l.failureThreshold), left)
				}
			}
		}
		if err := restoreScript.Run(ctx, l.rdb, keys, args...).Err(); err != nil {
			return nil, fmt.Errorf("restore quota state of tenant %q: %w", tenant, err)
		}
		return nil, nil
	})
	return err
}

// ceilingRaises are the raises of one ceiling in this process: at most one
// is being written, and the admissions that need the ceiling raised
// meanwhile gather in the next one.
type ceilingRaises struct {
	inflight, next *raiseBatch
}

// raiseBatch is one ledger write for the admissions that asked for it.
type raiseBatch struct {
	// base is the highest count the admissions saw, need the sum of their
	// recipients.
	base, need int64
	started    bool
	done       chan struct{}
	ok         bool
	err        error
}

// raiseCeiling makes room under a counter's ceiling for an admission of n
// recipients that would take the counter to want: it records a new ceiling
// in the ledger, then lets Redis count up to there. It reports false when
// Redis has lost the tenant's state meanwhile (the caller restores it).
//
// The new ceiling is a step above the count, or enough for every admission
// waiting on this ceiling in this process if that is more, never past the
// limit. The waiting admissions share one write (group commit): with one
// write per admission, dozens of partition handlers contending for a
// counter whose step is one recipient (a limit under 100) would each raise
// it by one in turn, and a handler could lose that race for as long as
// the limit lasts.
func (l *Limits) raiseCeiling(ctx context.Context, tenant, day, counter, ceilKey string, want, n, limit, ttl int64) (bool, error) {
	l.raiseMu.Lock()
	r := l.raises[ceilKey]
	if r == nil {
		r = &ceilingRaises{}
		l.raises[ceilKey] = r
	}
	if r.next == nil {
		r.next = &raiseBatch{done: make(chan struct{})}
	}
	b := r.next
	b.base = max(b.base, want-n)
	b.need += n
	for !b.started {
		if prev := r.inflight; prev != nil {
			// Wait for the write in flight; then one of those waiting
			// writes the batch.
			l.raiseMu.Unlock()
			select {
			case <-prev.done:
			case <-ctx.Done():
				return false, ctx.Err()
			}
			l.raiseMu.Lock()
			continue
		}
		b.started = true
		r.inflight, r.next = b, nil
		l.raiseMu.Unlock()
		b.ok, b.err = l.writeCeiling(ctx, tenant, day, counter, ceilKey, min(limit, b.base+max(l.step(limit), b.need)), ttl)
		l.raiseMu.Lock()
		r.inflight = nil
		if r.next == nil {
			delete(l.raises, ceilKey)
		}
		close(b.done)
	}
	l.raiseMu.Unlock()
	select {
	case <-b.done:
		return b.ok, b.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// writeCeiling appends the ceiling to the ledger and then raises it in
// Redis, in that order: Redis never lets a counter grow past what the
// ledger holds.
func (l *Limits) writeCeiling(ctx context.Context, tenant, day, counter, ceilKey string, value, ttl int64) (bool, error) {
	if err := l.ledger.Append(ctx, LedgerEntry{Space: l.prefix, Tenant: tenant, Day: day, Counter: counter, Value: value}); err != nil {
		return false, fmt.Errorf("record ceiling %d of %s of tenant %q in the ledger: %w", value, counter, tenant, err)
	}
	ok, err := raiseScript.Run(ctx, l.rdb, []string{l.restoredKey(tenant), ceilKey}, value, ttl).Bool()
	if err != nil {
		return false, fmt.Errorf("raise ceiling of %s of tenant %q to %d: %w", counter, tenant, value, err)
	}
	return ok, nil
}
