// Package stack assembles the whole mailbus pipeline in one process: the
// embedded Kafka-protocol broker, Redis (in-process or REDIS_ADDR), the
// config service and MessageService on one gRPC server, every pipeline
// stage, and the mail catcher. `mailbus dev`, the end-to-end tests and
// `mailbus bench` all run this same assembly, so what the tests check is
// what a newcomer runs.
package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/reflection"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/catcher"
	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/obs"
	"github.com/mailbus/mailbus/pkg/redisembed"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/suppress"
	bouncesvc "github.com/mailbus/mailbus/services/bounce"
	"github.com/mailbus/mailbus/services/config"
	"github.com/mailbus/mailbus/services/console"
	"github.com/mailbus/mailbus/services/quota"
	"github.com/mailbus/mailbus/services/router"
	"github.com/mailbus/mailbus/services/sender"
	"github.com/mailbus/mailbus/services/signer"
	"github.com/mailbus/mailbus/services/tracker"
	"github.com/mailbus/mailbus/services/webhook"
)

// Options configure the stack. Empty addresses pick the defaults of
// `mailbus dev`; tests pass "127.0.0.1:0" everywhere.
type Options struct {
	DataDir  string
	SeedFile string
	// KafkaBrokers uses an external Kafka instead of the embedded broker.
	KafkaBrokers []string
	KafkaAddr    string // embedded broker, default 127.0.0.1:9092
	Partitions   int    // default 8
	// RedisAddr uses an external Redis; empty starts an in-process one
	// that keeps its data in DataDir/redis.
	RedisAddr string
	GRPCAddr  string // default 127.0.0.1:7070
	SMTPAddr  string // mail catcher SMTP, default 127.0.0.1:1025
	WebAddr   string // mail catcher web page, default 127.0.0.1:8025
	// BounceAddr is the bounce listener (SMTP for the tenants' bounce
	// domains). Empty picks a free loopback port, so that tests and the
	// benchmark never collide; mailbus dev passes 127.0.0.1:2525.
	BounceAddr string
	// UnsubscribeAddr serves the one-click unsubscribe links (plain HTTP
	// on loopback in development); empty picks a free loopback port.
	UnsubscribeAddr string
	// AdminAddr serves /metrics, /healthz, /readyz; empty disables it.
	AdminAddr string
	// ConsoleAddr is the admin web console. Empty picks a free loopback
	// port, like BounceAddr; mailbus dev passes 127.0.0.1:8080.
	ConsoleAddr string
	// NoCatcher leaves the mail catcher out (tests bring their own SMTP).
	NoCatcher bool
	// CountKafkaRequests makes the embedded broker count its produce and
	// fetch requests for KafkaRequests (make bench).
	CountKafkaRequests bool
	// CountRedisRoundTrips counts the round trips of the stack's Redis
	// client by stage for RedisRoundTrips (make bench).
	CountRedisRoundTrips bool
	// ConfigDatabaseURL, TrackerDatabaseURL and WebhookDatabaseURL default
	// to SQLite files in DataDir.
	ConfigDatabaseURL  string
	TrackerDatabaseURL string
	WebhookDatabaseURL string
	// MaxMessageBytes bounds a built message; 0 means 25 MiB. The Kafka
	// record limit of every stage derives from it (bus.RecordLimit) unless
	// TuneBus sets one.
	MaxMessageBytes int64
	// TuneBus adjusts the bus configuration (tests shorten timeouts).
	TuneBus func(*bus.Config)
	// TuneSender adjusts the sender configuration.
	TuneSender func(*sender.Config)
	// TuneTracker adjusts the tracker's configuration (tests shorten the
	// retention of submissions).
	TuneTracker func(*tracker.Config)
	// TuneBounce adjusts the bounce listener's configuration (its
	// connection limits and idle timeout).
	TuneBounce func(*bouncesvc.Config)
	// TuneQuota adjusts the quota stage's configuration (the complaint
	// guardrail's policy).
	TuneQuota func(*quota.Config)
	Log       *slog.Logger
	Metrics   *prometheus.Registry
}

