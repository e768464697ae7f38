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
	"github.com/mailbus/mailbus/pkg/configclient"
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
	env.Bus.Metrics = env.Metrics // records handled and consumer lag per group
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return obs.ServeAdmin(gctx, Get("MAILBUS_ADMIN_HTTP_ADDR", ":9090"), env.Metrics, env.Health)
	})
	g.Go(func() error {
		err := run(gctx, env)
		stop() // one failing half stops the other
		return err
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
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

// ConfigClient connects the configuration cache (see ConfigConn).
// withSecrets opens sealed secrets with MAILBUS_SECRET_KEY (the sender and
// signer need them; the router does not).
func (e *Env) ConfigClient(ctx context.Context, withSecrets bool) (*configclient.Client, func(), error) {
	var sealer *seal.Sealer
	if withSecrets {
		var err error
		if sealer, err = seal.Parse(os.Getenv(seal.EnvKey)); err != nil {
			return nil, nil, err
		}
	}
	conn, err := e.ConfigConn()
	if err != nil {
		return nil, nil, err
	}
	cc, err := configclient.New(ctx, conn, sealer, configclient.WithLogger(e.Log))
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("load configuration: %w", err)
	}
	return cc, func() { _ = cc.Close(); _ = conn.Close() }, nil
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
