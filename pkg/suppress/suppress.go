// Package suppress keeps each tenant's suppression list in Redis: the
// addresses that mailbus must not send to any more (hard bounces,
// complaints, soft bounces over the tenant's threshold, and entries an
// administrator added).
//
// The router checks every submission against the list, so a lookup is one
// HMGET on one hash per tenant, mb:supp:{tenant}, whose fields are the
// lower-cased addresses and whose values are the entry as JSON. Soft
// bounces are counted per address in a sorted set,
// mb:soft:{tenant}:<address>, scored by time and keyed by the delivery that
// bounced, so that the same bounce reported twice counts once and bounces
// older than the tenant's window fall out. Both keys carry the tenant id as
// the Redis Cluster hash tag.
package suppress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix starts every key this package writes.
const DefaultKeyPrefix = "mb:"

// Defaults of the soft-bounce rule when the tenant leaves them at 0.
const (
	DefaultSoftBounceThreshold  = 3
	DefaultSoftBounceWindowDays = 7
)

// Sources say how an address came onto the list.
const (
	SourceBounce    = "bounce"     // a hard bounce
	SourceComplaint = "complaint"  // a feedback (ARF) report
	SourceSoft      = "softbounce" // too many soft bounces in the window
	SourceAPI       = "api"        // added through SuppressionService
	// SourceUnsubscribe is a recipient who unsubscribed (RFC 8058
	// one-click, the confirmation page, or the mailto: link). It
	// suppresses mass mail only (ScopeMass): a password reset to the same
	// address still goes out.
	SourceUnsubscribe = "unsubscribe"
)

// ScopeMass limits an entry to mass mail; the empty scope is all mail.
const ScopeMass = "mass"

// Entry is one suppressed address.
type Entry struct {
	// Address is the lower-cased address.
	Address string `json:"-"`
	// Reason is why, for example userunknown, feedback, manual.
	Reason string `json:"reason"`
	// Source is one of the Source constants.
	Source string `json:"source"`
	// Detail is what a person should read (the diagnostic, who added it).
	Detail string `json:"detail,omitempty"`
	// Time is when the address was suppressed.
	Time time.Time `json:"time"`
	// Scope is ScopeMass for an entry that suppresses mass mail only;
	// empty for all mail.
	Scope string `json:"scope,omitempty"`
}

// Store is the suppression list of every tenant. It is safe for
// concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	now    func() time.Time
}

// Option changes a default of New.
type Option func(*Store)

