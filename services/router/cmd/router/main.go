// Command router runs the mailbus router stage. Environment: see pkg/svcenv,
// plus MAILBUS_VERP_KEY (hex, 32 bytes) that signs VERP return paths and
// MAILBUS_MAX_MESSAGE_BYTES.
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"

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
	maxBytes, _ := strconv.ParseInt(os.Getenv("MAILBUS_MAX_MESSAGE_BYTES"), 10, 64)
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
	// The ledger restores the relays disabled for the day when Redis has
	// lost them (see pkg/limits).
	ledger := limits.NewKafkaLedger(env.Bus, env.Log)
	defer ledger.Close()
	env.Health.SetReady(true)
	return router.New(router.Config{Bus: env.Bus, VERPKey: verp, MaxMessageBytes: maxBytes}, router.Deps{
		Log: env.Log, Metrics: env.Metrics, Config: cc, Health: limits.Health{Limits: limits.New(rdb, limits.WithLedger(ledger)), Log: env.Log},
		Suppressions: suppress.New(rdb),
	}).Run(ctx)
}
