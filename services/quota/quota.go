// Package quota is the limits stage of mailbus: it consumes deliveries from
// mail.routed, counts them against the relay's and the tenant's daily
// limits in Redis (exactly once per delivery), paces relays with a rate
// limit, and sends each delivery on to mail.admitted, back to the router
// through mail.fallback when its relay is exhausted, or to a retry topic
// when the tenant's own limit is reached. The counting rules live in
// pkg/limits; the counters are kept durable in the quota ledger
// (mail.quota.ledger), so that a Redis that loses its data in the middle of
// the day holds deliveries until their tenant's counters are restored
// instead of counting again from zero.
//
// Mass mail of a tenant whose complaint rate today is over the limit
// (pkg/complaints) is deferred to the tenant's next midnight, and the
// tenant's administrators are warned once that day; every other kind of
// mail passes.
package quota

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/delay"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
)

// Config configures the quota stage.
type Config struct {
	Bus bus.Config
	// MaxRateWait is the longest a delivery waits in the handler for its
	// relay's rate limit; a longer wait goes to a retry topic. Default 2s.
	MaxRateWait time.Duration
	// Complaints is the complaint guardrail's rule (the zero value is
	// Gmail's 0.3% over at least 1,000 delivered mass messages a day).
	Complaints complaints.Policy
}

// ConfigSource is the configuration cache.
type ConfigSource interface {
	Tenant(id string) (*mailbusv1.Tenant, bool)
	Relay(id string) (*configclient.RelayWithSecrets, bool)
}

// Deps are the quota stage's collaborators.
type Deps struct {
	Log     *slog.Logger
	Metrics prometheus.Registerer
	Config  ConfigSource
	Redis   redis.UniversalClient
	Now     func() time.Time
}

// Service is the quota stage.
type Service struct {
	cfg      Config
	deps     Deps
	log      *slog.Logger
	limits   *limits.Limits
	ledger   *limits.KafkaLedger
	pub      message.Publisher
	decision *prometheus.CounterVec
}

// New builds the quota stage.
func New(cfg Config, deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.MaxRateWait <= 0 {
		cfg.MaxRateWait = 2 * time.Second
	}
	log := deps.Log.With("service", "quota")
	ledger := limits.NewKafkaLedger(cfg.Bus, log)
	s := &Service{
		cfg: cfg, deps: deps, log: log, ledger: ledger,
		limits: limits.New(deps.Redis, limits.WithClock(deps.Now), limits.WithLedger(ledger)),
		decision: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "quota", Name: "decisions_total",
			Help: "Deliveries decided, by decision.",
		}, []string{"decision"}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.decision)
		if src, ok := deps.Config.(RelaySource); ok {
			deps.Metrics.MustRegister(newUsageCollector(src, s.limits, s.log))
		}
	}
	return s
}

// Run consumes until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	defer func() {
		if err := s.ledger.Close(); err != nil {
			s.log.Warn("closing the quota ledger", "err", err)
		}
	}()
	r, err := bus.NewRouter(s.cfg.Bus, "quota", s.log)
	if err != nil {
		return err
	}
	s.pub = r.Publisher()
	// A delivery too large for mail.admitted (or a retry topic) fails with
	// a status instead of going round to the poison topic.
	h := events.FailTooLarge(s.pub, events.StageQuota, s.deps.Now, s.handle)
	if err := r.Handle("admit", bus.TopicRouted, bus.Handle(h)); err != nil {
		return err
	}
	// Paced and deferred deliveries come back through the retry topics;
	// quota releases its own, so it never depends on another stage running.
	if err := delay.Register(r, bus.TopicRouted, s.deps.Now); err != nil {
		return err
	}
	return r.Run(ctx)
}

