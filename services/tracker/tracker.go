// Package tracker keeps the message log: it consumes mail.events into the
// store (SQLite or PostgreSQL) and serves MessageService. Event application
// rules live in internal/store, the gRPC server in internal/messagesvc.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/services/tracker/internal/messagesvc"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
)

// Config configures the tracker.
type Config struct {
	Bus bus.Config
	// DatabaseURL is the message log: postgres://... or sqlite://FILE. Only
	// NewApplication reads it; New takes an open database.
	DatabaseURL string
	// MaxBatch is the most events applied in one transaction; default 500.
	MaxBatch int
	// MaxBatchWait is how long the first event of a batch waits for
	// company; default 20ms.
	MaxBatchWait time.Duration
}

// Deps are the tracker's collaborators.
type Deps struct {
	Log     *slog.Logger
	Metrics prometheus.Registerer
	// DB is the message log database, migrated by New.
	DB *sqlstore.DB
	// Resubmit republishes retried messages; nil makes RetryMessage
	// answer Unimplemented.
	Resubmit messagesvc.Resubmitter
}

// Service is the tracker.
type Service struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	srv     *messagesvc.Server
	reqs    chan applyReq
	applied *prometheus.CounterVec
	outcome outcomes
}

type applyReq struct {
	ev   *mailbusv1.DeliveryEvent
	done chan error
}

// New migrates the store and builds the tracker.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 500
	}
	if cfg.MaxBatchWait <= 0 {
		cfg.MaxBatchWait = 20 * time.Millisecond
	}
	if err := store.Migrate(ctx, deps.DB); err != nil {
		return nil, fmt.Errorf("migrate message log: %w", err)
	}
	st := store.New(deps.DB)
	log := deps.Log.With("service", "tracker")
	s := &Service{
		cfg: cfg, log: log, store: st, srv: messagesvc.New(st, deps.Resubmit, log),
		reqs: make(chan applyReq, cfg.MaxBatch),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "tracker", Name: "events_total",
			Help: "Events handled, by result (applied, duplicate, rejected).",
		}, []string{"result"}),
		outcome: newOutcomes(),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.applied, s.outcome.recipients)
	}
	return s, nil
}

// Register adds MessageService to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) { s.srv.Register(r) }

// Run consumes events until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	r, err := bus.NewRouter(s.cfg.Bus, "tracker", s.log)
	if err != nil {
		return err
	}
	if err := r.Handle("log", bus.TopicEvents, bus.Handle(s.handle)); err != nil {
		return err
	}
	var wg sync.WaitGroup
	bctx, stop := context.WithCancel(context.Background())
	wg.Add(1)
	go func() { defer wg.Done(); s.batcher(bctx) }()
	err = r.Run(ctx)
	// The router has returned, so no handler waits on the batcher any more.
	stop()
	wg.Wait()
	return err
}

// handle parks the event with the batcher and acks only once its batch is
// committed, so an event is never acknowledged before it is stored. Each
// partition's consumer waits here, which is what lets many partitions
// share one transaction.
func (s *Service) handle(ctx context.Context, _ *message.Message, ev *mailbusv1.DeliveryEvent) error {
	req := applyReq{ev: ev, done: make(chan error, 1)}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errRejected = errors.New("event rejected by the message log")

func (s *Service) batcher(ctx context.Context) {
	batch := make([]applyReq, 0, s.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.reqs:
			batch = append(batch, r)
		}
		timer := time.NewTimer(s.cfg.MaxBatchWait)
	fill:
		for len(batch) < s.cfg.MaxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		s.flush(ctx, batch)
	}
}

func (s *Service) flush(ctx context.Context, batch []applyReq) {
	evs := make([]*mailbusv1.DeliveryEvent, len(batch))
	for i, r := range batch {
		evs[i] = r.ev
	}
	res, err := s.store.ApplyBatch(ctx, evs)
	if err != nil {
		s.log.Warn("apply event batch", "events", len(evs), "err", err)
		for _, r := range batch {
			r.done <- fmt.Errorf("apply event batch: %w", err)
		}
		return
	}
	rejected := map[int]error{}
	for _, rj := range res.Rejected {
		rejected[rj.Index] = rj.Err
	}
	for i, r := range batch {
		if e, ok := rejected[i]; ok {
			// Never appliable: poison it with the reason.
			r.done <- bus.Permanent(fmt.Errorf("%w: %w", errRejected, e))
			continue
		}
		r.done <- nil
	}
	s.applied.WithLabelValues("applied").Add(float64(res.Applied))
	s.applied.WithLabelValues("duplicate").Add(float64(res.Duplicates))
	s.applied.WithLabelValues("rejected").Add(float64(len(res.Rejected)))
	s.outcome.observe(res.Fresh)
}
