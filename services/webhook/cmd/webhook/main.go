// Command webhook delivers each tenant's events to its webhook endpoints:
// it consumes mail.events and serves WebhookService (endpoints, dead
// letters). Environment: see pkg/svcenv, plus DATABASE_URL,
// MAILBUS_SECRET_KEY (seals endpoint secrets), MAILBUS_WEBHOOK_LISTEN
// (gRPC, default :7073), MAILBUS_ADMIN_TOKEN (admin role) and
// MAILBUS_WEBHOOK_ALLOW_HTTP=true to accept http:// endpoints (development
// only).
package main

import (
	"context"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/webhook"
)

func main() { svcenv.Main("webhook", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Secrets: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := webhook.NewApplication(ctx, webhook.Config{
		Bus: env.Bus, DatabaseURL: os.Getenv("DATABASE_URL"),
		AllowHTTP: svcenv.Get("MAILBUS_WEBHOOK_ALLOW_HTTP", "") == "true",
	}, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return env.ServeGRPC(gctx, svcenv.Get("MAILBUS_WEBHOOK_LISTEN", ":7073"), svc.Register) })
	g.Go(func() error { return svc.Run(gctx) })
	return g.Wait()
}
