package limits

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/go-redis/redis_rate/v10"
)

// RateResult is the answer of AllowRate.
type RateResult struct {
	// Allowed is true when the message may be sent now; it has then been
	// counted against the relay's rate.
	Allowed bool
	// RetryAfter is, when not Allowed, how long to wait before the next
	// message can be allowed. Nothing was counted.
	RetryAfter time.Duration
	// Remaining is how many more messages would be allowed right now.
	Remaining int
}

// AllowRate counts one message against a relay's rate of perSecond messages
// per second with bursts of up to burst messages, shared by every replica.
// perSecond <= 0 means unlimited; burst <= 0 means one second's worth (at
// least 1). It never waits: a refused message gets a RetryAfter so that the
// caller can delay it (for example on a retry topic) instead of holding its
// partition.
//
// It uses redis_rate's GCRA script, which reads the Redis server's TIME, so
// WithClock does not affect it.
func (l *Limits) AllowRate(ctx context.Context, tenant, relayID string, perSecond float64, burst int) (RateResult, error) {
	if err := validTenant(tenant); err != nil {
		return RateResult{}, err
	}
	if relayID == "" {
		return RateResult{}, fmt.Errorf("%w: rate limit: no relay id", ErrInvalid)
	}
	if math.IsNaN(perSecond) || math.IsInf(perSecond, 0) {
		return RateResult{}, fmt.Errorf("%w: rate limit of relay %q: rate %v", ErrInvalid, relayID, perSecond)
	}
	if perSecond <= 0 {
		return RateResult{Allowed: true, Remaining: math.MaxInt}, nil
	}
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	res, err := l.rate.Allow(ctx, l.rateKey(tenant, relayID), rateLimit(perSecond, burst))
	if err != nil {
		return RateResult{}, fmt.Errorf("rate limit relay %q of tenant %q: %w", relayID, tenant, err)
	}
	out := RateResult{Allowed: res.Allowed > 0, Remaining: res.Remaining}
	if !out.Allowed {
		out.RetryAfter = max(res.RetryAfter, 0)
	}
	return out, nil
}

// rateLimit turns a per-second rate into redis_rate's integer count per
// period: one message per emission interval keeps fractional rates such as
// 0.5/s (one per 2s) exact.
func rateLimit(perSecond float64, burst int) redis_rate.Limit {
	period := time.Duration(float64(time.Second) / perSecond)
	// The script divides by the period; a rate beyond a million per second is
	// unlimited in practice.
	period = max(period, time.Microsecond)
	return redis_rate.Limit{Rate: 1, Period: period, Burst: burst}
}
