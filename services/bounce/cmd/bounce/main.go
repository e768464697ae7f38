// Command bounce runs the mailbus bounce service: the SMTP listener for the
// tenants' bounce domains, and the consumer (group bounce.sync on
// mail.events) that suppresses the addresses relays refused outright.
// Environment: see pkg/svcenv, plus
//
//	MAILBUS_BOUNCE_SMTP_ADDR      listen address (default :2525; put it behind port 25)
//	MAILBUS_BOUNCE_HOSTNAME       name in the SMTP greeting
//	MAILBUS_VERP_KEY              hex key that the router signs VERP return paths with
//	MAILBUS_VERP_OLD_KEYS         comma-separated hex keys retired from the router, still accepted
//	MAILBUS_FEEDBACK_ADDRESSES    comma-separated address=tenant pairs for feedback-loop (ARF) mail
//	MAILBUS_BOUNCE_MAX_BYTES      message size limit (default 10 MiB)
//	MAILBUS_BOUNCE_MAX_CONNS      concurrent connections in all (default 100)
//	MAILBUS_BOUNCE_MAX_CONNS_PER_IP  concurrent connections from one address (default 10)
//	MAILBUS_BOUNCE_CONNS_PER_MINUTE  new connections from one address per minute (default 120)
//	MAILBUS_BOUNCE_IDLE_TIMEOUT   time an idle session is kept (default 5m)
//	MAILBUS_BOUNCE_UNSUBSCRIBE_ADDR  HTTP address of the one-click unsubscribe links (default :8081;
//	                              "off" serves none); publish it over HTTPS as the router's
//	                              MAILBUS_UNSUBSCRIBE_URL
//	MAILBUS_BOUNCE_GRPC_LISTEN    SuppressionService (default :7072), authenticated
//	                              with MAILBUS_ADMIN_TOKEN
//
// Bounces fetched over IMAP from a mailbox a tenant owns (for a tenant
// whose return path is that mailbox), polled when MAILBUS_BOUNCE_IMAP_ADDR
// is set:
//
//	MAILBUS_BOUNCE_IMAP_ADDR      host:port of the IMAP server
//	MAILBUS_BOUNCE_IMAP_TENANT    tenant id the mailbox belongs to
//	MAILBUS_BOUNCE_IMAP_USER      login name
//	MAILBUS_BOUNCE_IMAP_PASSWORD  password
//	MAILBUS_BOUNCE_IMAP_TLS       tls (default), starttls, or none
//	MAILBUS_BOUNCE_IMAP_INSECURE_SKIP_VERIFY  true turns certificate verification off
//	MAILBUS_BOUNCE_IMAP_FOLDERS   comma-separated folders (default INBOX and the spam folder)
//	MAILBUS_BOUNCE_IMAP_INTERVAL  time between polls (default 1m)
//
// mailbus dev serves SuppressionService on its one gRPC server instead.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/bounce"
	"github.com/mailbus/mailbus/services/bounce/internal/imappoll"
)

