// Command tracker runs the mailbus message log: it consumes mail.events and
// serves MessageService. Environment: see pkg/svcenv, plus DATABASE_URL,
// MAILBUS_TRACKER_LISTEN (gRPC, default :7071) and the API tokens
// MAILBUS_ADMIN_TOKEN (admin role).
package main

import (
	"context"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/tracker"
)

func main() { svcenv.Main("tracker", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	trk, closeTrk, err := tracker.NewApplication(ctx, tracker.Config{Bus: env.Bus, DatabaseURL: os.Getenv("DATABASE_URL")}, in)
	if err != nil {
		return err
	}
	defer closeTrk()
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return env.ServeGRPC(gctx, svcenv.Get("MAILBUS_TRACKER_LISTEN", ":7071"), trk.Register) })
	g.Go(func() error { return trk.Run(gctx) })
	return g.Wait()
}
