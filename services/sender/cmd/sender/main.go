// Command sender runs the mailbus SMTP delivery stage. Environment: see
// pkg/svcenv; MAILBUS_SECRET_KEY opens relay credentials, MAILBUS_HELO_NAME
// is the EHLO name, MAILBUS_DNS_SERVERS (comma separated host:port) the
// resolvers for direct MX delivery, MAILBUS_SENDER_MAX_IN_FLIGHT and
// MAILBUS_SENDER_MAX_IN_FLIGHT_BYTES the deliveries and payload bytes one
// replica handles at once (see sender.DefaultConcurrency),
// MAILBUS_SENDER_SHAPING_FILE the traffic shaping of MX provider sites over
// the built-in one (deploy/shaping.example.yaml), MAILBUS_SENDER_MTA_STS
// ("off" or "false" to ignore) whether direct MX delivery honours the
// recipient domains' MTA-STS policies (default on).
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/sender"
)

func main() { svcenv.Main("sender", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	cfg := sender.Config{Bus: env.Bus, HeloName: os.Getenv("MAILBUS_HELO_NAME")}
	if s := os.Getenv("MAILBUS_DNS_SERVERS"); s != "" {
		cfg.DNSServers = strings.Split(s, ",")
	}
	if s := os.Getenv("MAILBUS_SENDER_MTA_STS"); s != "" {
		on, err := strconv.ParseBool(s)
		if s == "on" || s == "off" {
			on, err = s == "on", nil
		}
		if err != nil {
			return fmt.Errorf("MAILBUS_SENDER_MTA_STS=%q: want on or off", s)
		}
		cfg.DisableMTASTS = !on
	}
	for _, v := range []struct {
		name string
		set  func(n int64)
	}{
		{"MAILBUS_SENDER_MAX_IN_FLIGHT", func(n int64) { cfg.Concurrency.Records = int(n) }},
		{"MAILBUS_SENDER_MAX_IN_FLIGHT_BYTES", func(n int64) { cfg.Concurrency.Bytes = n }},
	} {
		if s := os.Getenv(v.name); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("%s=%q: want a positive number", v.name, s)
			}
			v.set(n)
		}
	}
	shaping, err := health.LoadShaping(os.Getenv("MAILBUS_SENDER_SHAPING_FILE"))
	if err != nil {
		return fmt.Errorf("MAILBUS_SENDER_SHAPING_FILE: %w", err)
	}
	cfg.Shaping = &shaping
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
