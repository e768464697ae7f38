package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"google.golang.org/protobuf/proto"
)

// Router is one service's watermill router: the standard middleware stack
// (see Middleware), one shared idempotent publisher (also used by the
// poison queue), and one subscriber per handler in consumer group
// "<service>.<handler>".
//
// Build it, add handlers, then Run:
//
//	r, err := bus.NewRouter(cfg, "router", log)
//	r.Handle("route", bus.TopicSubmit, bus.Handle(svc.route))
//	err = r.Run(ctx) // until ctx is cancelled
type Router struct {
	cfg     Config
	service string
	log     *slog.Logger
	pub     message.Publisher
	router  *message.Router
	metrics *routerMetrics // nil without Config.Metrics
	subs    []groupTopic

	closeOnce sync.Once
	closeErr  error
}

// NewRouter builds the router of service (its name prefixes every consumer
// group). It connects the publisher now, so that a wrong broker address
// fails at start-up rather than at the first record.
func NewRouter(cfg Config, service string, log *slog.Logger) (*Router, error) {
	if service == "" {
		return nil, errors.New("create router: empty service name")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	pub, err := NewPublisher(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("create router for %s: %w", service, err)
	}
	wr, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, watermillLogger(log))
	if err != nil {
		_ = pub.Close()
		return nil, fmt.Errorf("create router for %s: %w", service, err)
	}
	mws, err := Middleware(cfg, pub, log)
	if err != nil {
		_ = pub.Close()
		return nil, fmt.Errorf("create router for %s: %w", service, err)
	}
	var metrics *routerMetrics
	if cfg.Metrics != nil {
		if metrics, err = newRouterMetrics(cfg, log); err != nil {
			_ = pub.Close()
			return nil, fmt.Errorf("create router for %s: %w", service, err)
		}
		// Outermost, to see each record once, after the poison queue.
		wr.AddMiddleware(metrics.middleware(service))
	}
	wr.AddMiddleware(mws...)
	return &Router{cfg: cfg, service: service, log: log, pub: pub, router: wr, metrics: metrics}, nil
}

// Middleware returns the standard handler middleware stack, outermost
// first, as in watermill's _examples/basic/3-router:
//
//  1. CorrelationID: records a handler returns inherit the correlation id.
//  2. PoisonQueue: a record whose handling still fails after retries is
//     published to TopicPoison with the reason, topic, handler, partition
//     and offset in its metadata, and acked, so that it never blocks its
//     partition; a record too large for Kafka to take a copy of goes there
//     without its payload (see poisonQueue). A record whose context was
//     cancelled because the service is shutting down is not poisoned: it
//     is nacked and redelivered after the restart.
//  3. Retry with exponential backoff; errors marked Permanent skip it.
//  4. Timeout per attempt (each retry gets a fresh one).
//  5. Recoverer last, innermost, so that a panic becomes an error that
//     Retry and PoisonQueue see instead of a crashed service.
func Middleware(cfg Config, poisonPub message.Publisher, log *slog.Logger) ([]message.HandlerMiddleware, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retry := middleware.Retry{
		MaxRetries:      cfg.HandlerRetries,
		InitialInterval: cfg.HandlerRetryInitial,
		MaxInterval:     cfg.HandlerRetryMax,
		Multiplier:      2,
		// Spread retries of many failing records so that they do not hit a
		// recovering dependency in lockstep.
		RandomizationFactor: 0.2,
		ShouldRetry: func(p middleware.RetryParams) bool {
			return !IsPermanent(p.Err)
		},
		// Timeout cancels the message context after each attempt; without
		// this every retry would start with a dead context (watermill
		// issue 467).
		ResetContextOnRetry: true,
		Logger:              watermillLogger(log),
	}
	return []message.HandlerMiddleware{
		middleware.CorrelationID,
		poisonQueue(poisonPub, log),
		failureContext(log),
		retry.Middleware,
		middleware.Timeout(cfg.HandlerTimeout),
		middleware.Recoverer,
	}, nil
}

// errShuttingDown marks a failure caused by the subscription ending, which
// must not send the record to the poison topic.
var errShuttingDown = errors.New("subscription closed while handling")

