// Package router is the first stage of mailbus: it consumes submissions
// from mail.submit, retries the tracker asks for from mail.resubmit, and
// re-routes deliveries from mail.fallback; it publishes deliveries to
// mail.routed and events to mail.events. The
// decisions live in internal/plan and internal/route; this file wires them
// to the bus.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/services/router/internal/plan"
)

// Config configures the router.
type Config struct {
	// Bus is the Kafka configuration. Its MaxMessageBytes, when zero,
	// derives from MaxMessageBytes (bus.RecordLimit); give every service
	// of the pipeline the same.
	Bus bus.Config
	// MaxMessageBytes bounds a built message; 0 means 25 MiB.
	MaxMessageBytes int64
	// MaxRecipients bounds one submission; 0 means 1000.
	MaxRecipients int
	// VERPKey signs VERP return paths; without it the return path is the
	// From address.
	VERPKey []byte
	// UnsubscribeURL is the base of one-click unsubscribe links, served by
	// the bounce service (see plan.Options.UnsubscribeURL).
	UnsubscribeURL string
}

// Deps are the router's collaborators.
type Deps struct {
	Log *slog.Logger
	// Metrics registers the router's metrics; nil means none.
	Metrics prometheus.Registerer
	// Config is the configuration cache.
	Config plan.Config
	// Suppressions may be nil until the bounce service runs.
	Suppressions plan.Suppressions
	// Health reports relays disabled for today; may be nil.
	Health plan.RelayHealth
	Now    func() time.Time
}

// Service is the router.
type Service struct {
	cfg     Config
	log     *slog.Logger
	planner *plan.Planner
	pub     message.Publisher
	outcome *prometheus.CounterVec
}

// New builds the router.
func New(cfg Config, deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Bus.MaxMessageBytes <= 0 {
		cfg.Bus.MaxMessageBytes = bus.RecordLimit(cfg.MaxMessageBytes)
	}
	s := &Service{
		cfg: cfg,
		log: deps.Log.With("service", "router"),
		planner: plan.New(deps.Config, deps.Suppressions, deps.Health, plan.Options{
			MaxMessageBytes: cfg.MaxMessageBytes, MaxRecordBytes: cfg.Bus.DeliveryLimit(),
			MaxRecipients: cfg.MaxRecipients, VERPKey: cfg.VERPKey, UnsubscribeURL: cfg.UnsubscribeURL, Now: deps.Now,
		}),
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "router", Name: "submissions_total",
			Help: "Submissions and re-routes handled, by outcome.",
		}, []string{"outcome"}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.outcome)
	}
	return s
}

// routerEventsLinger is what the router's queued events wait to share a
// produce request: about one request for every five messages instead of
// one each in make bench, and the open-loop p99 did not move.
const routerEventsLinger = 5 * time.Millisecond

// routeConcurrency is how many submissions the router plans at once. One
// at a time per partition, the router was where make bench's burst
// queued: each record waited for its deliveries' produce round trip
// before the next was planned, and the CPU was not busy. With a few in
// flight their records share produce requests (make bench: 3.6 → 2.4
// produce and 2.4 → 1.0 fetch requests per message). Submissions are
// independent of each other, and all the records about one message come
// from its one submission, so nothing relies on their order in a
// partition. Planning is cheap (under 100 µs), so this does not starve
// the signer as a concurrent signer would.
var routeConcurrency = bus.Concurrency{Records: 16, PerPartition: 4}

// Run consumes until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	// The router's events say a message is queued once its deliveries
	// are on mail.routed: they can wait for company (see EventsLinger).
	cfg := s.cfg.Bus
	cfg.EventsLinger = routerEventsLinger
	r, err := bus.NewRouter(cfg, "router", s.log)
	if err != nil {
		return err
	}
	s.pub = r.Publisher()
	if err := r.HandleConcurrent("route", bus.TopicSubmit, routeConcurrency, bus.Handle(s.handleSubmission)); err != nil {
		return err
	}
	if err := r.Handle("reroute", bus.TopicFallback, bus.Handle(s.handleFallback)); err != nil {
		return err
	}
	if err := r.Handle("retry", bus.TopicResubmit, bus.Handle(s.handleResubmission)); err != nil {
		return err
	}
	return r.Run(ctx)
}

func (s *Service) handleSubmission(ctx context.Context, msg *message.Message, sub *mailbusv1.Submission) error {
	part, off, ok := bus.RecordPosition(ctx)
	if !ok {
		return bus.Permanent(errors.New("route submission: its place in Kafka is not in its context, so it has no message id"))
	}
	res, err := s.planner.Plan(ctx, sub, ids.RecordKey(bus.TopicSubmit, part, off))
	if err != nil {
		return err
	}
	return s.publishOrFail(msg, res, "submission")
}

// handleResubmission plans a retry that the tracker asked for: the same
// checks, routing and (in quota) limits as a new submission.
func (s *Service) handleResubmission(ctx context.Context, msg *message.Message, rs *mailbusv1.Resubmission) error {
	res, err := s.planner.Retry(ctx, rs)
	if err != nil {
		return err
	}
	msg.Metadata.Set(bus.MetaTenantID, rs.GetSubmission().GetTenantId())
	return s.publishOrFail(msg, res, "retry")
}

func (s *Service) handleFallback(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
	res, err := s.planner.Reroute(ctx, d)
	if err != nil {
		return err
	}
	return s.publishOrFail(msg, res, "reroute")
}

// publishOrFail publishes res, and when Kafka cannot take one of its
// records for its size, the message's failed status instead: the planner
// refuses deliveries over the router's record limit, but a cluster whose
// topics allow less, or a producer's huge headers, can still refuse one.
func (s *Service) publishOrFail(in *message.Message, res plan.Result, kind string) error {
	err := s.publish(in, res, kind)
	if err == nil || !bus.IsTooLarge(err) {
		return err
	}
	s.log.Warn("a record of the message is too large for Kafka: failing the message", "message_id", res.MessageID, "err", err)
	return s.publish(in, s.planner.Fail(res, plan.ReasonTooLarge, err.Error()), kind)
}

// publish sends deliveries before events: a crash in between redelivers
// the record, which publishes the same ids again, and every consumer is
// idempotent on them.
func (s *Service) publish(in *message.Message, res plan.Result, kind string) error {
	meta := bus.MetaFrom(in)
	meta.Set(bus.MetaMessageID, res.MessageID)
	if err := publishAll(s.pub, bus.TopicRouted, meta, res.Deliveries); err != nil {
		return err
	}
	if err := publishAll(s.pub, bus.TopicEvents, meta, res.Events); err != nil {
		return err
	}
	outcome := "routed"
	if len(res.Deliveries) == 0 {
		outcome = "refused"
	}
	s.outcome.WithLabelValues(kind + "_" + outcome).Inc()
	return nil
}

// publishAll sends records in one producer batch (one round trip).
func publishAll[T proto.Message](pub message.Publisher, topic string, meta message.Metadata, items []T) error {
	if len(items) == 0 {
		return nil
	}
	msgs := make([]*message.Message, 0, len(items))
	for _, it := range items {
		m, err := bus.Encode(it, meta)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		return fmt.Errorf("publish %d records to %s: %w", len(msgs), topic, err)
	}
	return nil
}