// WithKeyPrefix replaces DefaultKeyPrefix (tests, shared servers). It must
// not contain braces, because the hash tag must be the tenant id.
func WithKeyPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithClock sets the clock that stamps entries and ages soft bounces.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// New returns a Store on rdb (a single server, failover or cluster client).
func New(rdb redis.UniversalClient, opts ...Option) *Store {
	s := &Store{rdb: rdb, prefix: DefaultKeyPrefix, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Normalize is the form in which addresses are stored and looked up:
// trimmed and lower-cased whole, as the tracker stores recipients.
func Normalize(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }

func (s *Store) listKey(tenantID string) string { return s.prefix + "supp:{" + tenantID + "}" }

func (s *Store) softKey(tenantID, addr string) string {
	return s.prefix + "soft:{" + tenantID + "}:" + addr
}

// ErrInvalid is wrapped by errors about arguments that can never work.
var ErrInvalid = errors.New("suppress: invalid argument")

func check(tenantID, addr string) error {
	if tenantID == "" {
		return fmt.Errorf("%w: empty tenant id", ErrInvalid)
	}
	if strings.ContainsAny(tenantID, "{}") {
		return fmt.Errorf("%w: tenant id %q contains a brace", ErrInvalid, tenantID)
	}
	if addr != "" && !strings.Contains(addr, "@") {
		return fmt.Errorf("%w: %q is not an address", ErrInvalid, addr)
	}
	return nil
}

// Suppressed returns the addrs that are on the tenant's list for any mail,
// mass-only entries included, keyed by the lower-cased address, with the
// entry's reason. One round trip.
func (s *Store) Suppressed(ctx context.Context, tenantID string, addrs []string) (map[string]string, error) {
	return s.SuppressedFor(ctx, tenantID, addrs, true)
}

// SuppressedFor is Suppressed for one message: entries scoped to mass
// mail count only when mass is true.
func (s *Store) SuppressedFor(ctx context.Context, tenantID string, addrs []string, mass bool) (map[string]string, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	if err := check(tenantID, ""); err != nil {
		return nil, err
	}
	fields := make([]string, len(addrs))
	for i, a := range addrs {
		fields[i] = Normalize(a)
	}
	vals, err := s.rdb.HMGet(ctx, s.listKey(tenantID), fields...).Result()
	if err != nil {
		return nil, fmt.Errorf("suppress: looking up %d addresses of tenant %s: %w", len(addrs), tenantID, err)
	}
	var out map[string]string
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		var e Entry
		if json.Unmarshal([]byte(str), &e) != nil || e.Reason == "" {
			// A damaged entry still suppresses: sending to an address
			// someone meant to stop is worse than a vague reason.
			e.Reason, e.Scope = "suppressed", ""
		}
		if e.Scope == ScopeMass && !mass {
			continue
		}
		out[fields[i]] = e.Reason
	}
	return out, nil
}

// Add puts an address on the tenant's list (replacing an entry that is
// there: the latest reason wins). A zero e.Time is now.
func (s *Store) Add(ctx context.Context, tenantID string, e Entry) (Entry, error) {
	e.Address = Normalize(e.Address)
	if err := check(tenantID, e.Address); err != nil {
		return Entry{}, err
	}
	if e.Address == "" {
		return Entry{}, fmt.Errorf("%w: empty address", ErrInvalid)
	}
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	e.Time = e.Time.UTC().Truncate(time.Millisecond)
	b, err := json.Marshal(e)
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: encoding entry: %w", err)
	}
	if err := s.rdb.HSet(ctx, s.listKey(tenantID), e.Address, b).Err(); err != nil {
		return Entry{}, fmt.Errorf("suppress: adding %s to tenant %s: %w", e.Address, tenantID, err)
	}
	return e, nil
}

// Unsubscribe puts an address on the tenant's list for mass mail, unless
// an entry for all mail (a hard bounce, a complaint) is there already: an
// unsubscribe must never narrow what an earlier entry stops. It reports
// whether it wrote an entry.
func (s *Store) Unsubscribe(ctx context.Context, tenantID, addr, detail string) (bool, error) {
	e := Entry{Address: Normalize(addr), Reason: "unsubscribed", Source: SourceUnsubscribe, Detail: detail, Scope: ScopeMass}
	if err := check(tenantID, e.Address); err != nil {
		return false, err
	}
	e.Time = s.now().UTC().Truncate(time.Millisecond)
	b, err := json.Marshal(e)
	if err != nil {
		return false, fmt.Errorf("suppress: encoding entry: %w", err)
	}
	key := s.listKey(tenantID)
	wrote := false
	// WATCH makes the read and the write one step: a hard bounce stored
	// in between is not overwritten with the narrower entry.
	err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		cur, err := tx.HGet(ctx, key, e.Address).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		if err == nil {
			var old Entry
			if json.Unmarshal([]byte(cur), &old) != nil || old.Scope == "" {
				return nil
			}
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, key, e.Address, b)
			return nil
		})
		wrote = err == nil
		return err
	}, key)
	if err != nil {
		return false, fmt.Errorf("suppress: unsubscribing %s from tenant %s: %w", e.Address, tenantID, err)
	}
	return wrote, nil
}

// Remove takes an address off the tenant's list and forgets its soft
// bounces, so that it starts afresh. It reports whether it was listed.
func (s *Store) Remove(ctx context.Context, tenantID, addr string) (bool, error) {
	addr = Normalize(addr)
	if err := check(tenantID, addr); err != nil {
		return false, err
	}
	var del *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.HDel(ctx, s.listKey(tenantID), addr)
		p.Del(ctx, s.softKey(tenantID, addr))
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("suppress: removing %s from tenant %s: %w", addr, tenantID, err)
	}
	return del.Val() > 0, nil
}

