package signer

import (
	"context"
	"errors"

	"github.com/mailbus/mailbus/pkg/infra"
)

// NewApplication is the signer's composition root, called by its main and
// by `mailbus dev`. It needs infra's ConfigConn and Sealer (DKIM private
// keys are sealed), and Redis for the cancel markers. The cleanup closes what it opened.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Service, func(), error) {
	if in.Sealer == nil {
		return nil, nil, errors.New("build signer: no sealer to open the DKIM private keys")
	}
	if err := in.NeedRedis("signer"); err != nil {
		return nil, nil, err
	}
	cc, err := in.ConfigCache(ctx)
	if err != nil {
		return nil, nil, err
	}
	svc := New(cfg, Deps{Log: in.Logger(), Metrics: in.Metrics, Keys: cc, Redis: in.Redis})
	return svc, func() { _ = cc.Close() }, nil
}
