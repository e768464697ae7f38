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
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Secrets: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := signer.NewApplication(ctx, signer.Config{Bus: env.Bus}, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	return svc.Run(ctx)
}
