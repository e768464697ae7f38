// Package sender is the delivery stage of mailbus: it consumes signed
// deliveries from mail.signed, speaks SMTP to the routed relay, the default
// relay or the recipients' MX hosts with pooled connections, and publishes
// each recipient's outcome to mail.events, relay failures to mail.fallback,
// and deferred recipients to the delayed retry topics (which it also
// consumes). The decisions live in internal/deliver, SMTP in
// pkg/smtpclient.
//
// # Concurrency
//
// Each replica handles many deliveries at once, whatever the partition
// count (bus.Router.HandleConcurrent): up to Config.Concurrency.Records
// records, and Concurrency.Bytes of their payloads, with each partition's
// offsets committed in order. What bounds the SMTP transactions in flight
// is the relay: its max_connections (default DefaultMaxConnsPerRelay),
// counted over every replica through leases in Redis (health.ConnSlots),
// each connection carrying one transaction at a time. Deliveries waiting
// for one of a relay's connections do not hold up deliveries to other
// relays from the same partition, as long as the replica's record budget
// has room; a delivery that waits longer than the handler timeout is
// deferred.
package sender

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/delay"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/smtpclient"
	"github.com/mailbus/mailbus/services/sender/internal/deliver"
	"github.com/mailbus/mailbus/services/sender/internal/mtasts"
)

// Config configures the sender.
type Config struct {
	Bus  bus.Config
	Pool smtpclient.PoolConfig
	// Concurrency bounds the deliveries in flight in this replica; zero
	// fields take DefaultConcurrency's.
	Concurrency bus.Concurrency
	// ConnLeaseTTL is how long a crashed replica's relay connections keep
	// counting against the relays' limits; default 30s.
	ConnLeaseTTL time.Duration
	// DNSServers are the resolvers for direct MX delivery ("host:port");
	// empty means /etc/resolv.conf.
	DNSServers []string
	// MaxQueueLifetime bounds how long a recipient stays deferred; default
	// 5 days.
	MaxQueueLifetime time.Duration
	// HeloName is the EHLO name.
	HeloName string
	// DoneTTL is how long the sender remembers an attempt it finished, so
	// a redelivered record is not sent twice; default 7 days.
	DoneTTL time.Duration
	// Shaping is the traffic shaping of destinations; nil means
	// health.DefaultShaping().
	Shaping *health.Shaping
	// DisableMTASTS delivers directly to MX hosts without looking at the
	// recipient domains' MTA-STS policies (RFC 8461), which are honoured
	// by default.
	DisableMTASTS bool
}

// Deps are the sender's collaborators.
type Deps struct {
	Log      *slog.Logger
	Metrics  prometheus.Registerer
	Config   deliver.Config
	Redis    redis.UniversalClient
	Classify deliver.Classifier
	// Sealer seals the OAuth access tokens the replicas share in Redis;
	// nil shares them unsealed (they expire within the hour).
	Sealer *seal.Sealer
	// OAuth tunes the refreshing of OAuth relays' access tokens.
	OAuth oauthtoken.Options
	Now   func() time.Time
}

// Service is the sender.
type Service struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	slots   *health.ConnSlots
	pool    *smtpclient.Pool
	d       *deliver.Deliverer
	ledger  *limits.KafkaLedger
	pub     message.Publisher
	results *prometheus.CounterVec
	skipped prometheus.Counter
	claims  attemptClaims
}

