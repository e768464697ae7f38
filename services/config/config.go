// Package config is the mailbus configuration service. It owns tenants,
// domains, DKIM keys, relays and the default server, stores them in SQLite
// or PostgreSQL with secrets sealed (pkg/seal), and serves them over the
// gRPC ConfigService to operators (CRUD, with validation and plan caps) and
// to the pipeline (a snapshot plus a change stream, which pkg/configclient
// turns into a local cache).
//
// Run it on its own:
//
//	svc := config.New(config.Config{GRPCAddr: ":9090", DatabaseURL: url, Tokens: tokens},
//		config.Deps{Log: log, Sealer: sealer})
//	err := svc.Run(ctx) // until ctx is cancelled, then a graceful stop
//
// or inside another process (mailbus dev) on a listener of its choice with
// Serve, or on a shared grpc.Server with Start, ServerOptions and Register.
//
// Every write appends to config_changes in its own transaction; WatchChanges
// polls that table (and is woken at once by writes of the same process), so
// any number of replicas serve the same stream.
package config

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mailbus/mailbus/pkg/auth"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/services/config/internal/dnscheck"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

// Store is the configuration store (SQLite or PostgreSQL).
type Store = store.Store

// OpenStore opens (and migrates) the store at url: "sqlite:///path/config.db",
// a plain file path, or "postgres://...". Secrets are sealed with sealer.
func OpenStore(ctx context.Context, url string, sealer *seal.Sealer) (*Store, error) {
	return store.Open(ctx, url, sealer)
}

// Config configures the service.
type Config struct {
	// GRPCAddr is where Run listens, for example ":9090".
	GRPCAddr string
	// DatabaseURL is the store (see OpenStore). Ignored when Deps.Store is set.
	DatabaseURL string
	// SeedFile, when set, is a YAML seed (see Seed) applied at start; its
	// tokens join Tokens.
	SeedFile string
	// Tokens are the API tokens: token, or "sha256:<hex>" of it, to
	// identity. With no tokens at all every call is refused.
	Tokens map[string]auth.Identity
	// PollInterval is how often change streams look for writes made by
	// other replicas (default 1s). Writes of this process wake them at once.
	PollInterval time.Duration
	// ShutdownTimeout bounds the graceful stop (default 10s).
	ShutdownTimeout time.Duration
	// RelayTestRootCAs verifies relays' certificates in TestRelay; nil
	// means the system roots, as the sender uses. Tests add their own CA.
	RelayTestRootCAs *x509.CertPool
	// RelayTestTimeout bounds one TestRelay call (default 60s).
	RelayTestTimeout time.Duration
	// DNSServers are the name servers ("host:port") CheckDomain asks;
	// empty means those of /etc/resolv.conf.
	DNSServers []string
	// BounceMXHost is the public host name of the bounce service, which
	// the tenants' bounce domains' MX must point at; empty means unknown
	// (the check then cannot say whether an MX is right).
	BounceMXHost string
	// SendingAddrs are the public addresses direct MX delivery leaves
	// from, whose PTR and forward DNS the check verifies.
	SendingAddrs []netip.Addr
	// DNSCheckInterval is how often every domain is checked when
	// Deps.Events is set (default 6h).
	DNSCheckInterval time.Duration
}

// Deps are the service's collaborators.
type Deps struct {
	// Log is required.
	Log *slog.Logger
	// Sealer seals secrets at rest; required unless Store is given.
	Sealer *seal.Sealer
	// Store, when set, is used instead of opening Config.DatabaseURL; the
	// caller keeps ownership (Close does not close it).
	Store *Store
	// Metrics registers the RPC metrics; nil leaves them unregistered.
	Metrics prometheus.Registerer
	// Events, when set, receives a domain_dns_error warning on mail.events
	// when the periodic DNS check finds that a record that was right went
	// missing or wrong; without it there is no periodic check.
	Events message.Publisher
}

// Service is the config service.
type Service struct {
	cfg  Config
	deps Deps
	log  *slog.Logger

	mu          sync.Mutex
	started     bool
	store       *Store
	ownStore    bool
	interceptor *auth.Interceptor
	metrics     *rpcMetrics
	stopping    chan struct{}
	stopOnce    sync.Once
	monitors    sync.WaitGroup
}

// New builds the service. Nothing is opened until Start, Serve or Run.
func New(cfg Config, deps Deps) *Service {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.RelayTestTimeout <= 0 {
		cfg.RelayTestTimeout = time.Minute
	}
	if cfg.DNSCheckInterval <= 0 {
		cfg.DNSCheckInterval = 6 * time.Hour
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, deps: deps, log: log.With("service", "config"), stopping: make(chan struct{})}
}

