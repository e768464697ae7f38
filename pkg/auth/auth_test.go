package auth_test

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/auth"
)

const (
	adminToken    = "admin-token-0123456789"
	pipelineToken = "pipeline-token-0123456789"
)

func tokens(t *testing.T) *auth.Tokens {
	t.Helper()
	tt, err := auth.NewTokens(map[string]auth.Identity{
		adminToken:                        {Role: auth.RoleAdmin},
		auth.HashToken(pipelineToken):     {Role: auth.RolePipeline, Name: "router"},
		"tenant-admin-token-0123456789":   {Role: auth.RoleTenantAdmin, TenantID: "acme"},
		"tenant-user-token-0123456789abc": {Role: auth.RoleUser, TenantID: "acme", UserID: "u1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

// serve starts a real gRPC server on loopback with the health service; only
// Check is public, so List (unary) and Watch (stream) need a token.
func serve(t *testing.T, a auth.Authenticator) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ic := auth.NewInterceptor(a, func(m string) bool { return m == "/grpc.health.v1.Health/Check" })
	srv := grpc.NewServer(ic.ServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func TestInterceptor_authenticatesOverARealConnection(t *testing.T) {
	addr := serve(t, tokens(t))
	tests := []struct {
		name     string
		opts     []grpc.DialOption
		metadata []string
		want     codes.Code
	}{
		{"no token", nil, nil, codes.Unauthenticated},
		{"unknown token", []grpc.DialOption{grpc.WithPerRPCCredentials(auth.StaticToken{Token: "nope-nope-nope-nope", AllowInsecure: true})}, nil, codes.Unauthenticated},
		{"not a bearer", nil, []string{"authorization", "Basic " + adminToken}, codes.Unauthenticated},
		{"plain token", []grpc.DialOption{grpc.WithPerRPCCredentials(auth.StaticToken{Token: adminToken, AllowInsecure: true})}, nil, codes.OK},
		{"hashed token", []grpc.DialOption{grpc.WithPerRPCCredentials(auth.StaticToken{Token: pipelineToken, AllowInsecure: true})}, nil, codes.OK},
		{"lower-case scheme", nil, []string{"authorization", "bearer " + adminToken}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := dial(t, addr, tt.opts...)
			ctx := context.Background()
			if tt.metadata != nil {
				ctx = metadata.AppendToOutgoingContext(ctx, tt.metadata...)
			}
			_, err := client.List(ctx, &healthpb.HealthListRequest{})
			if got := status.Code(err); got != tt.want {
				t.Errorf("unary: code = %v (%v), want %v", got, err, tt.want)
			}
			stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			if got := status.Code(err); got != tt.want {
				t.Errorf("stream: code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestInterceptor_letsHealthChecksThroughWithoutToken(t *testing.T) {
	client := dial(t, serve(t, nil))
	if _, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check without token: %v", err)
	}
}

func TestInterceptor_refusesEverythingWhenNoTokensAreConfigured(t *testing.T) {
	empty, err := auth.NewTokens(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]auth.Authenticator{"nil authenticator": nil, "empty table": empty} {
		t.Run(name, func(t *testing.T) {
			client := dial(t, serve(t, a), grpc.WithPerRPCCredentials(auth.StaticToken{Token: adminToken, AllowInsecure: true}))
			_, err := client.List(context.Background(), &healthpb.HealthListRequest{})
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("code = %v, want Unauthenticated", status.Code(err))
			}
		})
	}
}

func TestInterceptor_putsTheIdentityInTheContext(t *testing.T) {
	ic := auth.NewInterceptor(tokens(t), nil)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+pipelineToken))
	var got auth.Identity
	_, err := ic.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"}, func(ctx context.Context, _ any) (any, error) {
		got, _ = auth.FromContext(ctx)
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Role != auth.RolePipeline || got.Name != "router" {
		t.Errorf("identity = %+v", got)
	}
}

func TestStaticToken_requiresTransportSecurityUnlessAllowed(t *testing.T) {
	if !(auth.StaticToken{Token: "x"}).RequireTransportSecurity() {
		t.Error("StaticToken sends its token over plaintext by default")
	}
	if (auth.StaticToken{Token: "x", AllowInsecure: true}).RequireTransportSecurity() {
		t.Error("AllowInsecure ignored")
	}
}

func TestNewTokens_rejectsBadEntries(t *testing.T) {
	tests := map[string]map[string]auth.Identity{
		"short token":             {"short": {Role: auth.RoleAdmin}},
		"bad digest":              {"sha256:abcd": {Role: auth.RoleAdmin}},
		"unknown role":            {adminToken: {Role: "root"}},
		"tenant_admin, no tenant": {adminToken: {Role: auth.RoleTenantAdmin}},
		"admin with tenant":       {adminToken: {Role: auth.RoleAdmin, TenantID: "acme"}},
		"user without user id":    {adminToken: {Role: auth.RoleUser, TenantID: "acme"}},
		"same token twice": {
			adminToken:                 {Role: auth.RoleAdmin},
			auth.HashToken(adminToken): {Role: auth.RolePipeline},
		},
	}
	for name, table := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := auth.NewTokens(table); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestIdentity_authorisesByRoleAndTenant(t *testing.T) {
	admin := auth.Identity{Role: auth.RoleAdmin}
	pipeline := auth.Identity{Role: auth.RolePipeline}
	tenantAdmin := auth.Identity{Role: auth.RoleTenantAdmin, TenantID: "acme"}
	user := auth.Identity{Role: auth.RoleUser, TenantID: "acme", UserID: "u"}
	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"admin writes any tenant", admin.CanWriteTenant("other"), true},
		{"pipeline reads any tenant", pipeline.CanReadTenant("other"), true},
		{"pipeline writes nothing", pipeline.CanWriteTenant("acme"), false},
		{"tenant admin writes own tenant", tenantAdmin.CanWriteTenant("acme"), true},
		{"tenant admin cannot read other tenant", tenantAdmin.CanReadTenant("other"), false},
		{"tenant admin cannot read all", tenantAdmin.CanReadAll(), false},
		{"user reads own tenant", user.CanReadTenant("acme"), true},
		{"user writes nothing", user.CanWriteTenant("acme"), false},
		{"empty tenant id matches nobody", tenantAdmin.CanReadTenant(""), false},
		{"only pipeline receives sealed secrets", pipeline.ReceivesSealedSecrets() && !admin.ReceivesSealedSecrets(), true},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v", tt.name, tt.got)
		}
	}
}

func TestNewToken_isLongAndPrefixed(t *testing.T) {
	a, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := auth.NewToken()
	if a == b || len(a) < 40 || a[:4] != auth.TokenPrefix {
		t.Errorf("tokens %q %q", a, b)
	}
	if _, err := auth.NewTokens(map[string]auth.Identity{a: {Role: auth.RoleAdmin}}); err != nil {
		t.Error(err)
	}
}
