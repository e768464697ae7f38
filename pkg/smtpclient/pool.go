// Package smtpclient is mailbus's SMTP client (the sender delivers with it and
// the config service tests relays with it): it delivers one envelope
// to a relay or MX host over go-smtp's client and reports what the server
// said to MAIL FROM, to each RCPT TO and after the final dot.
//
// Connections are pooled per relay (host:port:security:user). A pool keeps
// at most MaxConnsPerRelay connections to a relay open (Relay.MaxConns
// overrides it; with PoolConfig.Slots the limit holds over every process
// sharing the slots), sends up to MaxMessagesPerConn messages over each,
// each carrying one transaction at a time, checks a connection
// that sat idle with NOOP (RSET when a transaction was left open) before it
// carries another message, closes connections idle for longer than
// IdleTimeout, and throws away a connection after an I/O error, a timeout
// or a 421.
//
// Failures come in two kinds. A *RelayError says the relay itself cannot
// take mail now (connection, TLS, greeting, EHLO, AUTH, MAIL FROM, a 421 or
// a broken connection at any step); the sender falls back to another relay.
// Everything else is per recipient, in Result.Recipients: a 4xx or 5xx
// reply to RCPT TO, to DATA or after the dot, each a *mail.SMTPError whose
// Permanent method separates bounces from deferrals. Limits the server
// announced (SIZE, no SMTPUTF8, no 8BITMIME) refuse a message locally with
// a permanent *mail.SMTPError before MAIL FROM.
//
// When the server offers PIPELINING (RFC 2920), MAIL FROM, every RCPT TO
// and DATA go out in one write and a transaction costs two round trips
// whatever its number of recipients; go-smtp's client cannot pipeline, so
// the session writes those commands itself (see pipelinedTransaction).
// Servers that do not offer it get one command per round trip.
package smtpclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/mailbus/mailbus/pkg/mail"
)

// PoolConfig configures a Pool. Zero fields take the documented defaults.
type PoolConfig struct {
	// MaxConnsPerRelay caps the connections to one relay key that the
	// process keeps open, busy or idle (default 10). Relay.MaxConns
	// overrides it per relay.
	MaxConnsPerRelay int
	// MaxMessagesPerConn is how many messages a connection carries before
	// it is closed with QUIT (default 100).
	MaxMessagesPerConn int
	// IdleTimeout closes connections unused for this long (default 30s).
	IdleTimeout time.Duration
	// SharedIdleTimeout closes sooner the idle connections that hold a
	// slot shared with other processes (default 2s): an idle connection
	// is a slot another replica may be waiting for, and under load a
	// connection is never idle that long.
	SharedIdleTimeout time.Duration
	// HealthCheckIdle is how long a connection may sit idle before it is
	// checked with NOOP ahead of its next message (default 2s). Below that
	// it is used at once, and if it turns out dead at MAIL FROM the message
	// is retried once on a new connection. Set 1ns to check every time.
	HealthCheckIdle time.Duration
	// Timeouts per SMTP phase; zero fields take Postfix's defaults.
	Timeouts Timeouts
	// HeloName is the EHLO name when the relay sets none (default: the host
	// name).
	HeloName string
	// RootCAs verifies servers' certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// Dial opens TCP connections; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the pool's metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Slots, when set, shares every relay's connection limit with the
	// other processes using the same slots (the sender's replicas, through
	// Redis): a connection opens only once it has a slot, and gives it back
	// when it closes. Nil limits connections per process only.
	Slots ConnSlots
}

// ConnSlots hands out connection slots shared between processes.
type ConnSlots interface {
	// Acquire waits for one of max slots of the relay key until ctx ends.
	Acquire(ctx context.Context, relayKey string, max int) (ConnLease, error)
}

// ConnLease is a connection slot held.
type ConnLease interface {
	// Release gives the slot back.
	Release()
	// Lost reports that the slot expired while held (the process stalled),
	// so its connection should close as soon as it is free.
	Lost() bool
}

