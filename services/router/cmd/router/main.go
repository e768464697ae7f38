// Command router runs the mailbus router stage. Environment: see pkg/svcenv
// (MAILBUS_MAX_MESSAGE_BYTES is the limit the router enforces), plus
// MAILBUS_VERP_KEY (hex, 32 bytes) that signs VERP return paths.
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/router"
)

func main() { svcenv.Main("router", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	verp, err := hex.DecodeString(os.Getenv("MAILBUS_VERP_KEY"))
	if err != nil {
		return fmt.Errorf("MAILBUS_VERP_KEY: want hex: %w", err)
	}
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
	return router.New(router.Config{Bus: env.Bus, VERPKey: verp, MaxMessageBytes: env.MaxMailBytes}, router.Deps{
		Log: env.Log, Metrics: env.Metrics, Config: cc, Health: limits.Health{Limits: limits.New(rdb), Log: env.Log},
		Suppressions: suppress.New(rdb),
	}).Run(ctx)
}
