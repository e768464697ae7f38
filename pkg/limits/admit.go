package limits

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Decision is the outcome of admitting a delivery.
type Decision int

// The values match the codes the admit script stores in markers; do not
// renumber them while markers written by another version may be alive.
const (
	// Admitted means the delivery was counted and may be sent on its route.
	Admitted Decision = 1
	// RelayExhausted means the relay's daily limit would be passed; nothing
	// was counted, and the delivery should go back to the router through
	// mail.fallback.
	RelayExhausted Decision = 2
	// TenantExhausted means the tenant's daily limit would be passed; nothing
	// was counted, and the tenant's over-limit policy applies.
	TenantExhausted Decision = 3
)

// String returns the decision's name for logs and metrics labels.
func (d Decision) String() string {
	switch d {
	case Admitted:
		return "admitted"
	case RelayExhausted:
		return "relay_exhausted"
	case TenantExhausted:
		return "tenant_exhausted"
	default:
		return "decision(" + strconv.Itoa(int(d)) + ")"
	}
}

// Request is one delivery to admit.
type Request struct {
	Tenant     string
	DeliveryID string
	// RelayID is the relay the router chose; Admit needs it and AdmitDefault
	// refuses it.
	RelayID string
	// Recipients is the delivery's number of envelope recipients, what daily
	// limits count.
	Recipients int
	// RelayLimit is the relay's daily limit in recipients; 0 = unlimited.
	RelayLimit int64
	// TenantLimit is the tenant's daily limit in recipients; 0 = unlimited.
	TenantLimit int64
	// Zone is the tenant's time zone (nil = UTC); days begin at its midnight.
	Zone *time.Location
}

// Result is the answer to Admit and AdmitDefault.
type Result struct {
	Decision Decision
	// Day is the quota day the decision was made on, in the tenant's zone
	// (Delivery.quota_day). A replayed decision keeps its original day.
	Day string
	// RelayCount is the relay's count for Day after an admission, or the
	// count that refused the delivery; 0 on the default route.
	RelayCount int64
	// TenantCount is the tenant's count for Day, likewise.
	TenantCount int64
	// Replayed is true when the delivery had already been decided on this
	// route and the first decision was returned without counting again.
	Replayed bool
}

// Usage is what has been counted on one day.
type Usage struct {
	Day    string
	Relay  int64
	Tenant int64
}

// maxChargeMoves bounds how often Admit and Refund re-run their script
// because the delivery's charge changed between two calls; that needs
// several replicas handling the same delivery at once, so more than a few
// rounds means something is wrong.
const maxChargeMoves = 5

// maxRestores bounds the restores of one call: Redis losing the tenant's
// state again right after each restore means it is not keeping data at all.
const maxRestores = 3

// maxCeilingRaises bounds the ceilings one admission raises, as a guard.
// Every raise moves the ceiling up towards the limit, where raises end, and
// this process's waiting admissions share each raise; so an admission asks
// again only when admissions in other processes took the room first, and
// that cannot go on for more than the limit's worth of raises.
const maxCeilingRaises = 1000

var (
	errLostAgain         = errors.New("the tenant's quota state was lost again right after restoring it")
	errCeilingContention = errors.New("other admissions used up every ceiling this one raised")
)

// scriptRelease is shared by the admit and refund scripts.
const scriptRelease = `
-- release takes n back from a counter, never below zero: a counter that has
-- already expired stays gone rather than turning negative.
local function release(key, n)
  local have = tonumber(redis.call('GET', key))
  if have and have > 0 then
    redis.call('DECRBY', key, math.min(have, n))
  end
end

-- charged returns the recipients held by a charge "day|n|route".
local function charged(charge)
  return tonumber(string.match(charge, '^[^|]*|(%d+)|'))
end
`

