// Command quota runs the mailbus quota stage. Environment: see pkg/svcenv.
package main

import (
	"context"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/quota"
)

func main() { svcenv.Main("quota", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := quota.NewApplication(ctx, quota.Config{Bus: env.Bus}, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	return svc.Run(ctx)
}