// ErrConnSlots marks a failure to take a shared connection slot other
// than running out of time (the slots' store is unreachable): it says
// nothing about the relay or the message, and the send is worth retrying
// as it is.
var ErrConnSlots = errors.New("shared connection slots unavailable")

func (c PoolConfig) withDefaults() PoolConfig {
	if c.MaxConnsPerRelay <= 0 {
		c.MaxConnsPerRelay = 10
	}
	if c.MaxMessagesPerConn <= 0 {
		c.MaxMessagesPerConn = 100
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.SharedIdleTimeout <= 0 {
		c.SharedIdleTimeout = min(2*time.Second, c.IdleTimeout)
	}
	if c.HealthCheckIdle <= 0 {
		c.HealthCheckIdle = 2 * time.Second
	}
	c.Timeouts = c.Timeouts.withDefaults()
	if c.HeloName == "" {
		c.HeloName = defaultHelo()
	}
	if c.Dial == nil {
		c.Dial = (&net.Dialer{}).DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func defaultHelo() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// Stats are the pool's counters since it was made.
type Stats struct {
	ConnectionsOpened int64
	ConnectionsClosed int64
	// Messages counts the transactions started (MAIL FROM sent).
	Messages int64
	// Reused counts the sends that went over a connection opened earlier.
	Reused int64
	// Broken counts the connections thrown away after an I/O error, a
	// timeout, a 421 or a failed health check.
	Broken int64
	// Open and Idle are the connections open now, and those of them idle.
	Open int
	Idle int
}

// MessagesPerConnection is Messages / ConnectionsOpened.
func (s Stats) MessagesPerConnection() float64 {
	if s.ConnectionsOpened == 0 {
		return 0
	}
	return float64(s.Messages) / float64(s.ConnectionsOpened)
}

// Pool sends messages over pooled connections. It is safe for concurrent
// use; Close it when done.
type Pool struct {
	cfg PoolConfig
	d   *dialer
	log *slog.Logger
	m   poolMetrics

	mu     sync.Mutex
	relays map[string]*relayPool
	closed bool

	stopReaper chan struct{}
	wg         sync.WaitGroup

	opened, closedConns, messages, reused, broken atomic.Int64
}

type poolMetrics struct {
	opened   prometheus.Counter
	closed   *prometheus.CounterVec
	messages prometheus.Counter
	perConn  prometheus.Histogram
}

// NewPool makes a pool and starts its idle reaper.
func NewPool(cfg PoolConfig) *Pool {
	cfg = cfg.withDefaults()
	f := promauto.With(cfg.Registerer)
	p := &Pool{
		cfg: cfg,
		d: &dialer{
			timeouts: cfg.Timeouts,
			rootCAs:  cfg.RootCAs,
			dial:     cfg.Dial,
			helo:     cfg.HeloName,
			tlsCache: tls.NewLRUClientSessionCache(256),
		},
		log:        cfg.Logger,
		relays:     map[string]*relayPool{},
		stopReaper: make(chan struct{}),
		m: poolMetrics{
			opened: f.NewCounter(prometheus.CounterOpts{
				Name: "mailbus_sender_smtp_connections_opened_total",
				Help: "SMTP connections opened to relays and MX hosts.",
			}),
			closed: f.NewCounterVec(prometheus.CounterOpts{
				Name: "mailbus_sender_smtp_connections_closed_total",
				Help: "SMTP connections closed, by reason (idle, limit, broken, changed, slot_lost, shutdown).",
			}, []string{"reason"}),
			messages: f.NewCounter(prometheus.CounterOpts{
				Name: "mailbus_sender_smtp_messages_total",
				Help: "SMTP transactions started (MAIL FROM sent).",
			}),
			perConn: f.NewHistogram(prometheus.HistogramOpts{
				Name:    "mailbus_sender_smtp_messages_per_connection",
				Help:    "Messages a connection carried when it closed.",
				Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
			}),
		},
	}
	p.wg.Add(1)
	go p.reap()
	return p
}

// Send delivers m through relay. A nil error means the transaction ran to
// its end: res.Recipients says which recipients were taken and why the
// others were not. A *RelayError means the relay failed (see
// IsRelayFailure); a *mail.SMTPError alone means the server's announced
// limits refuse this message. In both cases every recipient without an
// outcome carries the error too. res is nil only when m is invalid.
func (p *Pool) Send(ctx context.Context, relay Relay, m *Message) (*Result, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("send to %s: %w", relay.Addr(), err)
	}
	if relay.Host == "" {
		return nil, errors.New("send: relay has no host")
	}
	rp, err := p.acquireRelay(relay)
	if err != nil {
		return nil, err
	}
	defer p.releaseRelay(rp)

	helo := relay.HeloName
	if helo == "" {
		helo = p.cfg.HeloName
	}
	fp := relay.fingerprint(helo)
	maxMsgs := relay.MaxMessagesPerConn
	if maxMsgs <= 0 {
		maxMsgs = p.cfg.MaxMessagesPerConn
	}
	retried := false
	for {
		s, err := rp.get(ctx, fp, p)
		if err != nil {
			res := newResult(relay, m)
			res.failUndecided(&mail.SMTPError{Stage: "connect", Message: err.Error(), Err: err})
			return res, fmt.Errorf("send to %s: wait for a connection: %w", relay.Addr(), err)
		}
		reused, checked := s != nil, false
		if reused && (s.dirty || time.Since(s.lastUsed) >= p.cfg.HealthCheckIdle) {
			checked = true
			if err := s.check(ctx); err != nil {
				p.log.DebugContext(ctx, "pooled SMTP connection failed its check", "relay", relay.Addr(), "err", err)
				p.discard(rp, s, "broken")
				continue
			}
		}
		if !reused {
			lease, err := p.lease(ctx, relay, rp)
			if err != nil {
				rp.closed()
				res := newResult(relay, m)
				res.failUndecided(&mail.SMTPError{Stage: "connect", Message: err.Error(), Err: err})
				return res, fmt.Errorf("send to %s: %w", relay.Addr(), err)
			}
			s, err = p.d.open(ctx, relay, rp, nil)
			if err != nil {
				if lease != nil {
					lease.Release()
				}
				rp.closed()
				res := newResult(relay, m)
				var re *RelayError
				if errors.As(err, &re) {
					res.failUndecided(re.Err)
				} else {
					res.failUndecided(&mail.SMTPError{Stage: "connect", Message: err.Error(), Err: err})
				}
				return res, err
			}
			s.lease = lease
			p.opened.Add(1)
			p.m.opened.Inc()
		} else {
			p.reused.Add(1)
		}

		res := newResult(relay, m)
		res.ConnReused = reused
		before := s.messages
		err = s.send(ctx, m, res)
		if s.messages > before {
			p.messages.Add(1)
			p.m.messages.Inc()
		}
		if reused && !checked && !retried && s.broken && stageOf(err) == "mail" && ctx.Err() == nil {
			// The server closed this connection while it sat in the pool;
			// it took nothing, so the message goes over a new one.
			retried = true
			p.log.DebugContext(ctx, "pooled SMTP connection was closed by the server; retrying on a new one", "relay", relay.Addr(), "err", err)
			p.discard(rp, s, "broken")
			continue
		}
		p.putBack(rp, s, maxMsgs)
		return res, err
	}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	st := Stats{
		ConnectionsOpened: p.opened.Load(),
		ConnectionsClosed: p.closedConns.Load(),
		Messages:          p.messages.Load(),
		Reused:            p.reused.Load(),
		Broken:            p.broken.Load(),
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rp := range p.relays {
		rp.mu.Lock()
		st.Open += rp.open
		st.Idle += len(rp.idle)
		rp.mu.Unlock()
	}
	return st
}

// Close says QUIT on the idle connections and closes them. Sends in
// progress finish; their connections are closed as they return.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	type idleSession struct {
		rp *relayPool
		s  *session
	}
	var idle []idleSession
	for _, rp := range p.relays {
		rp.mu.Lock()
		for _, s := range rp.idle {
			idle = append(idle, idleSession{rp, s})
		}
		rp.idle = nil
		rp.mu.Unlock()
	}
	p.mu.Unlock()
	close(p.stopReaper)
	p.wg.Wait()
	for _, i := range idle {
		i.s.close(true)
		p.countClose(i.s, "shutdown")
		i.rp.closed()
	}
	return nil
}

func (p *Pool) acquireRelay(r Relay) (*relayPool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("send: pool is closed")
	}
	key := r.Key()
	rp := p.relays[key]
	if rp == nil {
		rp = &relayPool{key: key, tokens: map[string]string{}}
		p.relays[key] = rp
	}
	rp.users++
	rp.mu.Lock()
	rp.max = r.MaxConns
	if rp.max <= 0 {
		rp.max = p.cfg.MaxConnsPerRelay
	}
	rp.mu.Unlock()
	return rp, nil
}