// admitScript decides and counts one delivery on one route.
//
//	KEYS[1] marker hash
//	KEYS[2] relay day counter (the same key as KEYS[3] on the default route)
//	KEYS[3] tenant day counter
//	KEYS[4] relay counter of the charge to release (= KEYS[5] for a default-route charge)
//	KEYS[5] tenant counter of the charge to release
//	KEYS[6] the tenant's restored marker
//	KEYS[7] relay day ceiling, KEYS[8] tenant day ceiling
//	ARGV[1] route, ARGV[2] recipients, ARGV[3] relay limit, ARGV[4] tenant limit,
//	ARGV[5] day, ARGV[6] time to live of the day's keys (seconds),
//	ARGV[7] the charge that KEYS[4] and KEYS[5] were computed for ("" if none),
//	ARGV[8] "1" when a ledger backs the counters
//
// Returns {1, record} for a replayed decision, {2, record} for a new one,
// where record is "decision|relay count|tenant count|day", or {0, charge}
// when the delivery holds a charge on another route whose keys were not
// declared: the caller repeats the call with them. With a ledger it also
// returns {3, ""} when the tenant's state must be restored first, and
// {4, "relay|n"} or {4, "tenant|n"} when an admission that fits the limit
// would take the counter to n, past its ceiling. Neither changes anything.
var admitScript = redis.NewScript(scriptRelease + `
local ledger = ARGV[8] == '1'
if ledger and redis.call('EXISTS', KEYS[6]) == 0 then
  return {3, ''}
end

local field = 'd:' .. ARGV[1]
local decided = redis.call('HGET', KEYS[1], field)
if decided then
  return {1, decided}
end

local charge = redis.call('HGET', KEYS[1], 'charge')
local held = 0
if charge then
  if charge ~= ARGV[7] then
    return {0, charge}
  end
  held = charged(charge)
end

-- count reads a counter as it is once the held charge is released, which
-- happens below only when the script does not return early.
local function count(key)
  local have = tonumber(redis.call('GET', key) or '0')
  if held > 0 and (key == KEYS[4] or key == KEYS[5]) then
    have = have - math.min(have, held)
  end
  return have
end

local n = tonumber(ARGV[2])
local relayLimit = tonumber(ARGV[3])
local tenantLimit = tonumber(ARGV[4])
local onRelay = KEYS[2] ~= KEYS[3]
local rc = 0
if onRelay then
  rc = count(KEYS[2])
end
local tc = count(KEYS[3])

local decision
if onRelay and relayLimit > 0 and rc + n > relayLimit then
  decision = 2
elseif tenantLimit > 0 and tc + n > tenantLimit then
  decision = 3
else
  decision = 1
end

-- A limited counter grows only as far as the ledger already holds.
if ledger and decision == 1 then
  if onRelay and relayLimit > 0 and rc + n > tonumber(redis.call('GET', KEYS[7]) or '0') then
    return {4, 'relay|' .. (rc + n)}
  end
  if tenantLimit > 0 and tc + n > tonumber(redis.call('GET', KEYS[8]) or '0') then
    return {4, 'tenant|' .. (tc + n)}
  end
end

if charge then
  release(KEYS[4], held)
  if KEYS[5] ~= KEYS[4] then
    release(KEYS[5], held)
  end
  redis.call('HDEL', KEYS[1], 'charge')
end

if decision == 1 then
  if onRelay then
    rc = redis.call('INCRBY', KEYS[2], n)
    redis.call('EXPIRE', KEYS[2], ARGV[6])
  end
  tc = redis.call('INCRBY', KEYS[3], n)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('HSET', KEYS[1], 'charge', ARGV[5] .. '|' .. n .. '|' .. ARGV[1])
end

local record = decision .. '|' .. rc .. '|' .. tc .. '|' .. ARGV[5]
redis.call('HSET', KEYS[1], field, record)
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {2, record}
`)

