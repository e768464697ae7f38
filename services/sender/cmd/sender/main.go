// Command sender runs the mailbus SMTP delivery stage. Environment: see
// pkg/svcenv; MAILBUS_SECRET_KEY opens relay credentials, MAILBUS_HELO_NAME
// is the EHLO name, MAILBUS_DNS_SERVERS (comma separated host:port) the
// resolvers for direct MX delivery.
package main

import (
	"context"
	"os"
	"strings"

	"github.com/mailbus/mailbus/pkg/bounce"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/sender"
)

func main() { svcenv.Main("sender", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	cc, closeCC, err := env.ConfigClient(ctx, true)
	if err != nil {
		return err
	}
	defer closeCC()
	rdb, err := env.Redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	cfg := sender.Config{Bus: env.Bus, HeloName: os.Getenv("MAILBUS_HELO_NAME")}
	if s := os.Getenv("MAILBUS_DNS_SERVERS"); s != "" {
		cfg.DNSServers = strings.Split(s, ",")
	}
	env.Health.SetReady(true)
	return sender.New(cfg, sender.Deps{Log: env.Log, Metrics: env.Metrics, Config: cc, Redis: rdb, Classify: bounce.Classify}).Run(ctx)
}
