// Package webhook delivers each tenant's events to the HTTPS endpoints the
// tenant configured, signed per the Standard Webhooks specification (see
// internal/sign), at least once.
//
// How an event travels:
//
//  1. The consumer group webhook.fanout reads mail.events. For each event it
//     writes one outbox row per endpoint that wants it (its tenant's active
//     endpoints whose event types match; final-only endpoints take only
//     final states), in the store (SQLite or PostgreSQL), and acknowledges
//     the record only once the rows are committed. Rows are unique on
//     (endpoint, webhook id), and the webhook id is derived from the event
//     id, so a redelivered record enqueues nothing new.
//  2. Each endpoint has its own lane: a goroutine that leases due rows of
//     that endpoint only, and posts up to Concurrency of them at once with
//     a timeout. A slow or dead endpoint fills its own lane and no other,
//     so it never delays another endpoint's (another tenant's) events.
//  3. A 2xx answer delivers the row. Anything else (another status, a
//     refused connection, a timeout) schedules the row again after an
//     exponential backoff with jitter (RetryInitial doubling up to
//     RetryMax); when an attempt fails RetryFor (72 hours) or more after
//     the schedule began, the row becomes a dead letter, which
//     WebhookService lists and replays.
//
// Order: a message's events reach an endpoint in the order they were
// enqueued (the order of mail.events, which is keyed by message id): a row
// is not posted while an earlier row of the same message to the same
// endpoint is still due (on PostgreSQL, an event enqueued just as its
// predecessor finished can wait up to RefreshInterval for the repair in
// store.Unblock). Across messages there is no order. A dead letter no
// longer holds the message's later events back, so a replayed dead letter
// arrives after them.
//
// Duplicates: a timeout after the receiver processed the request, or a
// crash between a 2xx and recording it, posts the event again with the
// same webhook-id; receivers de-duplicate on it.
package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/services/webhook/internal/sign"
	"github.com/mailbus/mailbus/services/webhook/internal/store"
)

// Config configures the webhook service. Zero durations take the
// defaults.
type Config struct {
	Bus bus.Config
	// DatabaseURL is the outbox and endpoint store: postgres://... or
	// sqlite://FILE. Only NewApplication reads it.
	DatabaseURL string
	// AllowHTTP accepts http:// endpoint URLs (development only); otherwise
	// an endpoint must be https://.
	AllowHTTP bool
	// RequestTimeout bounds one POST, answer included; default 15s.
	RequestTimeout time.Duration
	// RetryInitial is the first retry's delay, doubling up to RetryMax;
	// defaults 5s and 1h. Each delay is drawn between half and all of it.
	RetryInitial, RetryMax time.Duration
	// RetryFor is how long a row is retried before it becomes a dead
	// letter; default 72h.
	RetryFor time.Duration
	// Concurrency is the most POSTs in flight per endpoint; default 8.
	Concurrency int
	// PollInterval is how often a lane looks for rows whose retry is due;
	// default 1s. New rows wake the lanes at once.
	PollInterval time.Duration
	// RefreshInterval is how often endpoints are reloaded from the store
	// (another replica's API writes); default 10s.
	RefreshInterval time.Duration
	// KeepDelivered is how long delivered rows stay to de-duplicate
	// redelivered records; default 7 days (Kafka's default retention).
	KeepDelivered time.Duration
	// MaxBatch and MaxBatchWait bound the outbox writes and result writes
	// grouped in one transaction; defaults 500 and 20ms.
	MaxBatch     int
	MaxBatchWait time.Duration
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RequestTimeout, 15*time.Second)
	def(&c.RetryInitial, 5*time.Second)
	def(&c.RetryMax, time.Hour)
	def(&c.RetryFor, 72*time.Hour)
	def(&c.PollInterval, time.Second)
	def(&c.RefreshInterval, 10*time.Second)
	def(&c.KeepDelivered, 7*24*time.Hour)
	def(&c.MaxBatchWait, 20*time.Millisecond)
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 500
	}
	return c
}

