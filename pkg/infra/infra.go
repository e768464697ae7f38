// Package infra names the infrastructure a mailbus service is built from.
// Every service has one composition root, NewApplication(ctx, cfg, infra),
// that builds the service from an Infra and returns it with a cleanup;
// the service's main fills the Infra from the environment (pkg/svcenv) and
// `mailbus dev` from its embedded parts. So the wiring of a service is
// written once, and the process an operator runs is the one the dev stack
// and its tests run.
package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/seal"
)

// Infra is the infrastructure of one service. A field a service does not
// use may be left empty; NewApplication says which it needs.
type Infra struct {
	Log *slog.Logger
	// Metrics registers the service's metrics; nil means none.
	Metrics prometheus.Registerer
	// ConfigConn reaches ConfigService with the pipeline role.
	ConfigConn grpc.ClientConnInterface
	// Sealer opens sealed secrets (relay passwords, DKIM private keys); only
	// the stages that use them get one.
	Sealer *seal.Sealer
	// Redis holds the shared counters, suppression lists and idempotency
	// records.
	Redis redis.UniversalClient
}

// Logger returns the logger, or one that discards.
func (i Infra) Logger() *slog.Logger {
	if i.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return i.Log
}

// ConfigCache connects a configuration cache (snapshot plus change stream)
// over ConfigConn, opening sealed secrets when the Infra has a Sealer.
func (i Infra) ConfigCache(ctx context.Context) (*configclient.Client, error) {
	if i.ConfigConn == nil {
		return nil, errors.New("load configuration: no connection to the config service")
	}
	cc, err := configclient.New(ctx, i.ConfigConn, i.Sealer, configclient.WithLogger(i.Logger()))
	if err != nil {
		return nil, fmt.Errorf("load configuration: %w", err)
	}
	return cc, nil
}

// NeedRedis fails clearly when a service that keeps state in Redis got none.
func (i Infra) NeedRedis(service string) error {
	if i.Redis == nil {
		return fmt.Errorf("build %s: no Redis client", service)
	}
	return nil
}