// New builds the sender.
func New(cfg Config, deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.DoneTTL <= 0 {
		cfg.DoneTTL = 7 * 24 * time.Hour
	}
	log := deps.Log.With("service", "sender")
	pc := cfg.Pool
	pc.Logger = log
	pc.Registerer = deps.Metrics
	if pc.HeloName == "" {
		pc.HeloName = cfg.HeloName
	}
	if pc.MaxConnsPerRelay <= 0 {
		pc.MaxConnsPerRelay = DefaultMaxConnsPerRelay
	}
	slots := health.NewConnSlots(deps.Redis, health.ConnSlotsOptions{TTL: cfg.ConnLeaseTTL, Log: log})
	pc.Slots = connSlots{slots}
	pool := smtpclient.NewPool(pc)
	resolver := &resolve.Resolver{Servers: cfg.DNSServers}
	var sts *mtasts.Policies
	if !cfg.DisableMTASTS {
		// The policy host is reached like the MX hosts: the same resolver,
		// dialer and trusted roots.
		sts = mtasts.New(mtasts.Options{Resolver: resolver, RootCAs: pc.RootCAs, Dial: pc.Dial,
			Redis: deps.Redis, Registerer: deps.Metrics, Log: log, Now: deps.Now})
	}
	if cfg.Concurrency.Records <= 0 {
		cfg.Concurrency.Records = DefaultConcurrency.Records
	}
	if cfg.Concurrency.PerPartition <= 0 {
		cfg.Concurrency.PerPartition = DefaultConcurrency.PerPartition
	}
	if cfg.Concurrency.Bytes <= 0 {
		cfg.Concurrency.Bytes = DefaultConcurrency.Bytes
	}
	// The ledger keeps a relay that failed three times disabled for the
	// day even when Redis loses its data (see pkg/limits).
	ledger := limits.NewKafkaLedger(cfg.Bus, log)
	lim := limits.New(deps.Redis, limits.WithClock(deps.Now), limits.WithLedger(ledger))
	h := health.New(deps.Redis, lim, health.Options{Log: log, Now: deps.Now})
	oauthOpts := deps.OAuth
	if oauthOpts.Log == nil {
		oauthOpts.Log = log
	}
	tokens := oauthtoken.New(deps.Redis, deps.Sealer, oauthOpts)
	s := &Service{
		cfg: cfg, deps: deps, log: log, pool: pool, slots: slots, ledger: ledger,
		d: deliver.New(deps.Config, pool, resolver, lim, h, deps.Classify,
			deliver.Options{MaxQueueLifetime: cfg.MaxQueueLifetime, HeloName: cfg.HeloName, Now: deps.Now,
				Shaping: cfg.Shaping, DefaultMaxConns: pc.MaxConnsPerRelay, Tokens: tokens, MTASTS: sts}, log),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "sender", Name: "recipients_total",
			Help: "Recipient outcomes, by status.",
		}, []string{"status"}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "sender", Name: "attempts_already_made_total",
			Help: "Records skipped because their delivery attempt was already made: redelivered after a crash, or a submission published again with the same idempotency id.",
		}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.results, s.skipped)
	}
	return s
}

// Pool exposes the connection pool's statistics (for benchmarks).
func (s *Service) Pool() *smtpclient.Pool { return s.pool }

// DefaultMaxConnsPerRelay is a relay's connection limit when it sets none:
// Postfix's default_destination_concurrency_limit.
const DefaultMaxConnsPerRelay = 20

// DefaultConcurrency bounds a replica's deliveries in flight. 500 records
// keep a few relays at 100 connections busy while a record waits at most a
// few seconds for a connection; 64 MiB of payloads (each also held decoded)
// keep what a replica holds for its deliveries far under a 512 MiB
// container however many connections carry 25 MB messages.
var DefaultConcurrency = bus.Concurrency{Records: 500, PerPartition: 1000, Bytes: 64 << 20}

// Run consumes until ctx is cancelled, then drains the deliveries in
// flight (bus.Config.CloseTimeout bounds it) and gives the relay
// connection slots back.
func (s *Service) Run(ctx context.Context) error {
	defer s.slots.Close()
	defer s.pool.Close()
	defer func() {
		if err := s.ledger.Close(); err != nil {
			s.log.Warn("closing the quota ledger", "err", err)
		}
	}()
	r, err := bus.NewRouter(s.cfg.Bus, "sender", s.log)
	if err != nil {
		return err
	}
	s.pub = r.Publisher()
	if err := r.HandleConcurrent("deliver", bus.TopicSigned, s.cfg.Concurrency, bus.Handle(s.handle)); err != nil {
		return err
	}
	if err := delay.Register(r, bus.TopicSigned, s.deps.Now); err != nil {
		return err
	}
	return r.Run(ctx)
}

// tooLarge is the failed event of a delivery that could not be passed on
// because its record is too large for Kafka.
func (s *Service) tooLarge(d *mailbusv1.Delivery, err error) *mailbusv1.DeliveryEvent {
	s.log.Warn("delivery too large to pass on: failing its recipients", "delivery_id", d.GetDeliveryId(), "err", err)
	e := events.ForDelivery(d, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, events.ReasonTooLarge, err.Error(), s.deps.Now())
	e.Permanent = true
	return e
}

// recordTimeout bounds writing the record of a finished attempt, which
// goes on after the handler's context is cancelled.
const recordTimeout = 10 * time.Second

// connSlots gives the pool the Redis-shared connection slots.
type connSlots struct{ *health.ConnSlots }