// Start opens and migrates the store, applies the seed file and builds the
// token table. It is idempotent; Serve and Run call it.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return nil
	}
	st := s.deps.Store
	if st == nil {
		if s.deps.Sealer == nil {
			return errors.New("config: Deps.Sealer is required (set MAILBUS_SECRET_KEY)")
		}
		var err error
		if st, err = OpenStore(ctx, s.cfg.DatabaseURL, s.deps.Sealer); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		s.ownStore = true
	}
	// After a key rotation, move every secret to the current key so that
	// the old key can be retired.
	if n, err := st.Reseal(ctx); err != nil {
		s.closeOwnedStore(st)
		return fmt.Errorf("config: re-sealing secrets with key %d: %w", st.Sealer().KeyID(), err)
	} else if n > 0 {
		s.log.InfoContext(ctx, "re-sealed secrets with the current key", "secrets", n, "key_id", st.Sealer().KeyID())
	}
	tokens := s.cfg.Tokens
	if s.cfg.SeedFile != "" {
		res, err := SeedFromFile(ctx, st, s.cfg.SeedFile)
		if err != nil {
			s.closeOwnedStore(st)
			return fmt.Errorf("config: %w", err)
		}
		s.log.InfoContext(ctx, "applied seed", "file", s.cfg.SeedFile, "changes", res.Changes, "tokens", len(res.Tokens))
		if tokens, err = mergeTokens(tokens, res.Tokens); err != nil {
			s.closeOwnedStore(st)
			return fmt.Errorf("config: seed %s: %w", s.cfg.SeedFile, err)
		}
	}
	table, err := auth.NewTokens(tokens)
	if err != nil {
		s.closeOwnedStore(st)
		return fmt.Errorf("config: API tokens: %w", err)
	}
	if table.Len() == 0 {
		s.log.WarnContext(ctx, "no API tokens configured; every call except health checks is refused")
	}
	metrics, err := newRPCMetrics(s.deps.Metrics)
	if err != nil {
		s.closeOwnedStore(st)
		return fmt.Errorf("config: registering metrics: %w", err)
	}
	s.store, s.interceptor, s.metrics, s.started = st, auth.NewInterceptor(table, nil), metrics, true
	return nil
}

func (s *Service) closeOwnedStore(st *Store) {
	if s.deps.Store == nil {
		_ = st.Close()
	}
	s.ownStore = false
}

func mergeTokens(a, b map[string]auth.Identity) (map[string]auth.Identity, error) {
	out := make(map[string]auth.Identity, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if prev, dup := out[k]; dup && prev != v {
			return nil, fmt.Errorf("token for %s is also configured for %s", v, prev)
		}
		out[k] = v
	}
	return out, nil
}

func (s *Service) mustBeStarted(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		panic("config: " + what + " called before Start")
	}
}

// Store returns the store; valid after Start.
func (s *Service) Store() *Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

// ServerOptions returns the interceptors (metrics, then authentication)
// that a grpc.Server hosting the service must install. Call after Start.
func (s *Service) ServerOptions() []grpc.ServerOption {
	s.mustBeStarted("ServerOptions")
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.metrics.unary(), s.interceptor.Unary()),
		grpc.ChainStreamInterceptor(s.metrics.stream(), s.interceptor.Stream()),
	}
}

// Register registers ConfigService on r. Call after Start, on a server built
// with ServerOptions; call Close before stopping that server gracefully, so
// that change streams end.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	s.mustBeStarted("Register")
	srv := &server{
		store:        s.store,
		log:          s.log,
		pollInterval: s.cfg.PollInterval,
		stopping:     s.stopping,
		tester:       relayTester{rootCAs: s.cfg.RelayTestRootCAs, timeout: s.cfg.RelayTestTimeout},
		checker: dnscheck.New(dnscheck.Options{
			Resolver:     &resolve.Resolver{Servers: s.cfg.DNSServers},
			BounceMXHost: s.cfg.BounceMXHost,
			SendingAddrs: s.cfg.SendingAddrs,
		}),
	}
	pb.RegisterConfigServiceServer(r, srv)
	if s.deps.Events != nil {
		s.startDNSMonitor(srv)
	}
}

// startDNSMonitor runs the periodic DNS check until Close.
func (s *Service) startDNSMonitor(srv *server) {
	m := &dnsMonitor{srv: srv, pub: s.deps.Events, interval: s.cfg.DNSCheckInterval, log: s.log, now: time.Now,
		prev: map[string]map[string]pb.DnsCheckStatus{}}
	ctx, cancel := context.WithCancel(context.Background())
	s.monitors.Add(1)
	go func() {
		defer s.monitors.Done()
		defer cancel()
		go func() { <-s.stopping; cancel() }()
		m.run(ctx, s.stopping)
	}()
}

// Serve starts the service if needed and serves ConfigService and the gRPC
// health service on lis until ctx is cancelled; then it stops gracefully
// (bounded by ShutdownTimeout) and closes the store it opened.
func (s *Service) Serve(ctx context.Context, lis net.Listener) error {
	if err := s.Start(ctx); err != nil {
		_ = lis.Close()
		return err
	}
	defer s.Close()
	srv := grpc.NewServer(s.ServerOptions()...)
	s.Register(srv)
	hs := health.NewServer()
	hs.SetServingStatus(pb.ConfigService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	s.log.InfoContext(ctx, "serving ConfigService", "addr", lis.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("config: serving gRPC: %w", err)
	case <-ctx.Done():
	}
	hs.Shutdown()
	s.stop()
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("graceful stop timed out; closing connections")
		srv.Stop()
	}
	return nil
}

// Run listens on Config.GRPCAddr and serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	if s.cfg.GRPCAddr == "" {
		return errors.New("config: GRPCAddr is required")
	}
	lis, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("config: listening on %s: %w", s.cfg.GRPCAddr, err)
	}
	return s.Serve(ctx, lis)
}

func (s *Service) stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// Close ends the change streams and closes the store if the service opened
// it. Serve and Run call it on the way out.
func (s *Service) Close() error {
	s.stop()
	s.monitors.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ownStore && s.store != nil {
		s.ownStore = false
		return s.store.Close()
	}
	return nil
}
