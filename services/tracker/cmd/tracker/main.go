// Command tracker runs the mailbus message log: it consumes mail.events and
// serves MessageService. Environment: see pkg/svcenv, plus DATABASE_URL,
// MAILBUS_TRACKER_LISTEN (gRPC, default :7071) and the API tokens
// MAILBUS_ADMIN_TOKEN (admin role).
package main

import (
	"context"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/tracker"
)

func main() { svcenv.Main("tracker", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	db, err := sqlstore.Open(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer db.Close()
	trk, err := tracker.New(ctx, tracker.Config{Bus: env.Bus}, tracker.Deps{Log: env.Log, Metrics: env.Metrics, DB: db})
	if err != nil {
		return err
	}
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return env.ServeGRPC(gctx, svcenv.Get("MAILBUS_TRACKER_LISTEN", ":7071"), trk.Register) })
	g.Go(func() error { return trk.Run(gctx) })
	return g.Wait()
}