// failureContext sits between the poison queue and retry. On a failure it
// records where the record came from (watermill's poison queue does not),
// and whether the failure was permanent; and it tells a shutdown apart from
// a real failure by looking at the context the record arrived with.
func failureContext(log *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			arrival := msg.Context()
			out, err := h(msg)
			if err == nil {
				return out, nil
			}
			if arrival.Err() != nil {
				return out, fmt.Errorf("%w: %w", errShuttingDown, err)
			}
			if p, o, ok := RecordPosition(arrival); ok {
				msg.Metadata.Set(MetaPoisonPartition, strconv.FormatInt(int64(p), 10))
				msg.Metadata.Set(MetaPoisonOffset, strconv.FormatInt(o, 10))
			}
			msg.Metadata.Set(MetaPoisonPermanent, strconv.FormatBool(IsPermanent(err)))
			log.LogAttrs(arrival, slog.LevelWarn, "record failed, sending it to the poison topic",
				slog.String("handler", message.HandlerNameFromCtx(arrival)),
				slog.String("topic", message.SubscribeTopicFromCtx(arrival)),
				slog.String(MetaPoisonPartition, msg.Metadata.Get(MetaPoisonPartition)),
				slog.String(MetaPoisonOffset, msg.Metadata.Get(MetaPoisonOffset)),
				slog.String(MetaTenantID, msg.Metadata.Get(MetaTenantID)),
				slog.String(MetaMessageID, msg.Metadata.Get(MetaMessageID)),
				slog.String(MetaDeliveryID, msg.Metadata.Get(MetaDeliveryID)),
				slog.Bool("permanent", IsPermanent(err)),
				slog.Any("err", err))
			return out, err
		}
	}
}

// RecordPosition returns where in Kafka the record being handled is, from
// the context of its message: Handle's subscriber (watermill-kafka) and
// HandleConcurrent's keep it under different keys, and a handler that
// read only watermill-kafka's saw partition 0 offset 0 for every record
// of a concurrent subscriber. Handlers ask here, whichever subscriber
// feeds them.
func RecordPosition(ctx context.Context) (partition int32, offset int64, ok bool) {
	if rp, ok := ctx.Value(recordPositionKey{}).(recordPosition); ok {
		return rp.partition, rp.offset, true
	}
	p, pok := kafka.MessagePartitionFromCtx(ctx)
	o, ook := kafka.MessagePartitionOffsetFromCtx(ctx)
	return p, o, pok && ook
}

// Handle subscribes h to topic in consumer group Group(service, handler).
// handler names the handler in logs and poison metadata and must be unique
// in this router. Add every handler before Run.
func (r *Router) Handle(handler, topic string, h message.NoPublishHandlerFunc) error {
	group := Group(r.service, handler)
	sub, err := NewSubscriber(r.cfg, group, r.log)
	if err != nil {
		return fmt.Errorf("subscribe %s to %s: %w", handler, topic, err)
	}
	r.router.AddConsumerHandler(handler, topic, sub, h)
	r.subs = append(r.subs, groupTopic{group, topic})
	return nil
}

// Service is the name of the service the router runs, as given to
// NewRouter.
func (r *Router) Service() string { return r.service }

// Publisher returns the router's publisher, for handlers that publish with
// message.Publisher directly. Run closes it.
func (r *Router) Publisher() message.Publisher { return r.pub }

// Publish encodes m (see Encode) with meta and publishes it to topic,
// returning once Kafka has it. In a handler pass MetaFrom(msg) as meta so
// that the record carries the incoming one's ids and trace context.
func (r *Router) Publish(topic string, m proto.Message, meta message.Metadata) error {
	return Publish(r.pub, topic, m, meta)
}

// Publish encodes m (see Encode) with meta and publishes it to topic with
// pub.
func Publish(pub message.Publisher, topic string, m proto.Message, meta message.Metadata) error {
	msg, err := Encode(m, meta)
	if err != nil {
		return err
	}
	if err := pub.Publish(topic, msg); err != nil {
		return fmt.Errorf("publish %s to %s: %w", m.ProtoReflect().Descriptor().FullName(), topic, err)
	}
	return nil
}

// Watermill returns the underlying watermill router, for plugins and
// metrics decorators. Do not add handlers to it directly: they would miss
// their consumer group.
func (r *Router) Watermill() *message.Router { return r.router }

// Running is closed once every handler has subscribed.
func (r *Router) Running() <-chan struct{} { return r.router.Running() }

// Run consumes until ctx is cancelled or Close is called, then waits up to
// CloseTimeout for in-flight handlers and closes the subscribers and the
// publisher. Records whose handling was cut short are not committed and
// are redelivered later.
func (r *Router) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		_ = r.Close()
	}()
	defer r.reportLag()()
	runErr := r.router.Run(ctx)
	closeErr := r.Close()
	if runErr != nil {
		return fmt.Errorf("run %s router: %w", r.service, runErr)
	}
	return closeErr
}

// Close stops the router and closes the publisher. It is safe to call more
// than once and from several goroutines.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		if err := r.router.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s router: %w", r.service, err))
		}
		if err := r.pub.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s publisher: %w", r.service, err))
		}
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}