// lease takes a shared connection slot for a new connection to relay; nil
// without PoolConfig.Slots. Running out of time waiting for one is the same
// as waiting for a local connection; any other failure is ErrConnSlots.
func (p *Pool) lease(ctx context.Context, relay Relay, rp *relayPool) (ConnLease, error) {
	if p.cfg.Slots == nil {
		return nil, nil
	}
	rp.mu.Lock()
	max := rp.max
	rp.mu.Unlock()
	budget := relay.Budget
	if budget == "" {
		budget = rp.key
	}
	l, err := p.cfg.Slots.Acquire(ctx, budget, max)
	switch {
	case err == nil:
		return l, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("wait for a connection slot shared with other replicas: %w", err)
	default:
		return nil, fmt.Errorf("%w: %w", ErrConnSlots, err)
	}
}

func (p *Pool) releaseRelay(rp *relayPool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rp.users--
}

// putBack returns a session to the idle list, or closes it when it is
// broken, has carried its share of messages, or the pool is closing.
func (p *Pool) putBack(rp *relayPool, s *session, maxMsgs int) {
	switch {
	case s.broken:
		p.discard(rp, s, "broken")
	case s.messages >= maxMsgs:
		p.closeAsync(rp, s, "limit")
	case s.lease != nil && s.lease.Lost():
		// Another replica may have its slot by now.
		p.closeAsync(rp, s, "slot_lost")
	case rp.overMax():
		// The relay's limit came down (a throttling pause ramping back
		// up, or a new max_connections): idle connections above it would
		// keep carrying messages.
		p.closeAsync(rp, s, "limit")
	default:
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			s.close(true)
			p.countClose(s, "shutdown")
			rp.closed()
			return
		}
		rp.put(s)
	}
}

