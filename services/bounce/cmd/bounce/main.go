// Command bounce runs the mailbus bounce service: the SMTP listener for the
// tenants' bounce domains. Environment: see pkg/svcenv, plus
//
//	MAILBUS_BOUNCE_SMTP_ADDR      listen address (default :2525; put it behind port 25)
//	MAILBUS_BOUNCE_HOSTNAME       name in the SMTP greeting
//	MAILBUS_VERP_KEY              hex key that the router signs VERP return paths with
//	MAILBUS_VERP_OLD_KEYS         comma-separated hex keys retired from the router, still accepted
//	MAILBUS_FEEDBACK_ADDRESSES    comma-separated address=tenant pairs for feedback-loop (ARF) mail
//	MAILBUS_BOUNCE_MAX_BYTES      message size limit (default 10 MiB)
//
// SuppressionService is served by the process that serves ConfigService
// (see cmd/mailbus/internal/stack), since it shares that server's
// authentication.
package main

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/bounce"
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
	conn, err := configConn()
	if err != nil {
		return err
	}
	defer conn.Close()
	rdb, err := env.Redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	svc := bounce.New(bounce.Config{
		Bus: env.Bus, Addr: svcenv.Get("MAILBUS_BOUNCE_SMTP_ADDR", ":2525"), Hostname: os.Getenv("MAILBUS_BOUNCE_HOSTNAME"),
		VERPKeys: keys, FeedbackAddresses: feedback, MaxMessageBytes: maxBytes,
	}, bounce.Deps{
		Log: env.Log, Metrics: env.Metrics, Tenants: cc,
		Directory:    bounce.NewTenantIndex(mailbusv1.NewConfigServiceClient(conn), cc.Revision),
		Suppressions: suppress.New(rdb),
	})
	if _, err := svc.Listen(); err != nil {
		return err
	}
	env.Health.SetReady(true)
	return svc.Run(ctx)
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

// configConn connects to the config service the way svcenv.ConfigClient
// does.
func configConn() (*grpc.ClientConn, error) {
	addr := svcenv.Get("MAILBUS_CONFIG_ADDR", "127.0.0.1:7070")
	useTLS := os.Getenv("MAILBUS_CONFIG_TLS") == "true"
	creds := insecure.NewCredentials()
	if useTLS {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: os.Getenv("MAILBUS_PIPELINE_TOKEN"), AllowInsecure: !useTLS}))
	if err != nil {
		return nil, fmt.Errorf("connect to config service at %s: %w", addr, err)
	}
	return conn, nil
}
