package config_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/auth"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

const (
	adminToken       = "test-admin-token-0123456789"
	pipelineToken    = "test-pipeline-token-0123456789"
	acmeAdminToken   = "test-acme-admin-token-0123456789"
	otherAdminToken  = "test-other-admin-token-0123456789"
	acmeUserToken    = "test-acme-user-token-0123456789"
	relayPassword    = "relay-pw-9c2e61d0f3"
	relayOAuthToken  = "ya29.oauth-token-5b7a0e"
	testPollInterval = 50 * time.Millisecond
)

func testTokens() map[string]auth.Identity {
	return map[string]auth.Identity{
		adminToken:                    {Role: auth.RoleAdmin},
		auth.HashToken(pipelineToken): {Role: auth.RolePipeline},
		acmeAdminToken:                {Role: auth.RoleTenantAdmin, TenantID: "acme"},
		otherAdminToken:               {Role: auth.RoleTenantAdmin, TenantID: "other"},
		acmeUserToken:                 {Role: auth.RoleUser, TenantID: "acme", UserID: "u1"},
	}
}

func testSealer(t testing.TB) *seal.Sealer {
	t.Helper()
	s, err := seal.New(map[byte][]byte{3: bytes.Repeat([]byte{42}, 32)}, 3)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// env is a config service serving on a real loopback port.
type env struct {
	addr  string
	svc   *config.Service
	store *config.Store
	stop  func()
}

func sqliteURL(t testing.TB) string {
	return "sqlite://" + filepath.Join(t.TempDir(), "config.db")
}

// start runs the config service on dbURL, on addr ("" for a free port).
func start(t testing.TB, cfg config.Config, addr string) *env {
	t.Helper()
	if cfg.Tokens == nil {
		cfg.Tokens = testTokens()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = testPollInterval
	}
	svc := config.New(cfg, config.Deps{Log: testLogger(t), Sealer: testSealer(t), Metrics: prometheus.NewRegistry()})
	ctx, cancel := context.WithCancel(context.Background())
	if err := svc.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, lis) }()
	e := &env{addr: lis.Addr().String(), svc: svc, store: svc.Store()}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(e.stop)
	return e
}

func dial(t testing.TB, addr, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.StaticToken{Token: token, AllowInsecure: true}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func client(t testing.TB, e *env, token string) pb.ConfigServiceClient {
	return pb.NewConfigServiceClient(dial(t, e.addr, token))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testkit.WaitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fields returns the BadRequest field violations of an error.
func fields(err error) map[string]string {
	out := map[string]string{}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, fv := range br.FieldViolations {
				out[fv.Field] = fv.Description
			}
		}
	}
	return out
}

func acmeTenant() *pb.Tenant {
	return &pb.Tenant{Id: "acme", Name: "ACME", TimeZone: "Europe/Berlin", DefaultFrom: "noreply",
		DomainAlias: "mail.mailbus.test", BounceDomain: "bounce.mailbus.test", Active: true}
}

func plainRelay(id, tenantID, domain string) *pb.Relay {
	return &pb.Relay{Id: id, TenantId: tenantID, Name: "relay " + id, Host: "smtp.acme.example", Port: 587,
		Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS, Domains: []string{domain}, Priority: 10, Active: true,
		Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "mailer@acme.example", Password: relayPassword}}
}

// setupAcme creates tenant acme with domain acme.example as admin.
func setupAcme(t *testing.T, c pb.ConfigServiceClient) *pb.Domain {
	t.Helper()
	ctx := ctxT(t)
	if _, err := c.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: acmeTenant()}); err != nil {
		t.Fatal(err)
	}
	resp, err := c.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: "acme.example"}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Domain
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, testkit.WaitTimeout, cond, "%s", what)
}
