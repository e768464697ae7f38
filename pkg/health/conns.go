package health

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/limits"
)

// DefaultConnLeaseTTL is how long a connection slot stays taken without a
// renewal: a replica that dies gives its slots back after this long.
const DefaultConnLeaseTTL = 30 * time.Second

// ConnSlots shares each relay's connection limit between every replica of
// the sender, so that scaling out never opens more connections to a relay
// than it allows. A slot is a lease: a member of the relay's sorted set in
// Redis, scored with its expiry. Taking one first drops the expired
// members, so the slots of a replica that died without giving them back
// come back after the lease's TTL; the living replica renews its leases
// every third of the TTL. The scripts read the Redis server's clock, so
// the replicas' clocks need not agree.
//
// It is safe for concurrent use. Close it to stop renewing and give back
// every slot.
type ConnSlots struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	holder string
	log    *slog.Logger

	seq atomic.Int64

	mu      sync.Mutex
	held    map[*ConnLease]struct{}
	closed  bool
	started bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// ConnSlotsOptions tune NewConnSlots; zero fields take the defaults.
type ConnSlotsOptions struct {
	// KeyPrefix starts every key; default limits.DefaultKeyPrefix.
	KeyPrefix string
	// TTL is the lease time; default DefaultConnLeaseTTL.
	TTL time.Duration
	// Log receives renewal failures; default none.
	Log *slog.Logger
}

// NewConnSlots returns connection slots kept in rdb.
func NewConnSlots(rdb redis.UniversalClient, o ConnSlotsOptions) *ConnSlots {
	if o.KeyPrefix == "" {
		o.KeyPrefix = limits.DefaultKeyPrefix
	}
	if o.TTL <= 0 {
		o.TTL = DefaultConnLeaseTTL
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &ConnSlots{
		rdb: rdb, prefix: o.KeyPrefix, ttl: o.TTL, holder: strconv.FormatUint(rand.Uint64(), 36), log: o.Log,
		held: map[*ConnLease]struct{}{}, stop: make(chan struct{}),
	}
}

// ConnLease is one connection slot held.
type ConnLease struct {
	s      *ConnSlots
	key    string
	member string
	lost   atomic.Bool
	once   sync.Once
}

// Lost reports whether a renewal found the lease expired (the process
// stalled for longer than the TTL): another replica may have the slot now,
// so the connection should close as soon as it is free.
func (l *ConnLease) Lost() bool { return l.lost.Load() }

// Release gives the slot back. It is safe to call more than once.
func (l *ConnLease) Release() {
	l.once.Do(func() {
		l.s.mu.Lock()
		delete(l.s.held, l)
		l.s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.s.rdb.ZRem(ctx, l.key, l.member).Err(); err != nil {
			// The lease expires by itself.
			l.s.log.Warn("cannot give a relay connection slot back", "err", err)
		}
	})
}

// connKey is the sorted set of one relay's leases. The relay key (host,
// port, security, user) is hashed into the hash tag, since a user name may
// hold braces.
func (s *ConnSlots) connKey(relay string) string {
	h := sha256.Sum256([]byte(relay))
	return s.prefix + "{conns:" + hex.EncodeToString(h[:8]) + "}"
}

// acquireScript takes a slot when fewer than max unexpired ones are taken.
// KEYS[1] the relay's set; ARGV: member, max, ttl in ms.
var acquireScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
`)

// renewScript extends a lease that has not expired; 0 when it had.
// KEYS[1] the relay's set; ARGV: member, ttl in ms.
var renewScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not exp or tonumber(exp) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
`)

// Acquire takes one of max connection slots of relay, waiting while all
// are taken, until ctx ends. The error is ctx's, or Redis's.
func (s *ConnSlots) Acquire(ctx context.Context, relay string, max int) (*ConnLease, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: connection limit %d for %s", limits.ErrInvalid, max, relay)
	}
	l := &ConnLease{s: s, key: s.connKey(relay), member: s.holder + ":" + strconv.FormatInt(s.seq.Add(1), 10)}
	wait := 10 * time.Millisecond
	for {
		ok, err := acquireScript.Run(ctx, s.rdb, []string{l.key}, l.member, max, s.ttl.Milliseconds()).Int()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("take a connection slot of %s: %w", relay, err)
		}
		if ok == 1 {
			if err := s.hold(l); err != nil {
				l.Release()
				return nil, err
			}
			return l, nil
		}
		// Polling rather than notifications: slots turn over at the pace
		// of connections opening and closing, not of messages, since
		// connections are reused. Jitter keeps waiting replicas apart.
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

func (s *ConnSlots) hold(l *ConnLease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("take a connection slot: %w", errSlotsClosed)
	}
	s.held[l] = struct{}{}
	if !s.started {
		s.started = true
		s.wg.Add(1)
		go s.renewLoop()
	}
	return nil
}

var errSlotsClosed = errors.New("connection slots closed")

func (s *ConnSlots) renewLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		s.renew()
	}
}

// renew extends every lease held, in one pipeline.
func (s *ConnSlots) renew() {
	s.mu.Lock()
	leases := make([]*ConnLease, 0, len(s.held))
	for l := range s.held {
		leases = append(leases, l)
	}
	s.mu.Unlock()
	if len(leases) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl/3)
	defer cancel()
	cmds := make([]*redis.Cmd, len(leases))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, l := range leases {
			cmds[i] = renewScript.Eval(ctx, p, []string{l.key}, l.member, s.ttl.Milliseconds())
		}
		return nil
	})
	if err != nil {
		s.log.Warn("cannot renew relay connection slots; they expire unless a later renewal works", "slots", len(leases), "err", err)
	}
	for i, c := range cmds {
		if n, err := c.Int(); err == nil && n == 0 {
			leases[i].lost.Store(true)
		}
	}
}

// Close stops renewing and gives back every slot still held.
func (s *ConnSlots) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	leases := make([]*ConnLease, 0, len(s.held))
	for l := range s.held {
		leases = append(leases, l)
	}
	s.mu.Unlock()
	s.wg.Wait()
	for _, l := range leases {
		l.Release()
	}
	return nil
}
