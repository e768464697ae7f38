// Command bounce runs the mailbus bounce service. Until the bounce listener
// lands it only serves its admin endpoints.
package main

import (
	"context"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/bounce"
)

func main() { svcenv.Main("bounce", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	env.Health.SetReady(true)
	return bounce.New(bounce.Config{}, env.Log).Run(ctx)
}