func (p *Pool) discard(rp *relayPool, s *session, reason string) {
	p.broken.Add(1)
	s.close(false)
	p.countClose(s, reason)
	rp.closed()
}

// closeAsync says QUIT in the background so that the send returns at once;
// the connection's slot is freed only when it is closed, so the relay
// never sees more than its maximum.
func (p *Pool) closeAsync(rp *relayPool, s *session, reason string) {
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if closed {
		s.close(true)
		p.countClose(s, reason)
		rp.closed()
		return
	}
	go func() {
		defer p.wg.Done()
		s.close(true)
		p.countClose(s, reason)
		rp.closed()
	}()
}

func (p *Pool) countClose(s *session, reason string) {
	if s.lease != nil {
		s.lease.Release()
	}
	p.closedConns.Add(1)
	p.m.closed.WithLabelValues(reason).Inc()
	p.m.perConn.Observe(float64(s.messages))
}

// reap closes idle connections older than IdleTimeout and forgets relays
// nobody uses.
func (p *Pool) reap() {
	defer p.wg.Done()
	every := max(min(p.cfg.IdleTimeout, p.cfg.SharedIdleTimeout)/4, 10*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-p.stopReaper:
			return
		case <-tick.C:
		}
		now := time.Now()
		p.mu.Lock()
		type expired struct {
			rp *relayPool
			s  *session
		}
		var old []expired
		for key, rp := range p.relays {
			rp.mu.Lock()
			kept := rp.idle[:0]
			for _, s := range rp.idle {
				limit := p.cfg.IdleTimeout
				if s.lease != nil {
					limit = min(limit, p.cfg.SharedIdleTimeout)
				}
				if now.Sub(s.lastUsed) >= limit {
					old = append(old, expired{rp, s})
				} else {
					kept = append(kept, s)
				}
			}
			clear(rp.idle[len(kept):])
			rp.idle = kept
			unused := rp.users == 0 && rp.open == 0 && len(rp.waiters) == 0
			rp.mu.Unlock()
			if unused {
				delete(p.relays, key)
			}
		}
		p.mu.Unlock()
		for _, e := range old {
			e.s.close(true)
			p.countClose(e.s, "idle")
			e.rp.closed()
		}
	}
}