func (c connSlots) Acquire(ctx context.Context, relayKey string, max int) (smtpclient.ConnLease, error) {
	l, err := c.ConnSlots.Acquire(ctx, relayKey, max)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func doneKey(d *mailbusv1.Delivery) string {
	return fmt.Sprintf("mb:sent:{%s}:%s:%d", d.GetTenantId(), d.GetDeliveryId(), d.GetAttempt())
}

// handle makes one delivery attempt. An attempt that finished is
// remembered in Redis, so a redelivered record (a crash after SMTP but
// before the offset commit) is not sent again; the window between the
// server's 250 and that mark is the one duplicate at-least-once allows.
func (s *Service) handle(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
	key := doneKey(d)
	release, err := s.claims.acquire(ctx, key)
	if err != nil {
		return fmt.Errorf("wait for the other copy of delivery %s in flight: %w", d.GetDeliveryId(), err)
	}
	defer release()
	// Both checks in one round trip: every delivery makes them, and the
	// two keys share the tenant's hash tag.
	var sent, cancelMark *redis.IntCmd
	if _, err := s.deps.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		sent = p.Exists(ctx, key)
		cancelMark = p.Exists(ctx, cancelled.Key(d.GetTenantId(), d.GetMessageId()))
		return nil
	}); err != nil {
		return fmt.Errorf("check whether delivery %s was sent or cancelled: %w", d.GetDeliveryId(), err)
	}
	if sent.Val() > 0 {
		s.skipped.Inc()
		s.log.Debug("delivery attempt already made, skipping redelivered record", "delivery_id", d.GetDeliveryId(), "attempt", d.GetAttempt())
		return nil
	}
	if cancelMark.Val() > 0 {
		return s.stopCancelled(msg, d)
	}
	out, err := s.d.Deliver(ctx, d)
	if err != nil {
		return err
	}
	meta := bus.MetaFrom(msg)
	// The SMTP attempt is made: a delivery passed on that Kafka cannot
	// take for its size fails its recipients, and the others' outcomes are
	// still reported, instead of an error that would send them all again.
	if out.Fallback != nil {
		if err := bus.Publish(s.pub, bus.TopicFallback, out.Fallback, meta); err != nil {
			if !bus.IsTooLarge(err) {
				return err
			}
			out.Events = append(out.Events, s.tooLarge(out.Fallback, err))
		}
	}
	if out.Retry != nil {
		if err := delay.Enqueue(s.pub, meta, out.Retry, bus.TopicSigned, out.RetryAt, s.deps.Now()); err != nil {
			if !bus.IsTooLarge(err) {
				return err
			}
			out.Events = append(out.Events, s.tooLarge(out.Retry, err))
		}
	}
	if len(out.Events) > 0 {
		msgs := make([]*message.Message, 0, len(out.Events))
		for _, e := range out.Events {
			m, err := bus.Encode(e, meta)
			if err != nil {
				return err
			}
			msgs = append(msgs, m)
			s.results.WithLabelValues(e.GetStatus().String()).Add(float64(max(len(e.GetRecipients()), 1)))
		}
		if err := s.pub.Publish(bus.TopicEvents, msgs...); err != nil {
			return fmt.Errorf("publish outcomes of delivery %s: %w", d.GetDeliveryId(), err)
		}
	}
	// The attempt is made whatever happens to ctx now: a shutdown that
	// cancels it must not keep the record from being written, or the
	// redelivered record sends the mail again after the restart.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	// Delivered mass mail counts towards the tenant's complaint rate in
	// the same transaction as the mark, so that a record skipped as
	// already sent is not counted again, and both keys share the tenant's
	// hash tag.
	massSent := 0
	if d.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_MASS {
		massSent = sentRecipients(out.Events)
	}
	if _, err := s.deps.Redis.TxPipelined(rctx, func(p redis.Pipeliner) error {
		p.Set(rctx, key, "1", s.cfg.DoneTTL)
		if massSent > 0 {
			tenant, _ := s.deps.Config.Tenant(d.GetTenantId())
			complaints.CountDelivered(rctx, p, d.GetTenantId(), limits.Zone(tenant.GetTimeZone()), massSent, s.deps.Now())
		}
		return nil
	}); err != nil {
		// The outcome is published; failing here would only resend.
		s.log.Warn("cannot remember finished delivery attempt", "delivery_id", d.GetDeliveryId(), "err", err)
	}
	return nil
}

// sentRecipients counts the recipients that evs report as accepted by the
// relay or MX.
func sentRecipients(evs []*mailbusv1.DeliveryEvent) int {
	n := 0
	for _, e := range evs {
		if e.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
			n += len(e.GetRecipients())
		}
	}
	return n
}

// stopCancelled publishes the cancelled event of d instead of sending it.
// The sender's is the last check before SMTP, and the one that deliveries
// released from the retry topics meet (they come back through
// mail.signed).
func (s *Service) stopCancelled(msg *message.Message, d *mailbusv1.Delivery) error {
	e := cancelled.Event(d, events.StageSender, s.deps.Now())
	if err := bus.Publish(s.pub, bus.TopicEvents, e, bus.MetaFrom(msg)); err != nil {
		return fmt.Errorf("publish cancellation of delivery %s: %w", d.GetDeliveryId(), err)
	}
	s.results.WithLabelValues(e.GetStatus().String()).Add(float64(max(len(e.GetRecipients()), 1)))
	return nil
}
