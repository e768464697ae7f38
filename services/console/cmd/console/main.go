// Command console serves the mailbus administrators' web console. It holds
// no credentials of its own: people sign in with their API tokens, which
// it forwards to the services. Environment: see pkg/svcenv (logging, the
// admin endpoints), plus
//
//	MAILBUS_CONSOLE_LISTEN        HTTP address (default :8080)
//	MAILBUS_CONFIG_ADDR           ConfigService (default 127.0.0.1:7070)
//	MAILBUS_TRACKER_ADDR          MessageService (default 127.0.0.1:7071)
//	MAILBUS_SUPPRESSION_ADDR      SuppressionService (default 127.0.0.1:7072)
//	MAILBUS_WEBHOOK_ADDR          WebhookService (default 127.0.0.1:7073; "off": no webhooks page)
//	MAILBUS_CONFIG_TLS            "true" to reach the services over TLS
//	MAILBUS_CONSOLE_SESSION_KEY   32 bytes, hex or base64 shared by replicas;
//	                              empty makes one at start (sign-ins end on restart)
//	MAILBUS_CONSOLE_SECURE_COOKIES "true" behind HTTPS
package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/console"
)

func main() { svcenv.Main("console", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	key, err := sessionKey(os.Getenv("MAILBUS_CONSOLE_SESSION_KEY"))
	if err != nil {
		return err
	}
	cfg := console.Config{
		Addr: svcenv.Get("MAILBUS_CONSOLE_LISTEN", ":8080"), SessionKey: key,
		SecureCookies: os.Getenv("MAILBUS_CONSOLE_SECURE_COOKIES") == "true",
	}
	ep := console.Endpoints{
		Config:       svcenv.Get("MAILBUS_CONFIG_ADDR", "127.0.0.1:7070"),
		Messages:     svcenv.Get("MAILBUS_TRACKER_ADDR", "127.0.0.1:7071"),
		Suppressions: svcenv.Get("MAILBUS_SUPPRESSION_ADDR", "127.0.0.1:7072"),
		Webhooks:     svcenv.Get("MAILBUS_WEBHOOK_ADDR", "127.0.0.1:7073"),
		TLS:          os.Getenv("MAILBUS_CONFIG_TLS") == "true",
	}
	if ep.Webhooks == "off" {
		ep.Webhooks = ""
	}
	svc, cleanup, err := console.NewApplication(ctx, cfg, ep, infra.Infra{Log: env.Log, Metrics: env.Metrics})
	if err != nil {
		return err
	}
	defer cleanup()
	addr, err := svc.Listen()
	if err != nil {
		return err
	}
	env.Log.Info("console listening", "addr", addr.String())
	env.Health.SetReady(true)
	return svc.Run(ctx)
}

// sessionKey reads a 32-byte key written in hex or base64.
func sessionKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if b, err := hex.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == 32 {
			return b, nil
		}
	}
	return nil, fmt.Errorf("MAILBUS_CONSOLE_SESSION_KEY: want 32 bytes in hex or base64")
}