// Stack is a running pipeline.
type Stack struct {
	Brokers   []string
	GRPCAddr  string
	RedisAddr string
	Catcher   *catcher.Catcher
	Config    *configclient.Client
	Sender    *sender.Service
	Redis     redis.UniversalClient
	// BounceAddr is where the bounce listener accepts SMTP.
	BounceAddr string
	// UnsubscribeURL is the base of the one-click unsubscribe links the
	// router writes into mass mail.
	UnsubscribeURL string
	// ConsoleURL is the admin web console, http://host:port.
	ConsoleURL string
	// Suppressions is the tenants' suppression lists.
	Suppressions *suppress.Store
	// AdminToken is an admin API token (also written to DataDir/admin.token).
	AdminToken string
	// VERPKey signs the VERP return paths.
	VERPKey []byte

	log        *slog.Logger
	runCtx     context.Context
	embedded   *bus.Embedded
	redisTrips *tripCounter

	newSender    func() (*sender.Service, func(), error)
	senderCancel context.CancelFunc
	senderDone   chan struct{}
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	errOnce      sync.Once
	err          error
	done         chan struct{}
	closers      []func()
}

// Start starts everything and returns once it is serving.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = obs.NewRegistry()
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	if o.DataDir == "" {
		o.DataDir = "./.mailbus"
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Stack{log: o.Log, runCtx: ctx, cancel: cancel, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()

	sealer, err := seal.LoadOrCreateKeyFile(filepath.Join(o.DataDir, "secret.key"))
	if err != nil {
		return nil, err
	}
	if s.VERPKey, err = loadOrCreateKey(filepath.Join(o.DataDir, "verp.key")); err != nil {
		return nil, err
	}
	adminTok, err := loadOrCreateToken(filepath.Join(o.DataDir, "admin.token"))
	if err != nil {
		return nil, err
	}
	pipelineTok, err := loadOrCreateToken(filepath.Join(o.DataDir, "pipeline.token"))
	if err != nil {
		return nil, err
	}
	s.AdminToken = adminTok

	// Kafka.
	s.Brokers = o.KafkaBrokers
	if len(s.Brokers) == 0 {
		var emb *bus.Embedded
		var err error
		pprof.Do(ctx, pprof.Labels(ProfileLabel, StageBroker), func(ctx context.Context) {
			emb, err = bus.StartEmbedded(ctx, bus.EmbeddedConfig{
				Addr: orDefault(o.KafkaAddr, "127.0.0.1:9092"), DataDir: filepath.Join(o.DataDir, "kafka"),
				Partitions: o.Partitions, Log: o.Log, CountRequests: o.CountKafkaRequests,
			})
		})
		if err != nil {
			return nil, fmt.Errorf("start embedded Kafka broker: %w", err)
		}
		s.closers = append(s.closers, emb.Close)
		s.Brokers = emb.Addrs()
		s.embedded = emb
	}
	busCfg := bus.Config{Brokers: s.Brokers, ClientID: "mailbus-dev"}
	if o.TuneBus != nil {
		o.TuneBus(&busCfg)
	}
	if busCfg.MaxMessageBytes <= 0 {
		busCfg.MaxMessageBytes = bus.RecordLimit(o.MaxMessageBytes)
	}
	// The bus's metrics are the process's; a registry used by an earlier
	// Start has them already.
	var already prometheus.AlreadyRegisteredError
	for _, c := range bus.Collectors() {
		if err := o.Metrics.Register(c); err != nil && !errors.As(err, &already) {
			return nil, fmt.Errorf("register bus metrics: %w", err)
		}
	}
	if busCfg.Metrics == nil {
		busCfg.Metrics = o.Metrics // records handled and consumer lag per group
	}
	if err := bus.EnsureTopics(ctx, busCfg, bus.AllTopics(), o.Partitions); err != nil {
		return nil, err
	}

	// Redis.
	s.RedisAddr = o.RedisAddr
	if s.RedisAddr == "" {
		// The pipeline's memory of what it already did is in Redis: the
		// sender's record of finished attempts, quota's decisions, relay
		// failures, suppression lists. The embedded server keeps it in the
		// data directory, written through before every reply, so that a
		// crash or a restart of mailbus dev neither resends what was sent
		// nor forgets an idempotency id.
		addr, stop, err := redisembed.Start("127.0.0.1:0",
			redisembed.WithDataDir(filepath.Join(o.DataDir, "redis")), redisembed.WithLogger(o.Log))
		if err != nil {
			return nil, fmt.Errorf("start in-process Redis: %w", err)
		}
		s.closers = append(s.closers, stop)
		s.RedisAddr = addr
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.RedisAddr})
	if o.CountRedisRoundTrips {
		s.redisTrips = &tripCounter{trips: map[string]*atomic.Int64{}}
		rdb.AddHook(s.redisTrips)
	}
	s.Redis = rdb
	s.closers = append(s.closers, func() { _ = rdb.Close() })

	// Config service and MessageService on one gRPC server.
	cfgSvc := config.New(config.Config{
		DatabaseURL: orDefault(o.ConfigDatabaseURL, "sqlite://"+filepath.Join(o.DataDir, "config.db")),
		SeedFile:    o.SeedFile,
		Tokens: map[string]auth.Identity{
			adminTok:    {Role: auth.RoleAdmin, Name: "dev-admin"},
			pipelineTok: {Role: auth.RolePipeline, Name: "dev-pipeline"},
		},
	}, config.Deps{Log: o.Log, Sealer: sealer, Metrics: o.Metrics})
	if err := cfgSvc.Start(ctx); err != nil {
		return nil, fmt.Errorf("start config service: %w", err)
	}
	s.closers = append(s.closers, func() { _ = cfgSvc.Close() })
	trkCfg := tracker.Config{
		Bus: busCfg, DatabaseURL: orDefault(o.TrackerDatabaseURL, "sqlite://"+filepath.Join(o.DataDir, "messages.db")),
	}
	if o.TuneTracker != nil {
		o.TuneTracker(&trkCfg)
	}
	trk, closeTrk, err := tracker.NewApplication(ctx, trkCfg, infra.Infra{Log: o.Log, Metrics: o.Metrics, Redis: rdb})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeTrk)
	// Development: endpoints may be http:// (a receiver on the laptop).
	whk, closeWhk, err := webhook.NewApplication(ctx, webhook.Config{
		Bus: busCfg, DatabaseURL: orDefault(o.WebhookDatabaseURL, "sqlite://"+filepath.Join(o.DataDir, "webhook.db")),
		AllowHTTP: true,
	}, infra.Infra{Log: o.Log, Metrics: o.Metrics, Sealer: sealer})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeWhk)
	gsrv := grpc.NewServer(cfgSvc.ServerOptions()...)
	cfgSvc.Register(gsrv)
	trk.Register(gsrv)
	whk.Register(gsrv)
	// SuppressionService shares the config server's authentication.
	s.Suppressions = suppress.New(rdb)
	mailbusv1.RegisterSuppressionServiceServer(gsrv, bouncesvc.NewSuppressionServer(s.Suppressions, o.Log))
	lis, err := net.Listen("tcp", orDefault(o.GRPCAddr, "127.0.0.1:7070"))
	if err != nil {
		return nil, fmt.Errorf("listen for gRPC: %w", err)
	}
	s.GRPCAddr = lis.Addr().String()
	// Reflection lets grpcurl, buf curl and IDEs call the API without the
	// proto files.
	reflection.Register(gsrv)
	// The server stops after every configuration cache closed (closers run
	// in reverse), so that no change stream sees it go away and warns on
	// an orderly shutdown.
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := gsrv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) && s.runCtx.Err() == nil {
			s.fail(fmt.Errorf("grpc: %w", err))
		}
	}()
	s.closers = append(s.closers, func() {
		gsrv.Stop()
		<-served
	})

	// The pipeline reads configuration from a local cache fed by the
	// change stream, like any replica in production.
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: pipelineTok, AllowInsecure: true}))
	if err != nil {
		return nil, fmt.Errorf("connect to config service: %w", err)
	}
	s.closers = append(s.closers, func() { _ = conn.Close() })
	cc, err := configclient.New(ctx, conn, sealer, configclient.WithLogger(o.Log))
	if err != nil {
		return nil, fmt.Errorf("load configuration: %w", err)
	}
	s.Config = cc
	s.closers = append(s.closers, func() { _ = cc.Close() })

	if !o.NoCatcher {
		c, err := catcher.New(catcher.Config{SMTPAddr: orDefault(o.SMTPAddr, "127.0.0.1:1025"), HTTPAddr: orDefault(o.WebAddr, "127.0.0.1:8025")}, o.Log)
		if err != nil {
			return nil, err
		}
		s.Catcher = c
		s.goRun("catcher", c.Run)
	}

	// Every stage is built by its own composition root, as its main builds
	// it, from the embedded infrastructure; each keeps its own
	// configuration cache, as a replica in production does.
	in := infra.Infra{Log: o.Log, Metrics: o.Metrics, ConfigConn: conn, Sealer: sealer, Redis: rdb}
	senderCfg := sender.Config{Bus: busCfg, HeloName: "mailbus.local"}
	if o.TuneSender != nil {
		o.TuneSender(&senderCfg)
	}
	// A restarted sender registers no metrics: the first one holds the
	// names in the registry.
	restartIn := in
	restartIn.Metrics = nil
	s.newSender = func() (*sender.Service, func(), error) {
		return sender.NewApplication(s.runCtx, senderCfg, restartIn)
	}
	snd, closeSnd, err := sender.NewApplication(ctx, senderCfg, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeSnd)
	s.Sender = snd
	quotaCfg := quota.Config{Bus: busCfg}
	if o.TuneQuota != nil {
		o.TuneQuota(&quotaCfg)
	}
	qta, closeQta, err := quota.NewApplication(ctx, quotaCfg, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeQta)
	sgn, closeSgn, err := signer.NewApplication(ctx, signer.Config{Bus: busCfg}, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeSgn)
	bounceCfg := bouncesvc.Config{Bus: busCfg, Addr: orDefault(o.BounceAddr, "127.0.0.1:0"), VERPKeys: [][]byte{s.VERPKey},
		UnsubscribeAddr: orDefault(o.UnsubscribeAddr, "127.0.0.1:0")}
	if o.TuneBounce != nil {
		o.TuneBounce(&bounceCfg)
	}
	bnc, closeBnc, err := bouncesvc.NewApplication(ctx, bounceCfg, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeBnc)
	baddr, err := bnc.Listen()
	if err != nil {
		return nil, err
	}
	s.BounceAddr = baddr.String()
	uaddr, err := bnc.ListenUnsubscribe()
	if err != nil {
		return nil, err
	}
	// The router writes the links, so it starts once their address is
	// known.
	s.UnsubscribeURL = "http://" + uaddr.String() + "/unsubscribe/"
	rtr, closeRtr, err := router.NewApplication(ctx, router.Config{Bus: busCfg, VERPKey: s.VERPKey, MaxMessageBytes: o.MaxMessageBytes, UnsubscribeURL: s.UnsubscribeURL}, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeRtr)
	// The console calls the one gRPC server as whoever signed in to it,
	// as it calls the three services in production.
	con, closeCon, err := console.NewApplication(ctx, console.Config{Addr: orDefault(o.ConsoleAddr, "127.0.0.1:0")},
		console.Endpoints{Config: s.GRPCAddr, Messages: s.GRPCAddr, Suppressions: s.GRPCAddr, Webhooks: s.GRPCAddr}, in)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, closeCon)
	caddr, err := con.Listen()
	if err != nil {
		return nil, err
	}
	s.ConsoleURL = "http://" + caddr.String()

	s.goRun("router", rtr.Run)
	s.goRun("quota", qta.Run)
	s.goRun("signer", sgn.Run)
	s.startSender(s.Sender)
	s.goRun("tracker", trk.Run)
	s.goRun("webhook", whk.Run)
	s.goRun("bounce", bnc.Run)
	s.goRun("console", con.Run)
	if o.AdminAddr != "" {
		var h obs.Health
		h.SetReady(true)
		s.goRun("admin", func(ctx context.Context) error { return obs.ServeAdmin(ctx, o.AdminAddr, o.Metrics, &h) })
	}
	ok = true
	return s, nil
}