// relayPool holds the connections to one relay key.
type relayPool struct {
	key   string
	users int // Sends holding this relayPool; guarded by Pool.mu

	mu      sync.Mutex
	max     int
	open    int // sessions open or being opened, busy or idle
	idle    []*session
	waiters []chan struct{}
	// tokens maps a configured XOAUTH2 token to the one that replaced it.
	tokens map[string]string
}

func (rp *relayPool) overMax() bool {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.open > rp.max
}

// get returns an idle session, or nil when the caller may open a new one
// (its slot is then counted in open). It waits while the relay is at its
// maximum.
func (rp *relayPool) get(ctx context.Context, fp string, p *Pool) (*session, error) {
	rp.mu.Lock()
	for {
		for len(rp.idle) > 0 {
			// Most recently used first, so that surplus connections stay
			// idle long enough for the reaper.
			s := rp.idle[len(rp.idle)-1]
			rp.idle[len(rp.idle)-1] = nil
			rp.idle = rp.idle[:len(rp.idle)-1]
			if s.fp == fp && time.Since(s.lastUsed) < p.cfg.IdleTimeout {
				rp.mu.Unlock()
				return s, nil
			}
			// The relay's settings changed, or the reaper has not got to it.
			rp.mu.Unlock()
			p.closeAsync(rp, s, "changed")
			rp.mu.Lock()
		}
		if rp.open < rp.max {
			rp.open++
			rp.mu.Unlock()
			return nil, nil
		}
		ch := make(chan struct{})
		rp.waiters = append(rp.waiters, ch)
		rp.mu.Unlock()
		select {
		case <-ch:
			rp.mu.Lock()
		case <-ctx.Done():
			rp.mu.Lock()
			if i := indexOf(rp.waiters, ch); i >= 0 {
				rp.waiters = append(rp.waiters[:i], rp.waiters[i+1:]...)
			} else {
				// Woken and cancelled at once: pass the wake-up on.
				rp.wakeLocked()
			}
			rp.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func indexOf(chs []chan struct{}, ch chan struct{}) int {
	for i, c := range chs {
		if c == ch {
			return i
		}
	}
	return -1
}

func (rp *relayPool) wakeLocked() {
	if len(rp.waiters) > 0 {
		close(rp.waiters[0])
		rp.waiters = rp.waiters[1:]
	}
}

func (rp *relayPool) put(s *session) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.idle = append(rp.idle, s)
	rp.wakeLocked()
}

// closed frees the slot of a session that was closed or never opened.
func (rp *relayPool) closed() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.open--
	rp.wakeLocked()
}

func (rp *relayPool) token(r Relay) string {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if t, ok := rp.tokens[r.Auth.Token]; ok {
		return t
	}
	return r.Auth.Token
}

func (rp *relayPool) refreshed(r Relay, token string) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.tokens[r.Auth.Token] = token
}