// Get returns one entry.
func (s *Store) Get(ctx context.Context, tenantID, addr string) (Entry, bool, error) {
	addr = Normalize(addr)
	if err := check(tenantID, addr); err != nil {
		return Entry{}, false, err
	}
	v, err := s.rdb.HGet(ctx, s.listKey(tenantID), addr).Result()
	if errors.Is(err, redis.Nil) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("suppress: reading %s of tenant %s: %w", addr, tenantID, err)
	}
	e := decode(addr, v)
	return e, true, nil
}

func decode(addr, v string) Entry {
	var e Entry
	_ = json.Unmarshal([]byte(v), &e)
	e.Address = addr
	if e.Reason == "" {
		e.Reason = "suppressed"
	}
	return e
}

// List returns a page of the tenant's entries, in no particular order.
// cursor is "" for the first page; next is "" after the last. A page
// holds about size entries (HSCAN's COUNT is a hint); size <= 0 means 100.
// Entries added or removed while paging may or may not be seen, but an
// entry present throughout is returned at least once.
func (s *Store) List(ctx context.Context, tenantID, cursor string, size int) (entries []Entry, next string, err error) {
	if err := check(tenantID, ""); err != nil {
		return nil, "", err
	}
	if size <= 0 {
		size = 100
	}
	var cur uint64
	if cursor != "" {
		if cur, err = strconv.ParseUint(cursor, 10, 64); err != nil {
			return nil, "", fmt.Errorf("%w: page token %q", ErrInvalid, cursor)
		}
	}
	// HSCAN may return an empty batch before the end; keep going until
	// something is found or the scan is over, so callers never see an
	// empty page with a next token.
	for {
		kv, nc, err := s.rdb.HScan(ctx, s.listKey(tenantID), cur, "", int64(size)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("suppress: listing tenant %s: %w", tenantID, err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			entries = append(entries, decode(kv[i], kv[i+1]))
		}
		cur = nc
		if cur == 0 || len(entries) > 0 {
			break
		}
	}
	if cur != 0 {
		next = strconv.FormatUint(cur, 10)
	}
	return entries, next, nil
}

// SoftRule is the tenant's soft-bounce rule; zero fields take the
// defaults.
type SoftRule struct {
	Threshold  int
	WindowDays int
}

func (r SoftRule) withDefaults() SoftRule {
	if r.Threshold <= 0 {
		r.Threshold = DefaultSoftBounceThreshold
	}
	if r.WindowDays <= 0 {
		r.WindowDays = DefaultSoftBounceWindowDays
	}
	return r
}

// SoftBounce counts a soft bounce of addr, identified by id (the delivery
// that bounced, so that a bounce reported twice counts once), at time at.
// When the count within the rule's window reaches the threshold the
// address is suppressed with the given reason and SourceSoft; suppressed
// says so. A zero at is now.
func (s *Store) SoftBounce(ctx context.Context, tenantID, addr, id, reason string, rule SoftRule, at time.Time) (count int, suppressed bool, err error) {
	addr = Normalize(addr)
	if err := check(tenantID, addr); err != nil {
		return 0, false, err
	}
	if id == "" {
		return 0, false, fmt.Errorf("%w: empty bounce id", ErrInvalid)
	}
	rule = rule.withDefaults()
	if at.IsZero() {
		at = s.now()
	}
	window := time.Duration(rule.WindowDays) * 24 * time.Hour
	oldest := s.now().Add(-window)
	key := s.softKey(tenantID, addr)
	var card *redis.IntCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(at.UnixMilli()), Member: id})
		p.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(oldest.UnixMilli(), 10))
		card = p.ZCard(ctx, key)
		p.Expire(ctx, key, window)
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("suppress: counting a soft bounce of %s for tenant %s: %w", addr, tenantID, err)
	}
	count = int(card.Val())
	if count < rule.Threshold {
		return count, false, nil
	}
	detail := fmt.Sprintf("%d soft bounces within %d days (last: %s)", count, rule.WindowDays, reason)
	if _, err := s.Add(ctx, tenantID, Entry{Address: addr, Reason: reason, Source: SourceSoft, Detail: detail}); err != nil {
		return count, false, err
	}
	return count, true, nil
}
