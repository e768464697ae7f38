// Command config runs the mailbus config service.
//
// Environment (flags override):
//
//	DATABASE_URL              store: postgres://... or sqlite:///path/config.db (required)
//	MAILBUS_SECRET_KEY        base64 32-byte key that seals secrets; "2:<new>,1:<old>" to rotate (required)
//	MAILBUS_CONFIG_LISTEN     gRPC listen address (default: the port of MAILBUS_CONFIG_ADDR, else :7070)
//	MAILBUS_SEED_FILE         YAML seed applied at start (deploy/mailbus.example.yaml documents it)
//	MAILBUS_ADMIN_TOKEN       admin API token, plain or sha256:<hex>
//	MAILBUS_PIPELINE_TOKEN    pipeline API token, plain or sha256:<hex>
//	MAILBUS_ADMIN_HTTP_ADDR   /metrics, /healthz, /readyz (default :9090; empty disables)
//	KAFKA_BROKERS             brokers for the periodic DNS check's domain_dns_error events (unset: no periodic check)
//	MAILBUS_DNS_CHECK_INTERVAL how often every domain's DNS is checked (default 6h)
//	MAILBUS_DNS_SERVERS       name servers for CheckDomain, host:port, comma separated (default /etc/resolv.conf's)
//	MAILBUS_BOUNCE_MX_HOST    the bounce service's public host name, which bounce domains' MX must name
//	                          (default MAILBUS_BOUNCE_HOSTNAME)
//	MAILBUS_SENDING_ADDRS     public addresses direct MX delivery leaves from, comma separated (PTR check)
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/obs"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/services/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	listen := fs.String("listen", defaultListen(), "gRPC listen address")
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "database URL")
	seedFile := fs.String("seed", os.Getenv("MAILBUS_SEED_FILE"), "YAML seed file applied at start")
	adminAddr := fs.String("admin-http", envOr("MAILBUS_ADMIN_HTTP_ADDR", ":9090"), "admin HTTP address (metrics, health)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := obs.NewLogger(os.Stderr, obs.LogConfigFromEnv())

	sealer, err := seal.Parse(os.Getenv(seal.EnvKey))
	if err != nil {
		return err
	}
	tokens := map[string]auth.Identity{}
	if t := os.Getenv("MAILBUS_ADMIN_TOKEN"); t != "" {
		tokens[t] = auth.Identity{Role: auth.RoleAdmin, Name: "MAILBUS_ADMIN_TOKEN"}
	}
	if t := os.Getenv("MAILBUS_PIPELINE_TOKEN"); t != "" {
		tokens[t] = auth.Identity{Role: auth.RolePipeline, Name: "MAILBUS_PIPELINE_TOKEN"}
	}

	reg := obs.NewRegistry()
	health := &obs.Health{}
	cfg := config.Config{
		GRPCAddr:     *listen,
		DatabaseURL:  *dbURL,
		SeedFile:     *seedFile,
		Tokens:       tokens,
		DNSServers:   list(os.Getenv("MAILBUS_DNS_SERVERS")),
		BounceMXHost: envOr("MAILBUS_BOUNCE_MX_HOST", os.Getenv("MAILBUS_BOUNCE_HOSTNAME")),
	}
	for _, a := range list(os.Getenv("MAILBUS_SENDING_ADDRS")) {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("MAILBUS_SENDING_ADDRS: %w", err)
		}
		cfg.SendingAddrs = append(cfg.SendingAddrs, addr)
	}
	if v := os.Getenv("MAILBUS_DNS_CHECK_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("MAILBUS_DNS_CHECK_INTERVAL: %w", err)
		}
		cfg.DNSCheckInterval = d
	}
	deps := config.Deps{Log: log, Sealer: sealer, Metrics: reg}
	// The config service serves without Kafka; with brokers it also runs
	// the periodic DNS check, whose warnings go to mail.events.
	if brokers := list(os.Getenv("KAFKA_BROKERS")); len(brokers) > 0 {
		pub, err := bus.NewPublisher(bus.Config{Brokers: brokers, ClientID: "mailbus-config"}, log)
		if err != nil {
			return err
		}
		defer pub.Close()
		deps.Events = pub
	}
	svc := config.New(cfg, deps)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return obs.ServeAdmin(ctx, *adminAddr, reg, health) })
	g.Go(func() error {
		if err := svc.Start(ctx); err != nil {
			return err
		}
		health.SetReady(true)
		return svc.Run(ctx)
	})
	return g.Wait()
}

// defaultListen listens on the port that clients are told to dial.
func defaultListen() string {
	if v := os.Getenv("MAILBUS_CONFIG_LISTEN"); v != "" {
		return v
	}
	if _, port, err := net.SplitHostPort(os.Getenv("MAILBUS_CONFIG_ADDR")); err == nil && port != "" {
		return ":" + port
	}
	return ":7070"
}

func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