func (s *Service) handle(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
	now := s.deps.Now()
	meta := bus.MetaFrom(msg)
	// A cancelled message stops here before it is counted, also when it
	// comes back from a retry topic.
	if stop, err := cancelled.Is(ctx, s.deps.Redis, d); err != nil {
		return err
	} else if stop {
		return s.emit(meta, cancelled.Event(d, events.StageQuota, now), "cancelled")
	}
	tenant, ok := s.deps.Config.Tenant(d.GetTenantId())
	if !ok {
		return s.emit(meta, events.ForDelivery(d, events.StageQuota, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
			"unknown_tenant", fmt.Sprintf("tenant %q is not configured", d.GetTenantId()), now), "unknown_tenant")
	}
	loc := limits.Zone(tenant.GetTimeZone())
	req := limits.Request{
		Tenant: d.GetTenantId(), DeliveryID: d.GetDeliveryId(), Recipients: len(d.GetEnvelope().GetRcptTo()),
		TenantLimit: tenant.GetDailyLimit(), Zone: loc,
	}
	var relay *mailbusv1.Relay
	var res limits.Result
	var err error
	if d.GetRoute().GetKind() == mailbusv1.RouteKind_ROUTE_KIND_RELAY {
		rs, ok := s.deps.Config.Relay(d.GetRoute().GetRelayId())
		if !ok {
			// The relay was deleted after routing: route again without it.
			return s.fallback(meta, d, now, "relay_gone", "relay "+d.GetRoute().GetRelayId()+" no longer exists")
		}
		relay = rs.Relay
		req.RelayID, req.RelayLimit = relay.GetId(), relay.GetDailyLimit()
		res, err = s.limits.Admit(ctx, req)
	} else {
		res, err = s.limits.AdmitDefault(ctx, req)
	}
	if err != nil {
		return fmt.Errorf("admit delivery %s: %w", d.GetDeliveryId(), err)
	}
	switch res.Decision {
	case limits.RelayExhausted:
		return s.fallback(meta, d, now, "relay_limit_reached",
			fmt.Sprintf("relay %s reached its daily limit of %d recipients (%d counted on %s)", relayName(relay), relay.GetDailyLimit(), res.RelayCount, res.Day))
	case limits.TenantExhausted:
		return s.tenantExhausted(meta, d, tenant, loc, res, now)
	}
	// The guard comes after Admit, not before, so that a redelivered record
	// of a delivery already passed on gets the same answer again (it is
	// on its way to SMTP; deferring a copy would send it twice).
	if d.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_MASS && !res.Replayed {
		if paused, err := s.complaintGuard(ctx, meta, d, tenant, loc, now); err != nil || paused {
			return err
		}
	}
	d.QuotaDay = res.Day
	if relay.GetRatePerSecond() > 0 {
		if err := s.pace(ctx, meta, d, relay); err != nil {
			if err == errDelayed {
				return nil
			}
			return err
		}
	}
	s.decision.WithLabelValues("admitted").Inc()
	return bus.Publish(s.pub, bus.TopicAdmitted, d, meta)
}

var errDelayed = fmt.Errorf("delivery delayed for rate")

