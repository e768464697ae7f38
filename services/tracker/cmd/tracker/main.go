// Command tracker runs the mailbus message log: it consumes mail.events and
// serves MessageService. Environment: see pkg/svcenv, plus DATABASE_URL,
// MAILBUS_TRACKER_LISTEN (gRPC, default :7071), the API tokens
// MAILBUS_ADMIN_TOKEN (admin role), and MAILBUS_SUBMISSION_RETENTION (how
// long a message can be retried, a Go duration, default 168h).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

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
	cfg := tracker.Config{Bus: env.Bus, DatabaseURL: os.Getenv("DATABASE_URL")}
	if v := svcenv.Get("MAILBUS_SUBMISSION_RETENTION", ""); v != "" {
		if cfg.Retention, err = time.ParseDuration(v); err != nil || cfg.Retention <= 0 {
			return fmt.Errorf("MAILBUS_SUBMISSION_RETENTION=%q is not a positive duration such as 168h", v)
		}
	}
	trk, closeTrk, err := tracker.NewApplication(ctx, cfg, in)
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
