package quota

import (
	"context"

	"github.com/mailbus/mailbus/pkg/infra"
)

// NewApplication is the quota stage's composition root, called by its main
// and by `mailbus dev`. It needs infra's ConfigConn and Redis (the
// counters). The cleanup closes what it opened.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if err := in.NeedRedis("quota"); err != nil {
		return nil, nil, err
	}
	cc, err := in.ConfigCache(ctx)
	if err != nil {
		return nil, nil, err
	}
	svc := New(cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, Config: cc, Redis: in.Redis})
	return svc, func() { _ = cc.Close() }, nil
}
