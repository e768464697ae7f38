// Package tracker keeps the message log: it consumes mail.events into the
// store (SQLite or PostgreSQL) and serves MessageService. Event application
// rules live in internal/store, the gRPC server in internal/messagesvc.
//
// # Retry and cancel
//
// RetryMessage needs the message again, and the pipeline keeps no bodies.
// The tracker therefore also consumes mail.submit (consumer group
// tracker.keep) and stores each submission, protobuf compressed with zstd,
// in the message log's database under the message id the router derives
// from the same record, for Config.Retention (7 days by default); a
// sweeper deletes what is older. Reading mail.submit itself, rather than
// having the router forward the submission, keeps "at least once, never
// lost" with nothing new to get right: the offset is committed only after
// the row is, a redelivered record stores nothing new (first wins), and
// mail.submit's records, up to 25 MB, are not written to Kafka a second
// time. The store is the database the tracker already runs (PostgreSQL in
// production, SQLite in mailbus dev): a retry reads one row by key, the
// retention is a range delete on an index, and backups and operations
// stay those of one database.
//
// A retry publishes a mailbusv1.Resubmission (the stored submission, the
// recipients to retry, the retry number and who asked) to mail.resubmit,
// which the router plans like a new submission for those recipients only:
// suppression list, routing, and quota's limits apply again. A retry past
// the retention is refused with FailedPrecondition and the date the
// content was deleted.
//
// CancelMessage sets the cancel marker in Redis (pkg/cancelled) that
// quota, the signer and the sender check before passing a delivery on,
// and records the cancellation in the log.
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
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
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
	// company; default 100ms. The log is off the delivery path, so a
	// status shows a tenth of a second later, and a transaction carries
	// five times the events: make bench's tracker CPU per message went
	// from 956 to 654 µs against 20ms (a commit costs as much as the
	// rows it writes at that batch size).
	MaxBatchWait time.Duration
	// Retention is how long a message's submission is kept so that it
	// can be retried; default store.DefaultRetention (7 days).
	Retention time.Duration
	// PurgeInterval is how often submissions past their retention are
	// deleted; default an hour.
	PurgeInterval time.Duration
}

// Deps are the tracker's collaborators.
type Deps struct {
	Log     *slog.Logger
	Metrics prometheus.Registerer
	// DB is the message log database, migrated by New.
	DB *sqlstore.DB
	// Resubmit republishes retried messages; nil uses Publisher to send
	// the stored submission to the router, and without a Publisher either
	// RetryMessage answers Unimplemented.
	Resubmit messagesvc.Resubmitter
	// Publisher publishes retries to mail.resubmit.
	Publisher message.Publisher
	// Redis holds the cancel markers; nil only records cancellations in
	// the log.
	Redis redis.UniversalClient
}

// Service is the tracker.
type Service struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	srv     *messagesvc.Server
	reqs    chan applyReq
	keeps   chan keepReq
	applied *prometheus.CounterVec
	outcome outcomes
	kept    prometheus.Counter
	purged  prometheus.Counter
	redis   redis.UniversalClient
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
		cfg.MaxBatchWait = 100 * time.Millisecond
	}
	if cfg.Retention <= 0 {
		cfg.Retention = store.DefaultRetention
	}
	if cfg.PurgeInterval <= 0 {
		cfg.PurgeInterval = time.Hour
	}
	if err := store.Migrate(ctx, deps.DB); err != nil {
		return nil, fmt.Errorf("migrate message log: %w", err)
	}
	st := store.New(deps.DB)
	log := deps.Log.With("service", "tracker")
	resubmit := deps.Resubmit
	if resubmit == nil && deps.Publisher != nil {
		resubmit = &busResubmitter{store: st, pub: deps.Publisher, retention: cfg.Retention}
	}
	var canceller messagesvc.Canceller
	if deps.Redis != nil {
		canceller = messagesvc.CancellerFunc(func(ctx context.Context, tenantID, messageID string) error {
			return cancelled.Mark(ctx, deps.Redis, tenantID, messageID, cancelled.TTL)
		})
	}
	s := &Service{
		cfg: cfg, log: log, store: st, redis: deps.Redis,
		srv:   messagesvc.New(st, messagesvc.Deps{Resubmit: resubmit, Cancel: canceller, Log: log}),
		reqs:  make(chan applyReq, cfg.MaxBatch),
		keeps: make(chan keepReq, cfg.MaxBatch),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "tracker", Name: "events_total",
			Help: "Events handled, by result (applied, duplicate, rejected, not_a_message).",
		}, []string{"result"}),
		outcome: newOutcomes(),
		kept: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "tracker", Name: "submissions_kept_total",
			Help: "Submissions read from mail.submit and kept for retries (redeliveries included).",
		}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "tracker", Name: "submissions_purged_total",
			Help: "Kept submissions deleted at the end of their retention.",
		}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.applied, s.outcome.recipients, s.kept, s.purged)
	}
	return s, nil
}

// Register adds MessageService to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) { s.srv.Register(r) }

// Run consumes events until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	r, err := bus.NewRouter(bus.Unhurried(s.cfg.Bus), "tracker", s.log)
	if err != nil {
		return err
	}
	// Both handlers hand their record to a batcher and wait for its
	// transaction. One record per partition at a time (Handle) made a
	// batch at most a record per partition, eight events a transaction
	// every MaxBatchWait: some 400 events a second however fast the
	// database, and most of the tracker's CPU went on committing tiny
	// transactions. Handled concurrently, a batch fills up to MaxBatch.
	// Order does not matter to the log: it folds a message's events by
	// when they happened, not by when they arrive (see store), and a
	// partition's offsets still commit in order.
	conc := bus.Concurrency{Records: s.cfg.MaxBatch}
	if err := r.HandleConcurrent("log", bus.TopicEvents, conc, bus.Handle(s.handle)); err != nil {
		return err
	}
	if err := r.HandleConcurrent("keep", bus.TopicSubmit, conc, s.keepRecord); err != nil {
		return err
	}
	var wg sync.WaitGroup
	bctx, stop := context.WithCancel(context.Background())
	wg.Add(3)
	go func() { defer wg.Done(); s.batcher(bctx) }()
	go func() { defer wg.Done(); s.keeper(bctx) }()
	go func() { defer wg.Done(); s.purger(bctx) }()
	go func() {
		if _, err := s.RestoreCancelMarks(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("restoring cancel markers from the message log", "err", err)
		}
	}()
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
	if ev.GetMessageId() == "" && ev.GetWarning() != "" {
		// A warning about a tenant's configuration rather than a message
		// (the config service's domain_dns_error) belongs to no message's
		// log; webhooks deliver it. It is counted, not poisoned.
		s.applied.WithLabelValues("not_a_message").Inc()
		s.outcome.observe([]*mailbusv1.DeliveryEvent{ev})
		return nil
	}
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