// lease is how long a claimed row belongs to this process: long enough
// for the POST and recording its result, short enough that a crashed
// replica's rows are retried soon.
func (c Config) lease() time.Duration { return c.RequestTimeout + time.Minute }

// Deps are the service's collaborators.
type Deps struct {
	Log     *slog.Logger
	Metrics prometheus.Registerer
	// DB is the store, migrated by New.
	DB *sqlstore.DB
	// Sealer seals endpoint secrets at rest (MAILBUS_SECRET_KEY).
	Sealer *seal.Sealer
	// HTTP posts the webhooks; nil means a client that follows no
	// redirects.
	HTTP *http.Client
}

// Service is the webhook service.
type Service struct {
	cfg    Config
	log    *slog.Logger
	store  *store.Store
	sealer *seal.Sealer
	http   *http.Client
	m      metrics

	mu sync.Mutex
	// laneCtx is Run's context for lanes; nil until Run starts them.
	laneCtx   context.Context
	endpoints map[string]*liveEndpoint   // by id
	byTenant  map[string][]*liveEndpoint // active or not
	lanes     map[string]*lane

	enqueue chan enqueueReq
	results chan resultReq
}

// liveEndpoint is an endpoint with its secrets opened.
type liveEndpoint struct {
	store.Endpoint
	key, previous []byte
}

// keys are the keys to sign with at now: the current one, and the
// previous one during a rotation's overlap.
func (e *liveEndpoint) keys(now time.Time) [][]byte {
	if e.previous != nil && now.Before(e.PreviousExpire) {
		return [][]byte{e.key, e.previous}
	}
	return [][]byte{e.key}
}

type enqueueReq struct {
	rows []store.Row
	done chan error
}

type resultReq struct {
	res  store.Result
	done chan struct{}
}

// New migrates the store and builds the service.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Sealer == nil {
		return nil, errors.New("build webhook service: no sealer for endpoint secrets (MAILBUS_SECRET_KEY)")
	}
	cfg = cfg.withDefaults()
	if err := store.Migrate(ctx, deps.DB); err != nil {
		return nil, err
	}
	if deps.HTTP == nil {
		deps.HTTP = &http.Client{
			// A redirect is an answer that is not 2xx: following it would
			// post the event (and its signature) to a URL nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: cfg.Concurrency,
				IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
			},
		}
	}
	s := &Service{
		cfg: cfg, log: deps.Log.With("service", "webhook"), store: store.New(deps.DB), sealer: deps.Sealer,
		http: deps.HTTP, m: newMetrics(),
		endpoints: map[string]*liveEndpoint{}, byTenant: map[string][]*liveEndpoint{}, lanes: map[string]*lane{},
		enqueue: make(chan enqueueReq, cfg.MaxBatch), results: make(chan resultReq, cfg.MaxBatch),
	}
	if deps.Metrics != nil {
		s.m.register(deps.Metrics)
	}
	if err := s.reload(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Register adds WebhookService to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	mailbusv1.RegisterWebhookServiceServer(r, &api{s: s})
}

// Run consumes mail.events and delivers webhooks until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	r, err := bus.NewRouter(bus.Unhurried(s.cfg.Bus), "webhook", s.log)
	if err != nil {
		return err
	}
	if err := r.Handle("fanout", bus.TopicEvents, bus.Handle(s.handle)); err != nil {
		return err
	}
	// The writers outlive the router's handlers and the lanes, which wait
	// on them; they stop after both.
	wctx, stopWriters := context.WithCancel(context.Background())
	var writers sync.WaitGroup
	writers.Add(2)
	go func() { defer writers.Done(); s.enqueueWriter(wctx) }()
	go func() { defer writers.Done(); s.resultWriter(wctx) }()

	lctx, stopLanes := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); s.maintain(lctx) }()
	s.mu.Lock()
	s.laneCtx = lctx
	s.startLanesLocked()
	s.mu.Unlock()

	err = r.Run(ctx)
	stopLanes()
	bg.Wait()
	s.mu.Lock()
	lanes := s.lanes
	s.lanes, s.laneCtx = map[string]*lane{}, nil
	s.mu.Unlock()
	for _, l := range lanes {
		l.stop()
	}
	stopWriters()
	writers.Wait()
	return err
}

