// Command sender runs the mailbus SMTP delivery stage. Environment: see
// pkg/svcenv; MAILBUS_SECRET_KEY opens relay credentials, MAILBUS_HELO_NAME
// is the EHLO name, MAILBUS_DNS_SERVERS (comma separated host:port) the
// resolvers for direct MX delivery.
package main

import (
	"context"
	"os"
	"strings"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/sender"
)

func main() { svcenv.Main("sender", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	cfg := sender.Config{Bus: env.Bus, HeloName: os.Getenv("MAILBUS_HELO_NAME")}
	if s := os.Getenv("MAILBUS_DNS_SERVERS"); s != "" {
		cfg.DNSServers = strings.Split(s, ",")
	}
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Secrets: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := sender.NewApplication(ctx, cfg, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	return svc.Run(ctx)
}
