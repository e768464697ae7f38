// Package complaints is the complaint guardrail's one rule and its
// counters. Mailbox providers watch the share of a sender's mail that its
// recipients mark as spam (Gmail asks bulk senders to stay under 0.3%), and
// one tenant over it harms the reputation of the addresses and domains that
// every tenant shares. So mailbus counts, per tenant and per calendar day in
// the tenant's time zone (the same day as the daily limits, pkg/limits):
//
//   - complaints: the ARF reports the bounce stage attributes to the
//     tenant, each counted once however often the report arrives (it is a
//     member of a set keyed by message and recipient, not an increment);
//   - delivered mass mail: the recipients of mass mail a relay or MX
//     accepted, counted by the sender when it records the attempt as made,
//     so a redelivered record that the sender skips is not counted again.
//
// Policy.Over decides from those two numbers whether the tenant's mass mail
// is paused for the rest of the day; the quota stage asks it before it
// passes on a tenant's mass mail, and defers what it holds back to the
// tenant's next midnight. Transactional, individual, workflow and system
// mail is never paused: a password reset must not wait for a newsletter's
// complaints.
//
// Complaints are counted on the day they arrive, whatever day the mail
// they are about left: providers send their reports within hours, and a
// day is what the tenant's limits and the pause are measured in. All of a
// tenant's complaints count, whatever kind of mail they are about (the
// bounce stage does not know the kind, and the providers count them all
// too); only mass mail is in the denominator because it is what a pause
// can hold back. Counters live in Redis only: when Redis loses them the
// day starts again from zero, which errs towards sending, the right way
// for a guardrail whose other side is mail not sent.
package complaints

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/limits"
)

// DefaultLimit is the complaint rate above which a tenant's mass mail is
// paused: Gmail's published ceiling for bulk senders.
const DefaultLimit = 0.003

// DefaultMinVolume is the smallest day's volume of delivered mass mail the
// rate is taken over; see Policy.MinVolume.
const DefaultMinVolume = 1000

// Reason is the reason of the deferred events of paused mass mail and the
// NoticeKey value of the administrators' warning.
const Reason = "complaint_rate"

// retention keeps a day's counters two days after the day ends, as
// pkg/limits keeps its counters, so that yesterday's figures can still be
// read in the morning.
const retention = 48 * time.Hour

// Policy is the rule: when a tenant's complaints of a day are too many
// for the mass mail it delivered that day.
type Policy struct {
	// Limit is the highest complaint rate allowed (complaints per
	// delivered mass recipient, 0.003 = 0.3%); 0 means DefaultLimit.
	Limit float64
	// MinVolume is the smallest denominator the rate is taken over; 0
	// means DefaultMinVolume. A rate over a handful of messages says
	// nothing (one complaint on the first ten messages of a new tenant is
	// 10%), and Gmail's own figures only appear above a daily volume. So
	// a tenant that delivered fewer than MinVolume mass recipients today
	// is measured as if it had delivered MinVolume: with the defaults it
	// is paused at its fourth complaint of the day (4/1000 > 0.3%), and
	// at a volume above 1,000 the plain rate applies. Complaints that
	// arrive on a day with no mass mail yet (about yesterday's campaign)
	// are measured the same way.
	MinVolume int64
	// Off disables the guardrail.
	Off bool
}

func (p Policy) limit() float64 {
	if p.Limit <= 0 {
		return DefaultLimit
	}
	return p.Limit
}

func (p Policy) minVolume() int64 {
	if p.MinVolume <= 0 {
		return DefaultMinVolume
	}
	return p.MinVolume
}

// Over reports whether s is over the policy's limit: the tenant's mass mail
// is then paused for the rest of s's day.
func (p Policy) Over(s Stats) bool {
	if p.Off || s.Complaints == 0 {
		return false
	}
	return float64(s.Complaints)/float64(max(s.Delivered, p.minVolume())) > p.limit()
}

// Describe says in words why s is over (or under) the limit, for the
// deferred events and the administrators' notice.
func (p Policy) Describe(tenant string, s Stats) string {
	msg := fmt.Sprintf("tenant %s's complaint rate on %s is %s (%s complaints / %s delivered mass messages), over the %s limit",
		tenant, s.Day, Percent(s.Rate()), thousands(s.Complaints), thousands(s.Delivered), Percent(p.limit()))
	if s.Delivered < p.minVolume() {
		msg += fmt.Sprintf(" (taken over at least %s messages: %s complaints / %s)", thousands(p.minVolume()),
			thousands(s.Complaints), thousands(p.minVolume()))
	}
	return msg
}

// PolicyFromEnv reads MAILBUS_COMPLAINT_RATE_LIMIT (a fraction such as
// 0.003, a percentage such as 0.3%, or "off") and
// MAILBUS_COMPLAINT_MIN_VOLUME (a number of delivered mass recipients)
// with getenv; unset ones keep the defaults.
func PolicyFromEnv(getenv func(string) string) (Policy, error) {
	var p Policy
	if s := strings.TrimSpace(getenv("MAILBUS_COMPLAINT_RATE_LIMIT")); s != "" {
		switch {
		case strings.EqualFold(s, "off"):
			p.Off = true
		default:
			pct := strings.HasSuffix(s, "%")
			f, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
			if pct {
				f /= 100
			}
			if err != nil || f <= 0 || f >= 1 {
				return Policy{}, fmt.Errorf("MAILBUS_COMPLAINT_RATE_LIMIT: want a rate such as 0.003 or 0.3%%, or off; got %q", s)
			}
			p.Limit = f
		}
	}
	if s := strings.TrimSpace(getenv("MAILBUS_COMPLAINT_MIN_VOLUME")); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return Policy{}, fmt.Errorf("MAILBUS_COMPLAINT_MIN_VOLUME: want a positive number of messages, got %q", s)
		}
		p.MinVolume = n
	}
	return p, nil
}