// pace waits briefly for the relay's shared rate limit; a longer wait
// goes to a retry topic so the partition keeps moving. The delayed delivery
// comes back through mail.routed, not mail.admitted: a refused GCRA check
// reserves no slot, so every delivery refused in the same instant gets the
// same retry-after, and sending them on unchecked would let them all out in
// one burst. Back in quota, the daily admission replays (it counts nothing
// again) and the rate is checked afresh.
func (s *Service) pace(ctx context.Context, meta message.Metadata, d *mailbusv1.Delivery, relay *mailbusv1.Relay) error {
	deadline := s.deps.Now().Add(s.cfg.MaxRateWait)
	for {
		rr, err := s.limits.AllowRate(ctx, d.GetTenantId(), relay.GetId(), relay.GetRatePerSecond(), 0)
		if err != nil {
			return fmt.Errorf("rate limit relay %s: %w", relay.GetId(), err)
		}
		if rr.Allowed {
			return nil
		}
		now := s.deps.Now()
		if now.Add(rr.RetryAfter).After(deadline) {
			s.decision.WithLabelValues("rate_delayed").Inc()
			if err := delay.Enqueue(s.pub, meta, d, bus.TopicRouted, now.Add(rr.RetryAfter), now); err != nil {
				return err
			}
			return errDelayed
		}
		t := time.NewTimer(rr.RetryAfter)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (s *Service) fallback(meta message.Metadata, d *mailbusv1.Delivery, now time.Time, reason, detail string) error {
	s.decision.WithLabelValues(reason).Inc()
	e := events.ForDelivery(d, events.StageQuota, mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, reason, detail+"; routing again", now)
	if err := bus.Publish(s.pub, bus.TopicFallback, health.Fallback(d), meta); err != nil {
		return err
	}
	return bus.Publish(s.pub, bus.TopicEvents, e, meta)
}

func (s *Service) tenantExhausted(meta message.Metadata, d *mailbusv1.Delivery, tenant *mailbusv1.Tenant, loc *time.Location, res limits.Result, now time.Time) error {
	detail := fmt.Sprintf("tenant %s reached its daily limit of %d recipients (%d counted on %s)", tenant.GetId(), tenant.GetDailyLimit(), res.TenantCount, res.Day)
	if tenant.GetOverLimitPolicy() == mailbusv1.OverLimitPolicy_OVER_LIMIT_POLICY_REFUSE {
		s.decision.WithLabelValues("tenant_refused").Inc()
		e := events.ForDelivery(d, events.StageQuota, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, "tenant_daily_limit", detail, now)
		e.Permanent = true
		return bus.Publish(s.pub, bus.TopicEvents, e, meta)
	}
	s.decision.WithLabelValues("tenant_deferred").Inc()
	next := limits.NextMidnight(now, loc)
	nd := deferredDelivery(d, limits.DayKey(next, loc))
	e := events.ForDelivery(d, events.StageQuota, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "tenant_daily_limit",
		detail+"; deferred to "+next.Format(time.RFC3339)+" as delivery "+nd.GetDeliveryId(), now)
	if err := delay.Enqueue(s.pub, meta, nd, bus.TopicRouted, next, now); err != nil {
		return err
	}
	return bus.Publish(s.pub, bus.TopicEvents, e, meta)
}

// deferredDelivery is d deferred to day: the same delivery under the id
// <base>.d<YYYYMMDD>, where base is d's id without an earlier deferral's
// suffix. It needs a new id because limits replays the decision it made
// for a delivery id on a route, and that decision was "tenant exhausted":
// under its old id the delivery would be deferred again every day until
// the marker expired. The id is derived from the day, so a redelivered
// record defers to the same new delivery and counts once.
func deferredDelivery(d *mailbusv1.Delivery, day string) *mailbusv1.Delivery {
	nd := proto.Clone(d).(*mailbusv1.Delivery)
	base := d.GetDeliveryId()
	if i := strings.LastIndex(base, ".d"); i >= 0 && len(base)-i == 10 && strings.Trim(base[i+2:], "0123456789") == "" {
		base = base[:i]
	}
	nd.DeliveryId = base + ".d" + strings.ReplaceAll(day, "-", "")
	if nd.GetEnvelope() != nil && nd.GetEnvelope().GetEnvelopeId() == d.GetDeliveryId() {
		nd.Envelope.EnvelopeId = nd.DeliveryId
	}
	return nd
}

func (s *Service) emit(meta message.Metadata, e *mailbusv1.DeliveryEvent, decision string) error {
	s.decision.WithLabelValues(decision).Inc()
	return bus.Publish(s.pub, bus.TopicEvents, e, meta)
}

func relayName(r *mailbusv1.Relay) string {
	if r.GetName() != "" {
		return r.GetName()
	}
	return r.GetId()
}
