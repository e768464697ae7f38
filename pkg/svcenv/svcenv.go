// Package svcenv is what every service's main shares: reading the standard
// environment (KAFKA_BROKERS, REDIS_ADDR, MAILBUS_CONFIG_ADDR, ...) into
// typed configuration, connecting the configuration cache, serving the
// admin endpoints, and running until SIGTERM. Mains only parse and wire;
// nothing here decides anything about mail.
//
// Environment:
//
//	KAFKA_BROKERS            bootstrap brokers, comma separated (default 127.0.0.1:9092)
//	REDIS_ADDR               Redis address (default 127.0.0.1:6379)
//	MAILBUS_CONFIG_ADDR      config service gRPC address (default 127.0.0.1:7070)
//	MAILBUS_PIPELINE_TOKEN   API token with the pipeline role
//	MAILBUS_SECRET_KEY       key that opens sealed secrets (sender, signer)
//	MAILBUS_CONFIG_TLS       "true" to reach the config service over TLS (system roots)
//	MAILBUS_ADMIN_HTTP_ADDR  /metrics, /healthz, /readyz (default :9090; empty disables)
//	MAILBUS_TOPIC_PARTITIONS partitions of the topics a service creates at start when they
//	                         do not exist (default 16; 0 leaves topic creation to the operator)
//	MAILBUS_MAX_MESSAGE_BYTES  largest email accepted, in octets after encoding (default 25 MiB);
//	                         every service's Kafka record limit derives from it (bus.RecordLimit),
//	                         so give every service the same value
//	MAILBUS_LOG_FORMAT, MAILBUS_LOG_LEVEL
package svcenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/obs"
	"github.com/mailbus/mailbus/pkg/seal"
)

// Env is a service's environment, resolved.
type Env struct {
	Name    string
	Log     *slog.Logger
	Metrics *prometheus.Registry
	Health  *obs.Health
	Bus     bus.Config
	// MaxMailBytes is MAILBUS_MAX_MESSAGE_BYTES, 0 when unset (the mail
	// package's default); Bus.MaxMessageBytes derives from it.
	MaxMailBytes int64
}