// Stats are a tenant's counters of one day.
type Stats struct {
	// Day is the calendar day in the tenant's zone (YYYY-MM-DD).
	Day        string
	Complaints int64
	Delivered  int64
}

// Rate is complaints per delivered mass recipient, 0 with nothing
// delivered and no complaint; with complaints and nothing delivered it is
// complaints/1, which says "over" plainly.
func (s Stats) Rate() float64 {
	if s.Complaints == 0 {
		return 0
	}
	return float64(s.Complaints) / float64(max(s.Delivered, 1))
}

// Every key carries the tenant as its hash tag, as the pipeline's other
// per-tenant keys do, so that the sender can count delivered mail in the
// same transaction as its already-sent mark, and a cluster keeps a
// tenant's keys on one slot.
func tenantKey(tenant string) string { return "mb:complaints:{" + tenant + "}" }

// ComplaintsKey is the set of the complaints of tenant on day.
func ComplaintsKey(tenant, day string) string { return tenantKey(tenant) + ":reports:" + day }

// DeliveredKey counts the mass recipients tenant delivered on day.
func DeliveredKey(tenant, day string) string { return tenantKey(tenant) + ":delivered:" + day }

// WarnedKey marks that tenant's administrators were warned on day.
func WarnedKey(tenant, day string) string { return tenantKey(tenant) + ":warned:" + day }

// ttl is how long a key of the day at falls on in loc lives.
func ttl(at time.Time, loc *time.Location) time.Duration {
	return max(time.Second, limits.NextMidnight(at, loc).Add(retention).Sub(at))
}

// AddComplaint counts a complaint of tenant received at at. id names what
// was complained about (the message and the recipient): a report received
// again, or the same recipient's second complaint about the same message,
// counts once. It reports whether the complaint is new.
func AddComplaint(ctx context.Context, rdb redis.UniversalClient, tenant string, loc *time.Location, id string, at time.Time) (bool, error) {
	if tenant == "" || id == "" {
		return false, errors.New("count a complaint: tenant and id are required")
	}
	key := ComplaintsKey(tenant, limits.DayKey(at, loc))
	var added *redis.IntCmd
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		added = p.SAdd(ctx, key, id)
		p.Expire(ctx, key, ttl(at, loc))
		return nil
	}); err != nil {
		return false, fmt.Errorf("count a complaint of tenant %s: %w", tenant, err)
	}
	return added.Val() == 1, nil
}

// CountDelivered queues on p the counting of n mass recipients delivered
// by tenant at at, so that a caller can make it part of the transaction
// that records the attempt as made.
func CountDelivered(ctx context.Context, p redis.Pipeliner, tenant string, loc *time.Location, n int, at time.Time) {
	key := DeliveredKey(tenant, limits.DayKey(at, loc))
	p.IncrBy(ctx, key, int64(n))
	p.Expire(ctx, key, ttl(at, loc))
}

// Today reads tenant's counters of the day at falls on in loc, in one
// round trip.
func Today(ctx context.Context, rdb redis.UniversalClient, tenant string, loc *time.Location, at time.Time) (Stats, error) {
	s := Stats{Day: limits.DayKey(at, loc)}
	var reports *redis.IntCmd
	var delivered *redis.StringCmd
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		reports = p.SCard(ctx, ComplaintsKey(tenant, s.Day))
		delivered = p.Get(ctx, DeliveredKey(tenant, s.Day))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return Stats{}, fmt.Errorf("read the complaint counters of tenant %s: %w", tenant, err)
	}
	s.Complaints = reports.Val()
	if v, err := delivered.Int64(); err == nil {
		s.Delivered = v
	} else if !errors.Is(err, redis.Nil) {
		return Stats{}, fmt.Errorf("read the delivered mass mail of tenant %s: %w", tenant, err)
	}
	return s, nil
}

// Warned reports whether tenant's administrators were already warned on
// day.
func Warned(ctx context.Context, rdb redis.UniversalClient, tenant, day string) (bool, error) {
	n, err := rdb.Exists(ctx, WarnedKey(tenant, day)).Result()
	if err != nil {
		return false, fmt.Errorf("check whether tenant %s was warned of its complaint rate: %w", tenant, err)
	}
	return n > 0, nil
}

// MarkWarned records that tenant's administrators were warned on the day
// at falls on in loc.
func MarkWarned(ctx context.Context, rdb redis.UniversalClient, tenant string, loc *time.Location, at time.Time) error {
	if err := rdb.Set(ctx, WarnedKey(tenant, limits.DayKey(at, loc)), "1", ttl(at, loc)).Err(); err != nil {
		return fmt.Errorf("record that tenant %s was warned of its complaint rate: %w", tenant, err)
	}
	return nil
}

// NoticeIdempotencyID is the idempotency id of the warning to tenant's
// administrators on day: the router derives the notice's message and
// delivery ids from it, so however many quota replicas send it, and however
// often, it is one message, sent once.
func NoticeIdempotencyID(tenant, day string) string {
	return "complaint-rate/" + tenant + "/" + day
}

// Percent formats a rate as a percentage with two decimals (0.0042 →
// "0.42%").
func Percent(r float64) string {
	return strconv.FormatFloat(r*100, 'f', 2, 64) + "%"
}

// thousands formats n with commas between groups of three digits.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
