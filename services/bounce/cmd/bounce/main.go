// Command bounce runs the mailbus bounce service: the SMTP listener for the
// tenants' bounce domains. Environment: see pkg/svcenv, plus
//
//	MAILBUS_BOUNCE_SMTP_ADDR      listen address (default :2525; put it behind port 25)
//	MAILBUS_BOUNCE_HOSTNAME       name in the SMTP greeting
//	MAILBUS_VERP_KEY              hex key that the router signs VERP return paths with
//	MAILBUS_VERP_OLD_KEYS         comma-separated hex keys retired from the router, still accepted
//	MAILBUS_FEEDBACK_ADDRESSES    comma-separated address=tenant pairs for feedback-loop (ARF) mail
//	MAILBUS_BOUNCE_MAX_BYTES      message size limit (default 10 MiB)
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
	"google.golang.org/grpc"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/suppress"
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
	cc, closeCC, err := env.ConfigClient(ctx, false)
	if err != nil {
		return err
	}
	defer closeCC()
	// The tenant index lists tenants over its own connection: the cache
	// does not list them (see bounce.TenantIndex).
	conn, err := env.ConfigConn()
	if err != nil {
		return err
	}
	defer conn.Close()
	rdb, err := env.Redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	supp := suppress.New(rdb)
	svc := bounce.New(bounce.Config{
		Bus: env.Bus, Addr: svcenv.Get("MAILBUS_BOUNCE_SMTP_ADDR", ":2525"), Hostname: os.Getenv("MAILBUS_BOUNCE_HOSTNAME"),
		VERPKeys: keys, FeedbackAddresses: feedback, MaxMessageBytes: maxBytes,
	}, bounce.Deps{
		Log: env.Log, Metrics: env.Metrics, Tenants: cc,
		Directory:    bounce.NewTenantIndex(mailbusv1.NewConfigServiceClient(conn), cc.Revision),
		Suppressions: supp,
	})
	poller, err := mailboxPoller(svc, env)
	if err != nil {
		return err
	}
	if _, err := svc.Listen(); err != nil {
		return err
	}
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return env.ServeGRPC(gctx, svcenv.Get("MAILBUS_BOUNCE_GRPC_LISTEN", ":7072"), func(r grpc.ServiceRegistrar) {
			mailbusv1.RegisterSuppressionServiceServer(r, bounce.NewSuppressionServer(supp, env.Log))
		})
	})
	g.Go(func() error { return svc.Run(gctx) })
	if poller != nil {
		g.Go(func() error { return poller.Run(gctx) })
	}
	return g.Wait()
}

// mailboxPoller configures IMAP polling from the environment; nil when
// MAILBUS_BOUNCE_IMAP_ADDR is not set.
func mailboxPoller(svc *bounce.Service, env *svcenv.Env) (*imappoll.Poller, error) {
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
	return imappoll.New(imappoll.Config{
		Host: host, Port: port, TLS: imappoll.TLSMode(os.Getenv("MAILBUS_BOUNCE_IMAP_TLS")), InsecureSkipVerify: skip,
		Username: os.Getenv("MAILBUS_BOUNCE_IMAP_USER"), Password: os.Getenv("MAILBUS_BOUNCE_IMAP_PASSWORD"),
		Folders: folders, Interval: interval,
	}, svc.MailboxHandler(tenant), env.Log.With("tenant", tenant))
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