func (s *Stack) startSender(svc *sender.Service) {
	ctx, cancel := context.WithCancel(s.runCtx)
	done := make(chan struct{})
	s.senderCancel, s.senderDone = cancel, done
	s.wg.Add(1)
	go pprof.Do(ctx, pprof.Labels(ProfileLabel, "sender"), func(ctx context.Context) {
		defer s.wg.Done()
		defer close(done)
		if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
			s.fail(fmt.Errorf("sender: %w", err))
		}
	})
}

// KillSender stops the sender abruptly, as a crash would: in-flight SMTP
// transactions are cut, and their records are neither acknowledged nor
// committed, so they are consumed again after RestartSender.
func (s *Stack) KillSender() {
	s.senderCancel()
	<-s.senderDone
}

// RestartSender starts a new sender after KillSender, as a new replica
// would start.
func (s *Stack) RestartSender() {
	snd, closeSnd, err := s.newSender()
	if err != nil {
		s.fail(fmt.Errorf("restart sender: %w", err))
		return
	}
	s.closers = append(s.closers, closeSnd)
	s.Sender = snd
	s.startSender(s.Sender)
}

// ProfileLabel is the pprof label that says which component of the stack
// a goroutine works for. goRun sets it on each service's Run, and every
// goroutine a service starts inherits it — its Kafka client's, its Redis
// pool's, its signing workers' — so that a CPU profile of `mailbus dev`
// (make bench) splits by service whatever library the time went in.
const ProfileLabel = "mailbus_stage"

