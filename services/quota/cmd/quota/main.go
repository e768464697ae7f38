// Command quota runs the mailbus quota stage. Environment: see pkg/svcenv.
package main

import (
	"context"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/quota"
)

func main() { svcenv.Main("quota", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	cc, closeCC, err := env.ConfigClient(ctx, false)
	if err != nil {
		return err
	}
	defer closeCC()
	rdb, err := env.Redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	env.Health.SetReady(true)
	return quota.New(quota.Config{Bus: env.Bus}, quota.Deps{Log: env.Log, Metrics: env.Metrics, Config: cc, Redis: rdb}).Run(ctx)
}
