package limits

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// DayState is what a tenant has counted today, and each of its relays.
type DayState struct {
	// Day is today in the tenant's zone (see DayKey).
	Day string
	// Tenant counts the tenant's recipients over every route.
	Tenant int64
	// Relays are in the order they were asked for.
	Relays []RelayState
}

// RelayState is one relay's day so far.
type RelayState struct {
	ID string
	// Used counts the recipients admitted through the relay.
	Used int64
	// Failures are the relay's consecutive failures; at the failure
	// threshold it is Disabled until the tenant's next midnight.
	Failures int
	Disabled bool
}

// DayState reads the tenant's counters and the given relays' counters and
// failures for today in loc, in one round trip (the keys share the
// tenant's slot). It is for metrics and reports; it changes nothing.
func (l *Limits) DayState(ctx context.Context, tenant string, relayIDs []string, loc *time.Location) (DayState, error) {
	if err := validTenant(tenant); err != nil {
		return DayState{}, err
	}
	st := DayState{Day: DayKey(l.now(), loc), Relays: make([]RelayState, len(relayIDs))}
	keys := make([]string, 0, 1+2*len(relayIDs))
	keys = append(keys, l.tenantDayKey(tenant, st.Day))
	for _, id := range relayIDs {
		keys = append(keys, l.relayDayKey(tenant, id, st.Day), l.failKey(tenant, id, st.Day))
	}
	vals, err := l.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return DayState{}, fmt.Errorf("read today's counters of tenant %q: %w", tenant, err)
	}
	n := make([]int64, len(vals))
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, _ := v.(string)
		if n[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return DayState{}, fmt.Errorf("read today's counters of tenant %q: %s holds %q", tenant, keys[i], s)
		}
	}
	st.Tenant = n[0]
	for i, id := range relayIDs {
		fails := int(n[2+2*i])
		st.Relays[i] = RelayState{ID: id, Used: n[1+2*i], Failures: fails, Disabled: fails >= l.failureThreshold}
	}
	return st, nil
}
