// Command signer runs the mailbus DKIM signing stage. Environment: see
// pkg/svcenv; MAILBUS_SECRET_KEY opens the sealed private keys.
package main

import (
	"context"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/signer"
)

func main() { svcenv.Main("signer", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	cc, closeCC, err := env.ConfigClient(ctx, true)
	if err != nil {
		return err
	}
	defer closeCC()
	env.Health.SetReady(true)
	return signer.New(signer.Config{Bus: env.Bus}, signer.Deps{Log: env.Log, Metrics: env.Metrics, Keys: cc}).Run(ctx)
}
