package tracker

import (
	"context"
	"errors"
	"fmt"

	"github.com/mailbus/mailbus/pkg/bus"

	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// NewApplication is the tracker's composition root, called by its main and
// by `mailbus dev`: it opens and migrates the message log at
// cfg.DatabaseURL and builds the tracker, whose Register serves
// MessageService on the caller's gRPC server. It needs infra's Redis for
// the cancel markers, and opens a Kafka publisher for retries. The cleanup
// closes both and the database.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if cfg.DatabaseURL == "" {
		return nil, nil, errors.New("build tracker: no message log database URL (DATABASE_URL)")
	}
	if err := in.NeedRedis("tracker"); err != nil {
		return nil, nil, err
	}
	db, err := sqlstore.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	pub, err := bus.NewPublisher(cfg.Bus, in.Logger())
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("build tracker: publisher for retries: %w", err)
	}
	svc, err := New(ctx, cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, DB: db, Publisher: pub, Redis: in.Redis})
	if err != nil {
		_ = pub.Close()
		_ = db.Close()
		return nil, nil, err
	}
	return svc, func() { _ = pub.Close(); _ = db.Close() }, nil
}