// StageBroker labels the embedded Kafka broker's goroutines.
const StageBroker = "kafka broker (embedded)"

func (s *Stack) goRun(name string, run func(context.Context) error) {
	s.wg.Add(1)
	go pprof.Do(s.runCtx, pprof.Labels(ProfileLabel, name), func(ctx context.Context) {
		defer s.wg.Done()
		err := run(ctx)
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, grpc.ErrServerStopped) && s.runCtx.Err() == nil {
			s.fail(fmt.Errorf("%s: %w", name, err))
		}
	})
}

func (s *Stack) fail(err error) {
	s.errOnce.Do(func() {
		s.err = err
		close(s.done)
		s.cancel()
	})
}

// Done is closed when a component failed; Err says which and why.
func (s *Stack) Done() <-chan struct{} { return s.done }

// Err is the first component failure.
func (s *Stack) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close stops every component and waits for them.
func (s *Stack) Close() {
	s.cancel()
	s.wg.Wait()
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

func loadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return hex.DecodeString(strings.TrimSpace(string(b)))
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return k, nil
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	tok, err := auth.NewToken()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tok, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// WaitTimeout is how long Start's callers typically wait for a message to
// go through in tests; exported so tests agree.
const WaitTimeout = 60 * time.Second

// KafkaRequests returns the produce and fetch requests the embedded broker
// has answered; ok is false on an external Kafka or without
// Options.CountKafkaRequests.
func (s *Stack) KafkaRequests() (produce, fetch int64, ok bool) {
	if s.embedded == nil {
		return 0, 0, false
	}
	return s.embedded.Requests()
}

// RedisRoundTrips returns the round trips of the stack's Redis client so
// far by stage (a command, a pipeline or a transaction each), and whether
// they were counted: see Options.CountRedisRoundTrips.
func (s *Stack) RedisRoundTrips() (map[string]int64, bool) {
	if s.redisTrips == nil {
		return nil, false
	}
	return s.redisTrips.counts(), true
}