// refundScript releases a delivery's charge.
//
//	KEYS[1] marker hash
//	KEYS[2] relay counter of the charge (= KEYS[3] for a default-route charge)
//	KEYS[3] tenant counter of the charge
//	ARGV[1] the charge that KEYS[2] and KEYS[3] were computed for ("" if unknown)
//
// Returns {1, ""} when nothing is held, {2, charge} after releasing it, or
// {0, charge} when the keys were not declared.
var refundScript = redis.NewScript(scriptRelease + `
local charge = redis.call('HGET', KEYS[1], 'charge')
if not charge then
  return {1, ''}
end
if charge ~= ARGV[1] then
  return {0, charge}
end
local held = charged(charge)
release(KEYS[2], held)
if KEYS[3] ~= KEYS[2] then
  release(KEYS[3], held)
end
local route = string.match(charge, '^[^|]*|%d+|(.*)$')
redis.call('HDEL', KEYS[1], 'charge', 'd:' .. route)
return {2, charge}
`)

// Routes as stored in markers.
const (
	routeDefault     = "default"
	routeRelayPrefix = "relay:"
)

// Admit decides whether a delivery may be sent through req.RelayID today and
// counts it when it may. See the package comment for the rules.
func (l *Limits) Admit(ctx context.Context, req Request) (Result, error) {
	if req.RelayID == "" {
		return Result{}, fmt.Errorf("%w: admit delivery %q: no relay id (use AdmitDefault for the default server)", ErrInvalid, req.DeliveryID)
	}
	return l.admit(ctx, req, routeRelayPrefix+req.RelayID)
}

// AdmitDefault decides whether a delivery may be sent through the default
// server today: only the tenant's limit applies.
func (l *Limits) AdmitDefault(ctx context.Context, req Request) (Result, error) {
	if req.RelayID != "" || req.RelayLimit != 0 {
		return Result{}, fmt.Errorf("%w: admit delivery %q on the default server: relay %q and relay limit %d given", ErrInvalid, req.DeliveryID, req.RelayID, req.RelayLimit)
	}
	return l.admit(ctx, req, routeDefault)
}

func (l *Limits) admit(ctx context.Context, req Request, route string) (Result, error) {
	if err := validTenant(req.Tenant); err != nil {
		return Result{}, err
	}
	switch {
	case req.DeliveryID == "":
		return Result{}, fmt.Errorf("%w: admit: no delivery id", ErrInvalid)
	case req.Recipients <= 0:
		return Result{}, fmt.Errorf("%w: admit delivery %q: %d recipients", ErrInvalid, req.DeliveryID, req.Recipients)
	case req.RelayLimit < 0 || req.TenantLimit < 0:
		return Result{}, fmt.Errorf("%w: admit delivery %q: negative limit (relay %d, tenant %d)", ErrInvalid, req.DeliveryID, req.RelayLimit, req.TenantLimit)
	}

	now := l.now()
	day := DayKey(now, req.Zone)
	ttl := l.keyTTL(now, req.Zone)
	tenantKey := l.tenantDayKey(req.Tenant, day)
	relayKey := tenantKey
	relayCeil := l.tenantCeilKey(req.Tenant, day)
	if route != routeDefault {
		relayKey = l.relayDayKey(req.Tenant, req.RelayID, day)
		relayCeil = l.relayCeilKey(req.Tenant, req.RelayID, day)
	}
	keys := []string{
		l.seenKey(req.Tenant, req.DeliveryID), relayKey, tenantKey, tenantKey, tenantKey,
		l.restoredKey(req.Tenant), relayCeil, l.tenantCeilKey(req.Tenant, day),
	}
	declared := ""
	var moves, restores, raises int
	for {
		v, err := admitScript.Run(ctx, l.rdb, keys,
			route, req.Recipients, req.RelayLimit, req.TenantLimit, day, ttl, declared, l.ledgerFlag(),
		).Slice()
		if err != nil {
			return Result{}, fmt.Errorf("admit delivery %q of tenant %q on %s: %w", req.DeliveryID, req.Tenant, route, err)
		}
		status, text, err := scriptReply(v)
		if err != nil {
			return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, err)
		}
		switch status {
		case 0:
			// The delivery is counted on another route; declare that
			// charge's keys and ask again.
			if moves++; moves > maxChargeMoves {
				return Result{}, fmt.Errorf("admit delivery %q: its charge changed %d times while admitting", req.DeliveryID, maxChargeMoves)
			}
			if keys[3], keys[4], err = l.chargeKeys(req.Tenant, text); err != nil {
				return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, err)
			}
			declared = text
			continue
		case statusRestore:
			if restores++; restores > maxRestores {
				return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, errLostAgain)
			}
			if err := l.restore(ctx, req.Tenant, req.Zone); err != nil {
				return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, err)
			}
			continue
		case statusCeiling:
			if raises++; raises > maxCeilingRaises {
				return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, errCeilingContention)
			}
			counter, ceilKey, limit := counterTenant, l.tenantCeilKey(req.Tenant, day), req.TenantLimit
			which, n, _ := strings.Cut(text, "|")
			if which == "relay" {
				counter, ceilKey, limit = counterRelayPrefix+req.RelayID, relayCeil, req.RelayLimit
			}
			want, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				return Result{}, fmt.Errorf("admit delivery %q: script asked for ceiling %q", req.DeliveryID, text)
			}
			// A false answer means Redis lost the tenant's state since:
			// the next round restores it.
			if _, err := l.raiseCeiling(ctx, req.Tenant, day, counter, ceilKey, want, int64(req.Recipients), limit, ttl); err != nil {
				return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, err)
			}
			continue
		}
		res, err := parseRecord(text)
		if err != nil {
			return Result{}, fmt.Errorf("admit delivery %q: %w", req.DeliveryID, err)
		}
		res.Replayed = status == 1
		return res, nil
	}
}