// handle fans one event out to the outbox and returns once its rows are
// committed, so that a record is never acknowledged before its webhooks
// are durable.
func (s *Service) handle(ctx context.Context, _ *message.Message, ev *mailbusv1.DeliveryEvent) error {
	s.mu.Lock()
	var targets []*liveEndpoint
	for _, e := range s.byTenant[ev.GetTenantId()] {
		if wants(e, ev) {
			targets = append(targets, e)
		}
	}
	s.mu.Unlock()
	if len(targets) == 0 {
		s.m.events.WithLabelValues("no_endpoint").Inc()
		return nil
	}
	raw, err := proto.Marshal(ev)
	if err != nil {
		return bus.Permanent(fmt.Errorf("encode event %s: %w", ev.GetEventId(), err))
	}
	body, err := Body(ev, time.Now())
	if err != nil {
		return bus.Permanent(err)
	}
	id := WebhookID(ev)
	req := enqueueReq{done: make(chan error, 1)}
	for _, e := range targets {
		req.rows = append(req.rows, store.Row{WebhookID: id, EndpointID: e.ID, TenantID: ev.GetTenantId(),
			MessageID: ev.GetMessageId(), Event: raw, Body: body})
	}
	select {
	case s.enqueue <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		if err == nil {
			s.m.events.WithLabelValues("enqueued").Inc()
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enqueueWriter writes the rows of many events (from many partitions'
// handlers) in one transaction, then wakes the lanes.
func (s *Service) enqueueWriter(ctx context.Context) {
	batch := make([]enqueueReq, 0, s.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.enqueue:
			batch = append(batch, r)
		}
		batch = fill(batch, s.enqueue, s.cfg.MaxBatch, s.cfg.MaxBatchWait)
		var rows []store.Row
		for _, r := range batch {
			rows = append(rows, r.rows...)
		}
		n, err := s.store.Enqueue(ctx, rows, time.Now())
		if err != nil {
			s.log.Warn("enqueue webhooks", "rows", len(rows), "err", err)
			err = fmt.Errorf("enqueue webhooks: %w", err)
		} else {
			s.m.enqueued.Add(float64(n))
			s.m.duplicates.Add(float64(len(rows) - n))
		}
		for _, r := range batch {
			r.done <- err
		}
		if err == nil {
			s.wakeLanes(rows)
		}
	}
}

// resultWriter records attempts' outcomes in batches; each attempt's
// goroutine waits until its outcome is committed, so its lane's next claim
// sees it (and the message's next event becomes due).
func (s *Service) resultWriter(ctx context.Context) {
	batch := make([]resultReq, 0, s.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.results:
			batch = append(batch, r)
		}
		batch = fill(batch, s.results, s.cfg.MaxBatch, s.cfg.MaxBatchWait)
		res := make([]store.Result, len(batch))
		for i, r := range batch {
			res[i] = r.res
		}
		if err := s.store.Finish(ctx, res, time.Now()); err != nil {
			// The rows stay leased until their lease ends and are posted
			// again then: at least once.
			s.log.Warn("record webhook attempts", "attempts", len(res), "err", err)
		}
		for _, r := range batch {
			close(r.done)
		}
	}
}

func fill[T any](batch []T, ch <-chan T, max int, wait time.Duration) []T {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for len(batch) < max {
		select {
		case r := <-ch:
			batch = append(batch, r)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// maintain reloads endpoints, unblocks rows whose predecessor finished
// while they were enqueued (see store.Unblock), prunes delivered rows and
// updates the outbox gauges until ctx ends.
func (s *Service) maintain(ctx context.Context) {
	t := time.NewTicker(s.cfg.RefreshInterval)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.reload(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reload webhook endpoints", "err", err)
		}
		if time.Since(lastPrune) > time.Hour {
			lastPrune = time.Now()
			if n, err := s.store.Prune(ctx, time.Now().Add(-s.cfg.KeepDelivered)); err != nil {
				s.log.Warn("prune delivered webhooks", "err", err)
			} else if n > 0 {
				s.log.Info("pruned delivered webhooks", "rows", n)
			}
		}
		s.mu.Lock()
		ids := make([]string, 0, len(s.endpoints))
		for id := range s.endpoints {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		for _, id := range ids {
			if n, err := s.store.Unblock(ctx, id); err != nil {
				s.log.Warn("unblock webhooks", "endpoint", id, "err", err)
			} else if n > 0 {
				s.m.unblocked.Add(float64(n))
				s.wakeLanes([]store.Row{{EndpointID: id}})
			}
		}
		if due, dead, err := s.store.Counts(ctx); err == nil {
			s.m.outbox.WithLabelValues("due").Set(float64(due))
			s.m.outbox.WithLabelValues("dead").Set(float64(dead))
		}
	}
}

// reload reads every endpoint and opens its secrets; while the service
// runs, it starts lanes for new endpoints and stops those of deleted ones.
func (s *Service) reload(ctx context.Context) error {
	eps, err := s.store.ListEndpoints(ctx, "")
	if err != nil {
		return err
	}
	live := make(map[string]*liveEndpoint, len(eps))
	byTenant := map[string][]*liveEndpoint{}
	for _, e := range eps {
		le, err := s.open(e)
		if err != nil {
			// One endpoint with a secret that does not open (a key that
			// was dropped) must not stop every other one.
			s.log.Error("open webhook endpoint secret", "endpoint", e.ID, "err", err)
			continue
		}
		live[e.ID] = le
		byTenant[e.TenantID] = append(byTenant[e.TenantID], le)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endpoints, s.byTenant = live, byTenant
	for id, l := range s.lanes {
		if _, ok := live[id]; !ok {
			delete(s.lanes, id)
			go l.stop()
		}
	}
	s.startLanesLocked()
	return nil
}

func (s *Service) startLanesLocked() {
	if s.laneCtx == nil {
		return
	}
	for id := range s.endpoints {
		if _, ok := s.lanes[id]; !ok {
			s.lanes[id] = s.startLane(s.laneCtx, id)
		}
	}
}

func (s *Service) open(e store.Endpoint) (*liveEndpoint, error) {
	le := &liveEndpoint{Endpoint: e}
	var err error
	if le.key, err = s.openSecret(e.ID, e.SealedSecret); err != nil {
		return nil, err
	}
	if len(e.SealedPrevious) > 0 {
		if le.previous, err = s.openSecret(e.ID, e.SealedPrevious); err != nil {
			return nil, err
		}
	}
	return le, nil
}

func (s *Service) openSecret(id string, sealed []byte) ([]byte, error) {
	plain, err := s.sealer.Open(sealed, secretAAD(id))
	if err != nil {
		return nil, fmt.Errorf("open secret of webhook endpoint %s: %w", id, err)
	}
	return sign.Key(string(plain))
}

// secretAAD binds a sealed secret to its endpoint, so a sealed value
// copied to another row does not open.
func secretAAD(id string) []byte { return []byte("mailbus webhook endpoint " + id) }

func (s *Service) endpoint(id string) *liveEndpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endpoints[id]
}

func (s *Service) wakeLanes(rows []store.Row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, r := range rows {
		if l := s.lanes[r.EndpointID]; l != nil && !seen[r.EndpointID] {
			seen[r.EndpointID] = true
			l.wake()
		}
	}
}

func newID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