func main() { svcenv.Main("bounce", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	keys, err := verpKeys()
	if err != nil {
		return err
	}
	feedback, err := feedbackAddresses(os.Getenv("MAILBUS_FEEDBACK_ADDRESSES"))
	if err != nil {
		return err
	}
	maxBytes, _ := strconv.ParseInt(os.Getenv("MAILBUS_BOUNCE_MAX_BYTES"), 10, 64)
	mailboxes, err := mailboxes()
	if err != nil {
		return err
	}
	cfg := bounce.Config{
		Bus: env.Bus, Addr: svcenv.Get("MAILBUS_BOUNCE_SMTP_ADDR", ":2525"), Hostname: os.Getenv("MAILBUS_BOUNCE_HOSTNAME"),
		VERPKeys: keys, FeedbackAddresses: feedback, MaxMessageBytes: maxBytes, Mailboxes: mailboxes,
		UnsubscribeAddr: svcenv.Get("MAILBUS_BOUNCE_UNSUBSCRIBE_ADDR", ":8081"),
	}
	if cfg.UnsubscribeAddr == "off" {
		cfg.UnsubscribeAddr = ""
	}
	if err := bounce.LimitsFromEnv(&cfg, os.Getenv); err != nil {
		return err
	}
	in, cleanup, err := env.Infra(ctx, svcenv.Need{Config: true, Redis: true})
	if err != nil {
		return err
	}
	defer cleanup()
	app, closeApp, err := bounce.NewApplication(ctx, cfg, in)
	if err != nil {
		return err
	}
	defer closeApp()
	if _, err := app.Listen(); err != nil {
		return err
	}
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return env.ServeGRPC(gctx, svcenv.Get("MAILBUS_BOUNCE_GRPC_LISTEN", ":7072"), app.Register)
	})
	g.Go(func() error { return app.Run(gctx) })
	return g.Wait()
}

// mailboxes configures IMAP polling from the environment; none when
// MAILBUS_BOUNCE_IMAP_ADDR is not set.
func mailboxes() ([]bounce.Mailbox, error) {
	addr := os.Getenv("MAILBUS_BOUNCE_IMAP_ADDR")
	if addr == "" {
		return nil, nil
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("MAILBUS_BOUNCE_IMAP_ADDR: want host:port: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("MAILBUS_BOUNCE_IMAP_ADDR: port %q: %w", portStr, err)
	}
	tenant := os.Getenv("MAILBUS_BOUNCE_IMAP_TENANT")
	if tenant == "" {
		return nil, errors.New("MAILBUS_BOUNCE_IMAP_TENANT: the tenant whose mailbox MAILBUS_BOUNCE_IMAP_ADDR is must be set")
	}
	interval, err := time.ParseDuration(svcenv.Get("MAILBUS_BOUNCE_IMAP_INTERVAL", "1m"))
	if err != nil {
		return nil, fmt.Errorf("MAILBUS_BOUNCE_IMAP_INTERVAL: %w", err)
	}
	var folders []string
	for _, f := range strings.Split(os.Getenv("MAILBUS_BOUNCE_IMAP_FOLDERS"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			folders = append(folders, f)
		}
	}
	skip, _ := strconv.ParseBool(os.Getenv("MAILBUS_BOUNCE_IMAP_INSECURE_SKIP_VERIFY"))
	return []bounce.Mailbox{{Tenant: tenant, IMAP: imappoll.Config{
		Host: host, Port: port, TLS: imappoll.TLSMode(os.Getenv("MAILBUS_BOUNCE_IMAP_TLS")), InsecureSkipVerify: skip,
		Username: os.Getenv("MAILBUS_BOUNCE_IMAP_USER"), Password: os.Getenv("MAILBUS_BOUNCE_IMAP_PASSWORD"),
		Folders: folders, Interval: interval,
	}}}, nil
}

func verpKeys() ([][]byte, error) {
	cur, err := hex.DecodeString(os.Getenv("MAILBUS_VERP_KEY"))
	if err != nil || len(cur) < 16 {
		return nil, errors.New("MAILBUS_VERP_KEY: want the router's VERP key, hex, at least 16 bytes")
	}
	keys := [][]byte{cur}
	for _, s := range strings.Split(os.Getenv("MAILBUS_VERP_OLD_KEYS"), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		k, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("MAILBUS_VERP_OLD_KEYS: want hex: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func feedbackAddresses(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		addr, tenant, ok := strings.Cut(pair, "=")
		if !ok || !strings.Contains(addr, "@") || tenant == "" {
			return nil, fmt.Errorf("MAILBUS_FEEDBACK_ADDRESSES: %q is not address=tenant", pair)
		}
		out[strings.ToLower(strings.TrimSpace(addr))] = strings.TrimSpace(tenant)
	}
	return out, nil
}