// Refund releases what the delivery is counted for, for a delivery that will
// not be sent on the route it was admitted on (for example, sent back to
// mail.fallback after its relay failed before sending). It reports whether
// anything was released; refunding again, or refunding a delivery that was
// never admitted, releases nothing.
func (l *Limits) Refund(ctx context.Context, tenant, deliveryID string) (bool, error) {
	if err := validTenant(tenant); err != nil {
		return false, err
	}
	if deliveryID == "" {
		return false, fmt.Errorf("%w: refund: no delivery id", ErrInvalid)
	}
	seen := l.seenKey(tenant, deliveryID)
	// The marker key stands in for the counters until the script says which
	// charge is held: it is in the same slot and is never decremented.
	keys := []string{seen, seen, seen}
	declared := ""
	for range maxChargeMoves {
		v, err := refundScript.Run(ctx, l.rdb, keys, declared).Slice()
		if err != nil {
			return false, fmt.Errorf("refund delivery %q of tenant %q: %w", deliveryID, tenant, err)
		}
		status, text, err := scriptReply(v)
		if err != nil {
			return false, fmt.Errorf("refund delivery %q: %w", deliveryID, err)
		}
		switch status {
		case 1:
			return false, nil
		case 2:
			return true, nil
		}
		if keys[1], keys[2], err = l.chargeKeys(tenant, text); err != nil {
			return false, fmt.Errorf("refund delivery %q: %w", deliveryID, err)
		}
		declared = text
	}
	return false, fmt.Errorf("refund delivery %q: its charge changed %d times while refunding", deliveryID, maxChargeMoves)
}

