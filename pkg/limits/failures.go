package limits

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// failureScript counts one failure of a relay today.
//
//	KEYS[1] the relay's failure counter for today
//	KEYS[2] the tenant's restored marker
//	ARGV[1] seconds until the tenant's next midnight
//	ARGV[2] "1" when a ledger backs the counters
//
// Returns the consecutive failures including this one, or -1 (with a
// ledger) when the tenant's state must be restored first.
var failureScript = redis.NewScript(`
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
`)

// successScript resets a relay's consecutive failures unless it is disabled.
//
//	KEYS[1] the relay's failure counter for today
//	ARGV[1] the threshold that disables the relay
//
// Returns the count before the call.
var successScript = redis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 and n < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
end
return n
`)

// RecordFailure counts a failed send through a relay and returns the
// relay's consecutive failures today in loc. disabledNow is true for exactly
// one call among all replicas: the one whose failure reached the threshold,
// which should warn the tenant's administrators. The relay then stays
// disabled until the tenant's next midnight. With a ledger, a failure that
// leaves the relay disabled is recorded there before the call returns, so
// that the relay stays disabled when Redis loses its data.
func (l *Limits) RecordFailure(ctx context.Context, tenant, relayID string, loc *time.Location) (consecutive int, disabledNow bool, err error) {
	now := l.now()
	key, err := l.failureKey(tenant, relayID, now, loc)
	if err != nil {
		return 0, false, err
	}
	n := -1
	for restores := 0; n < 0; restores++ {
		if restores > 0 {
			if restores > maxRestores {
				return 0, false, fmt.Errorf("record failure of relay %q of tenant %q: %w", relayID, tenant, errLostAgain)
			}
			if err := l.restore(ctx, tenant, loc); err != nil {
				return 0, false, fmt.Errorf("record failure of relay %q: %w", relayID, err)
			}
		}
		n, err = failureScript.Run(ctx, l.rdb, []string{key, l.restoredKey(tenant)},
			ttlSeconds(NextMidnight(now, loc).Sub(now)), l.ledgerFlag()).Int()
		if err != nil {
			return 0, false, fmt.Errorf("record failure of relay %q of tenant %q: %w", relayID, tenant, err)
		}
	}
	if l.ledger != nil && n >= l.failureThreshold {
		// Every failure past the threshold appends again (they are few: a
		// disabled relay gets no new mail), so that a failed append is
		// made good by the next failure or by the sender's retry.
		e := LedgerEntry{Space: l.prefix, Tenant: tenant, Day: DayKey(now, loc), Counter: counterDisabledPrefix + relayID, Value: int64(n)}
		if err := l.ledger.Append(ctx, e); err != nil {
			return n, n == l.failureThreshold, fmt.Errorf("record in the ledger that relay %q of tenant %q is disabled: %w", relayID, tenant, err)
		}
	}
	return n, n == l.failureThreshold, nil
}

// RecordSuccess resets a relay's consecutive failures. A relay that is
// already disabled stays disabled until the next day: a success of a send
// that was in flight when it was disabled does not make it reliable again.
func (l *Limits) RecordSuccess(ctx context.Context, tenant, relayID string, loc *time.Location) error {
	key, err := l.failureKey(tenant, relayID, l.now(), loc)
	if err != nil {
		return err
	}
	if err := successScript.Run(ctx, l.rdb, []string{key}, l.failureThreshold).Err(); err != nil {
		return fmt.Errorf("record success of relay %q of tenant %q: %w", relayID, tenant, err)
	}
	return nil
}

// IsDisabled reports whether the relay has failed often enough today in loc
// to be left alone until the tenant's next midnight. With a ledger, a
// tenant whose state Redis lost is restored first.
func (l *Limits) IsDisabled(ctx context.Context, tenant, relayID string, loc *time.Location) (bool, error) {
	key, err := l.failureKey(tenant, relayID, l.now(), loc)
	if err != nil {
		return false, err
	}
	for restores := 0; ; restores++ {
		vals, err := l.rdb.MGet(ctx, l.restoredKey(tenant), key).Result()
		if err != nil {
			return false, fmt.Errorf("read failures of relay %q of tenant %q: %w", relayID, tenant, err)
		}
		if l.ledger != nil && vals[0] == nil {
			if restores == maxRestores {
				return false, fmt.Errorf("read failures of relay %q of tenant %q: %w", relayID, tenant, errLostAgain)
			}
			if err := l.restore(ctx, tenant, loc); err != nil {
				return false, fmt.Errorf("read failures of relay %q: %w", relayID, err)
			}
			continue
		}
		if vals[1] == nil {
			return false, nil
		}
		s, _ := vals[1].(string)
		n, err := strconv.Atoi(s)
		if err != nil {
			return false, fmt.Errorf("read failures of relay %q of tenant %q: counter holds %q", relayID, tenant, s)
		}
		return n >= l.failureThreshold, nil
	}
}

func (l *Limits) failureKey(tenant, relayID string, now time.Time, loc *time.Location) (string, error) {
	if err := validTenant(tenant); err != nil {
		return "", err
	}
	if relayID == "" {
		return "", fmt.Errorf("%w: relay failures: no relay id", ErrInvalid)
	}
	return l.failKey(tenant, relayID, DayKey(now, loc)), nil
}
