package webhook

import (
	"context"
	"errors"

	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// NewApplication is the webhook service's composition root, called by its
// main and by `mailbus dev`: it opens and migrates the store at
// cfg.DatabaseURL and builds the service, whose Register serves
// WebhookService on the caller's gRPC server. It needs the Sealer (endpoint
// secrets are sealed at rest), the logger and metrics from infra. The
// cleanup closes the database.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if cfg.DatabaseURL == "" {
		return nil, nil, errors.New("build webhook service: no database URL (DATABASE_URL)")
	}
	if in.Sealer == nil {
		return nil, nil, errors.New("build webhook service: no secret key to seal endpoint secrets (MAILBUS_SECRET_KEY)")
	}
	db, err := sqlstore.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	svc, err := New(ctx, cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, DB: db, Sealer: in.Sealer})
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return svc, func() { _ = db.Close() }, nil
}
