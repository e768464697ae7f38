package router

import (
	"context"

	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/suppress"
)

// NewApplication is the router's composition root, called by its main and
// by `mailbus dev`. It needs infra's ConfigConn (no sealer: the router
// reads no secrets) and Redis (relay health, suppression lists). The
// cleanup closes what it opened.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if err := in.NeedRedis("router"); err != nil {
		return nil, nil, err
	}
	cc, err := in.ConfigCache(ctx)
	if err != nil {
		return nil, nil, err
	}
	log := in.Logger()
	// The ledger restores the relays disabled for the day when Redis has
	// lost them (see pkg/limits).
	ledger := limits.NewKafkaLedger(cfg.Bus, log)
	svc := New(cfg, Deps{
		Log: log, Metrics: in.Metrics, Config: cc,
		Health:       health.New(in.Redis, limits.New(in.Redis, limits.WithLedger(ledger)), health.Options{Log: log}),
		Suppressions: suppress.New(in.Redis),
	})
	return svc, func() { _ = ledger.Close(); _ = cc.Close() }, nil
}
