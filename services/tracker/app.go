package tracker

import (
	"context"
	"errors"

	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// NewApplication is the tracker's composition root, called by its main and
// by `mailbus dev`: it opens and migrates the message log at
// cfg.DatabaseURL and builds the tracker, whose Register serves
// MessageService on the caller's gRPC server. It needs nothing from infra
// but the logger and metrics. The cleanup closes the database.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if cfg.DatabaseURL == "" {
		return nil, nil, errors.New("build tracker: no message log database URL (DATABASE_URL)")
	}
	db, err := sqlstore.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	svc, err := New(ctx, cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, DB: db})
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return svc, func() { _ = db.Close() }, nil
}
