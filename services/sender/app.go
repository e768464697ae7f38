package sender

import (
	"context"
	"errors"

	"github.com/mailbus/mailbus/pkg/bounce"
	"github.com/mailbus/mailbus/pkg/infra"
)

// NewApplication is the sender's composition root, called by its main and
// by `mailbus dev`. It needs infra's ConfigConn, Sealer (relay passwords
// and tokens are sealed) and Redis (what was sent, relay failures). SMTP
// replies are classified with the bounce parser's rules, so a 5xx at send
// time and a bounce that comes back later read the same. Direct MX delivery
// honours the recipient domains' MTA-STS policies unless
// cfg.DisableMTASTS, with the policies shared between replicas through the
// same Redis. The cleanup closes what it opened.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if err := in.NeedRedis("sender"); err != nil {
		return nil, nil, err
	}
	if in.Sealer == nil {
		return nil, nil, errors.New("build sender: no sealer to open the relays' credentials")
	}
	cc, err := in.ConfigCache(ctx)
	if err != nil {
		return nil, nil, err
	}
	svc := New(cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, Config: cc, Redis: in.Redis, Classify: bounce.Classify, Sealer: in.Sealer})
	return svc, func() { _ = cc.Close() }, nil
}
