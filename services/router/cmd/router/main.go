// Command router runs the mailbus router stage. Environment: see pkg/svcenv
// (MAILBUS_MAX_MESSAGE_BYTES is the limit the router enforces), plus
// MAILBUS_VERP_KEY (hex, 32 bytes) that signs VERP return paths and
// unsubscribe links, and MAILBUS_UNSUBSCRIBE_URL, the public HTTPS base of
// the bounce service's one-click unsubscribe endpoint
// ("https://links.example.com/unsubscribe/").
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/router"
)

func main() { svcenv.Main("router", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	verp, err := hex.DecodeString(os.Getenv("MAILBUS_VERP_KEY"))
	if err != nil {
		return fmt.Errorf("MAILBUS_VERP_KEY: want hex: %w", err)
	}
	unsubURL := os.Getenv("MAILBUS_UNSUBSCRIBE_URL")
	if unsubURL != "" && !strings.HasPrefix(unsubURL, "https://") {
		return fmt.Errorf("MAILBUS_UNSUBSCRIBE_URL=%q: one-click unsubscribe links must be https:// (RFC 8058)", unsubURL)
	}
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	svc, closeSvc, err := router.NewApplication(ctx, router.Config{Bus: env.Bus, VERPKey: verp, MaxMessageBytes: env.MaxMailBytes, UnsubscribeURL: unsubURL}, in)
	if err != nil {
		return err
	}
	defer closeSvc()
	env.Health.SetReady(true)
	return svc.Run(ctx)
}