// Usage returns what has been counted today in loc for the tenant and, when
// relayID is not empty, for the relay. With a ledger, a tenant whose state
// Redis lost is restored first.
func (l *Limits) Usage(ctx context.Context, tenant, relayID string, loc *time.Location) (Usage, error) {
	if err := validTenant(tenant); err != nil {
		return Usage{}, err
	}
	u := Usage{Day: DayKey(l.now(), loc)}
	keys := []string{l.restoredKey(tenant), l.tenantDayKey(tenant, u.Day)}
	if relayID != "" {
		keys = append(keys, l.relayDayKey(tenant, relayID, u.Day))
	}
	for restores := 0; ; restores++ {
		// MGET of keys in one slot is Cluster safe, and atomic: the marker
		// and the counters are read at one instant.
		vals, err := l.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return Usage{}, fmt.Errorf("read usage of tenant %q: %w", tenant, err)
		}
		if l.ledger != nil && vals[0] == nil {
			if restores == maxRestores {
				return Usage{}, fmt.Errorf("read usage of tenant %q: %w", tenant, errLostAgain)
			}
			if err := l.restore(ctx, tenant, loc); err != nil {
				return Usage{}, fmt.Errorf("read usage of tenant %q: %w", tenant, err)
			}
			continue
		}
		counts := make([]int64, len(vals))
		for i, v := range vals[1:] {
			if v == nil {
				continue
			}
			s, _ := v.(string)
			if counts[i], err = strconv.ParseInt(s, 10, 64); err != nil {
				return Usage{}, fmt.Errorf("read usage of tenant %q: counter %s holds %q", tenant, keys[i+1], s)
			}
		}
		u.Tenant = counts[0]
		if relayID != "" {
			u.Relay = counts[1]
		}
		return u, nil
	}
}

// chargeKeys returns the relay and tenant counters of a stored charge
// "day|n|route".
func (l *Limits) chargeKeys(tenant, charge string) (relayKey, tenantKey string, err error) {
	day, rest, ok1 := strings.Cut(charge, "|")
	_, route, ok2 := strings.Cut(rest, "|")
	if !ok1 || !ok2 {
		return "", "", fmt.Errorf("malformed charge %q in marker", charge)
	}
	tenantKey = l.tenantDayKey(tenant, day)
	if route == routeDefault {
		return tenantKey, tenantKey, nil
	}
	relayID, ok := strings.CutPrefix(route, routeRelayPrefix)
	if !ok {
		return "", "", fmt.Errorf("unknown route %q in charge %q", route, charge)
	}
	return l.relayDayKey(tenant, relayID, day), tenantKey, nil
}

// scriptReply splits a {status, text} reply.
func scriptReply(v []any) (int64, string, error) {
	if len(v) != 2 {
		return 0, "", fmt.Errorf("script replied %v", v)
	}
	status, ok1 := v[0].(int64)
	text, ok2 := v[1].(string)
	if !ok1 || !ok2 {
		return 0, "", fmt.Errorf("script replied %#v", v)
	}
	return status, text, nil
}

// parseRecord reads a marker record "decision|relay count|tenant count|day".
func parseRecord(s string) (Result, error) {
	parts := strings.Split(s, "|")
	if len(parts) != 4 {
		return Result{}, fmt.Errorf("malformed decision record %q", s)
	}
	var nums [3]int64
	for i := range nums {
		n, err := strconv.ParseInt(parts[i], 10, 64)
		if err != nil {
			return Result{}, fmt.Errorf("malformed decision record %q: %w", s, err)
		}
		nums[i] = n
	}
	d := Decision(nums[0])
	if d < Admitted || d > TenantExhausted {
		return Result{}, fmt.Errorf("unknown decision in record %q", s)
	}
	return Result{Decision: d, RelayCount: nums[1], TenantCount: nums[2], Day: parts[3]}, nil
}

// validTenant refuses tenant ids that would break the {tenant} hash tag.
func validTenant(tenant string) error {
	if tenant == "" {
		return fmt.Errorf("%w: no tenant id", ErrInvalid)
	}
	if strings.ContainsAny(tenant, "{}") {
		return fmt.Errorf("%w: tenant id %q contains a brace, which would break the Redis Cluster hash tag", ErrInvalid, tenant)
	}
	return nil
}
