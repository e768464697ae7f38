package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
	"github.com/mailbus/mailbus/services/config"
)

// `mailbus domain check` prints each record's status with the record to
// publish, and exits 1 until everything is found.
func TestDomainCheck_printsWhatToPublishAndExitsOneUntilAllIsFound(t *testing.T) {
	zone := dnstest.NewZone(t, "smtp.acme.example. IN A 198.51.100.7")
	sealer, err := seal.New(map[byte][]byte{1: bytes.Repeat([]byte{9}, 32)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	const token = "cli-test-admin-token-0123456789"
	svc := config.New(config.Config{DatabaseURL: "sqlite://" + filepath.Join(t.TempDir(), "config.db"),
		Tokens: map[string]auth.Identity{token: {Role: auth.RoleAdmin}}, DNSServers: []string{dnstest.Start(t, zone)}},
		config.Deps{Log: slog.New(slog.DiscardHandler), Sealer: sealer})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	st := svc.Store()
	tctx, tcancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(tcancel)
	if _, err := st.CreateTenant(tctx, &pb.Tenant{Id: "acme", Name: "ACME", TimeZone: "UTC", Active: true}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: token, AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	api := pb.NewConfigServiceClient(conn)
	if _, err := api.CreateDomain(tctx, &pb.CreateDomainRequest{Domain: &pb.Domain{Id: "d1", TenantId: "acme", Name: "acme.example",
		ReturnPathMode: pb.ReturnPathMode_RETURN_PATH_MODE_FROM}}); err != nil {
		t.Fatal(err)
	}
	key, err := api.GenerateDkimKey(tctx, &pb.GenerateDkimKeyRequest{DomainId: "d1", Selector: "s1", Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateRelay(tctx, &pb.Relay{Id: "r1", TenantId: "acme", Name: "office", Host: "smtp.acme.example", Port: 587,
		Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS, Active: true, Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_NONE}}); err != nil {
		t.Fatal(err)
	}

	run := func() (string, error) {
		var out bytes.Buffer
		cmd := Root()
		cmd.SetArgs([]string{"domain", "check", "acme.example", "--api", lis.Addr().String(), "--token", token})
		cmd.SetOut(&out)
		err := cmd.ExecuteContext(tctx)
		t.Logf("mailbus domain check acme.example:\n%s", out.String())
		return out.String(), err
	}

	dkimTXT := key.Key.DnsTxtValue
	out, err := run()
	var exit ExitError
	if !errors.As(err, &exit) || exit != 1 {
		t.Errorf("exit %v, want ExitError(1)", err)
	}
	for _, want := range []string{
		"MISSING spf acme.example",
		`publish: acme.example. IN TXT "v=spf1 ip4:198.51.100.7 ~all"`,
		"MISSING dkim s1._domainkey.acme.example",
		"publish: " + dkimkey.ZoneTXT("s1._domainkey.acme.example", dkimTXT),
		"MISSING dmarc _dmarc.acme.example",
		`publish: _dmarc.acme.example. IN TXT "v=DMARC1; p=none"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	zone.Add(t, `acme.example. IN TXT "v=spf1 ip4:198.51.100.7 -all"`,
		dkimkey.ZoneTXT("s1._domainkey.acme.example", dkimTXT),
		`_dmarc.acme.example. IN TXT "v=DMARC1; p=reject"`)
	out, err = run()
	if err != nil {
		t.Errorf("exit %v with every record published", err)
	}
	if strings.Contains(out, "MISSING") || strings.Contains(out, "WRONG") || !strings.Contains(out, "FOUND   dmarc_alignment acme.example") {
		t.Errorf("output:\n%s", out)
	}
}