// Get returns os.Getenv(key), or def when it is empty.
func Get(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Main runs a service: it builds the Env, serves the admin endpoints, calls
// run until SIGTERM or SIGINT, and exits 1 with the error when run fails.
func Main(name string, run func(ctx context.Context, env *Env) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &Env{
		Name:    name,
		Log:     obs.NewLogger(os.Stderr, obs.LogConfigFromEnv()).With("service", name),
		Metrics: obs.NewRegistry(),
		Health:  &obs.Health{},
		Bus:     bus.Config{Brokers: strings.Split(Get("KAFKA_BROKERS", "127.0.0.1:9092"), ","), ClientID: "mailbus-" + name},
	}
	if v := os.Getenv("MAILBUS_MAX_MESSAGE_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "%s: MAILBUS_MAX_MESSAGE_BYTES=%q: want a positive number of octets\n", name, v)
			os.Exit(2)
		}
		env.MaxMailBytes = n
	}
	env.Bus.MaxMessageBytes = bus.RecordLimit(env.MaxMailBytes)
	env.Metrics.MustRegister(bus.Collectors()...)
	env.Bus.Metrics = env.Metrics // records handled and consumer lag per group
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return obs.ServeAdmin(gctx, Get("MAILBUS_ADMIN_HTTP_ADDR", ":9090"), env.Metrics, env.Health)
	})
	g.Go(func() error {
		if err := env.ensureTopics(gctx); err != nil {
			stop()
			return err
		}
		err := run(gctx, env)
		stop() // one failing half stops the other
		return err
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// ensureTopics creates the pipeline's topics that do not exist yet, so
// that a fresh cluster gets them with the partition count and record size
// the pipeline needs rather than the broker's auto-creation defaults (one
// partition, 1 MB records). Every service does it; creating an existing
// topic is a no-op.
func (e *Env) ensureTopics(ctx context.Context) error {
	n, err := strconv.Atoi(Get("MAILBUS_TOPIC_PARTITIONS", "16"))
	if err != nil || n < 0 {
		return fmt.Errorf("MAILBUS_TOPIC_PARTITIONS: want a number of partitions, got %q", os.Getenv("MAILBUS_TOPIC_PARTITIONS"))
	}
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := bus.EnsureTopics(ctx, e.Bus, bus.AllTopics(), n); err != nil {
		return fmt.Errorf("create the pipeline's topics on %v: %w", e.Bus.Brokers, err)
	}
	return nil
}

// Need says which parts of the infrastructure a service uses.
type Need struct {
	// Config connects to ConfigService with the pipeline token.
	Config bool
	// Secrets opens sealed secrets with MAILBUS_SECRET_KEY.
	Secrets bool
	// Redis connects to REDIS_ADDR.
	Redis bool
}

// Infra connects what need asks for and returns it for the service's
// composition root, with a cleanup that closes it.
func (e *Env) Infra(ctx context.Context, need Need) (infra.Infra, func(), error) {
	in := infra.Infra{Log: e.Log, Metrics: e.Metrics}
	var closers []func()
	cleanup := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if need.Secrets {
		sealer, err := seal.Parse(os.Getenv(seal.EnvKey))
		if err != nil {
			return in, nil, err
		}
		in.Sealer = sealer
	}
	if need.Config {
		conn, err := e.ConfigConn()
		if err != nil {
			return in, nil, err
		}
		closers = append(closers, func() { _ = conn.Close() })
		in.ConfigConn = conn
	}
	if need.Redis {
		rdb, err := e.Redis(ctx)
		if err != nil {
			cleanup()
			return in, nil, err
		}
		closers = append(closers, func() { _ = rdb.Close() })
		in.Redis = rdb
	}
	return in, cleanup, nil
}

// Redis connects to REDIS_ADDR.
func (e *Env) Redis(ctx context.Context) (redis.UniversalClient, error) {
	addr := Get("REDIS_ADDR", "127.0.0.1:6379")
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: strings.Split(addr, ",")})
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", addr, err)
	}
	return rdb, nil
}

// ConfigConn connects to the config service at MAILBUS_CONFIG_ADDR with the
// pipeline token (MAILBUS_PIPELINE_TOKEN), over TLS when MAILBUS_CONFIG_TLS
// is "true".
func (e *Env) ConfigConn() (*grpc.ClientConn, error) {
	addr := Get("MAILBUS_CONFIG_ADDR", "127.0.0.1:7070")
	tok := os.Getenv("MAILBUS_PIPELINE_TOKEN")
	if tok == "" {
		return nil, errors.New("MAILBUS_PIPELINE_TOKEN is not set: the pipeline authenticates to the config service with it")
	}
	useTLS := Get("MAILBUS_CONFIG_TLS", "") == "true"
	creds := insecure.NewCredentials()
	if useTLS {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: tok, AllowInsecure: !useTLS}),
		// A silently dead connection must be noticed, or the cache would
		// stop following changes without anyone knowing.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("connect to config service at %s: %w", addr, err)
	}
	return conn, nil
}

// ServeGRPC serves the services register adds on addr, authenticating
// every call with the API tokens of the environment (MAILBUS_ADMIN_TOKEN
// for the admin role), until ctx ends; then it stops gracefully.
func (e *Env) ServeGRPC(ctx context.Context, addr string, register func(grpc.ServiceRegistrar)) error {
	table := map[string]auth.Identity{}
	if t := os.Getenv("MAILBUS_ADMIN_TOKEN"); t != "" {
		table[t] = auth.Identity{Role: auth.RoleAdmin, Name: "MAILBUS_ADMIN_TOKEN"}
	}
	tokens, err := auth.NewTokens(table)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(auth.NewInterceptor(tokens, auth.IsPublic).ServerOptions()...)
	register(srv)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for gRPC on %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, srv.GracefulStop)
	defer stop()
	if err := srv.Serve(lis); err != nil {
		return fmt.Errorf("serve gRPC on %s: %w", addr, err)
	}
	return nil
}
