package config_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

func TestConfigService_rejectsInvalidRequestsNamingTheField(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)

	relay := func(mut func(r *pb.Relay)) error {
		r := plainRelay("", "acme", "acme.example")
		mut(r)
		_, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: r})
		return err
	}
	tenant := func(mut func(t *pb.Tenant)) error {
		tn := acmeTenant()
		tn.Id = ""
		mut(tn)
		_, err := admin.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: tn})
		return err
	}
	domain := func(d *pb.Domain) error {
		_, err := admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: d})
		return err
	}
	tests := []struct {
		name    string
		err     error
		field   string
		message string
	}{
		{"relay port zero", relay(func(r *pb.Relay) { r.Port = 0 }), "relay.port", "relay.port: must be 1-65535, got 0"},
		{"relay port too big", relay(func(r *pb.Relay) { r.Port = 70000 }), "relay.port", "must be 1-65535, got 70000"},
		{"unspecified security", relay(func(r *pb.Relay) { r.Security = 0 }), "relay.security", "required: NONE, STARTTLS or TLS"},
		{"unknown security", relay(func(r *pb.Relay) { r.Security = 9 }), "relay.security", "unknown security mode 9"},
		{"from filter neither domain nor address", relay(func(r *pb.Relay) { r.FromFilter = "not a domain!" }), "relay.from_filter", "must be a domain (acme.example) or an address"},
		{"from filter with empty local part", relay(func(r *pb.Relay) { r.FromFilter = "@acme.example" }), "relay.from_filter", "must be a domain"},
		{"bad host", relay(func(r *pb.Relay) { r.Host = "smtp..acme.example" }), "relay.host", "not a host name or IP address"},
		{"host with space", relay(func(r *pb.Relay) { r.Host = "smtp acme" }), "relay.host", "not a host name"},
		{"negative daily limit", relay(func(r *pb.Relay) { r.DailyLimit = -1 }), "relay.daily_limit", "must not be negative, got -1"},
		{"negative rate", relay(func(r *pb.Relay) { r.RatePerSecond = -0.5 }), "relay.rate_per_second", "non-negative"},
		{"negative connection limit", relay(func(r *pb.Relay) { r.MaxConnections = -1 }), "relay.max_connections", "must be 0 (the default) to 1000, got -1"},
		{"connection limit too high", relay(func(r *pb.Relay) { r.MaxConnections = 5000 }), "relay.max_connections", "got 5000"},
		{"PLAIN without password", relay(func(r *pb.Relay) { r.Auth.Password = "" }), "relay.auth.password", "required for PLAIN"},
		{"LOGIN without username", relay(func(r *pb.Relay) {
			r.Auth.Mechanism = pb.AuthMechanism_AUTH_MECHANISM_LOGIN
			r.Auth.Username = ""
		}), "relay.auth.username", "required for LOGIN"},
		{"XOAUTH2 without token", relay(func(r *pb.Relay) { r.Auth.Mechanism = pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2 }), "relay.auth.oauth_token", "required for XOAUTH2"},
		{"CLIENT_CERT with garbage", relay(func(r *pb.Relay) {
			r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT, ClientCertPem: "nope", ClientKeyPem: "nope"}
		}), "relay.auth.client_cert_pem", "not a PEM certificate"},
		{"password over plaintext", relay(func(r *pb.Relay) { r.Security = pb.RelaySecurity_RELAY_SECURITY_NONE }), "relay.security", "clear text"},
		{"unknown kind", relay(func(r *pb.Relay) { r.Kinds = []pb.EmailKind{42} }), "relay.kinds[0]", "unknown email kind 42"},
		{"relay without domains", relay(func(r *pb.Relay) { r.Domains = nil }), "relay.domains", "at least one"},
		{"relay for a domain of nobody", relay(func(r *pb.Relay) { r.Domains = []string{"ghost.example"} }), "relay.domains[0]", "ghost.example is not a domain of tenant"},
		{"relay of an unknown tenant", relay(func(r *pb.Relay) { r.TenantId = "ghost" }), "relay.tenant_id", `unknown tenant "ghost"`},
		{"unknown time zone", tenant(func(t *pb.Tenant) { t.TimeZone = "Mars/Olympus_Mons" }), "tenant.time_zone", `unknown time zone "Mars/Olympus_Mons"`},
		{"negative tenant limit", tenant(func(t *pb.Tenant) { t.DailyLimit = -5 }), "tenant.daily_limit", "must not be negative, got -5"},
		{"negative plan cap", tenant(func(t *pb.Tenant) { t.Plan = &pb.PlanCaps{MaxDomains: -1} }), "tenant.plan.max_domains", "must not be negative"},
		{"bad alias domain", tenant(func(t *pb.Tenant) { t.DomainAlias = "mail_alias" }), "tenant.domain_alias", "not"},
		{"bad admin email", tenant(func(t *pb.Tenant) { t.AdminEmails = []string{"ops at acme"} }), "tenant.admin_emails[0]", "not an email address"},
		{"bad id", tenant(func(t *pb.Tenant) { t.Id = "a b" }), "tenant.id", "must be 1-64 letters"},
		{"bad domain name", domain(&pb.Domain{TenantId: "acme", Name: "-acme-.example"}), "domain.name", "not a valid domain name"},
		{"single-label domain", domain(&pb.Domain{TenantId: "acme", Name: "localhost"}), "domain.name", "not a fully qualified"},
		{"domain of an unknown tenant", domain(&pb.Domain{TenantId: "ghost", Name: "ghost.example"}), "domain.tenant_id", `unknown tenant "ghost"`},
		{"custom return path without address", domain(&pb.Domain{TenantId: "acme", Name: "b.example", ReturnPathMode: pb.ReturnPathMode_RETURN_PATH_MODE_CUSTOM}), "domain.custom_return_path", "required"},
		{"DKIM key that is not PEM", domain(&pb.Domain{TenantId: "acme", Name: "c.example", DkimKeys: []*pb.DkimKey{{Selector: "s1", PrivateKeyPem: "garbage"}}}), "domain.dkim_keys[0].private_key_pem", "not a PEM block"},
		{"bad selector", domain(&pb.Domain{TenantId: "acme", Name: "d.example", DkimKeys: []*pb.DkimKey{{Selector: "a_b", PrivateKeyPem: "x"}}}), "domain.dkim_keys[0].selector", "not a valid selector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status.Code(tt.err) != codes.InvalidArgument {
				t.Fatalf("code = %v (%v), want InvalidArgument", status.Code(tt.err), tt.err)
			}
			f := fields(tt.err)
			if _, ok := f[tt.field]; !ok {
				t.Errorf("field violations %v lack %s", f, tt.field)
			}
			if msg := status.Convert(tt.err).Message(); !strings.Contains(msg, tt.field+": ") || !strings.Contains(msg, tt.message) {
				t.Errorf("message %q lacks %q and %q", msg, tt.field+": ", tt.message)
			}
		})
	}

	t.Run("duplicate domain already exists", func(t *testing.T) {
		err := domain(&pb.Domain{TenantId: "acme", Name: "ACME.example"})
		if status.Code(err) != codes.AlreadyExists || fields(err)["domain.name"] == "" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("every violation is reported at once", func(t *testing.T) {
		err := relay(func(r *pb.Relay) { r.Port, r.Host, r.DailyLimit = 0, "", -1 })
		if f := fields(err); len(f) != 3 {
			t.Errorf("violations = %v, want port, host and daily_limit", f)
		}
	})
}

func TestConfigService_enforcesPlanCaps(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)

	for i := 2; i <= 5; i++ {
		if _, err := admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: fmt.Sprintf("d%d.acme.example", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: "d6.acme.example"}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), `tenant "acme" already has 5 domains`) {
		t.Errorf("6th domain: %v", err)
	}

	for i := 1; i <= 3; i++ {
		if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay(fmt.Sprintf("r%d", i), "acme", "acme.example")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("r4", "acme", "acme.example")})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "domain acme.example already has 3 relays") {
		t.Errorf("4th relay: %v", err)
	}

	// A plan with other caps applies them.
	tn := acmeTenant()
	tn.Plan = &pb.PlanCaps{MaxRelaysPerDomain: 4, MaxDomains: 6}
	if _, err := admin.UpdateTenant(ctx, &pb.UpdateTenantRequest{Tenant: tn}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("r4", "acme", "acme.example")}); err != nil {
		t.Errorf("4th relay with max_relays_per_domain 4: %v", err)
	}
	if _, err := admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: "d6.acme.example"}}); err != nil {
		t.Errorf("6th domain with max_domains 6: %v", err)
	}
}

func TestConfigService_authenticatesAndAuthorisesEveryCall(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)
	other := acmeTenant()
	other.Id = "other"
	if _, err := admin.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: other}); err != nil {
		t.Fatal(err)
	}
	relay, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("r1", "acme", "acme.example")})
	if err != nil {
		t.Fatal(err)
	}

	anonymous := client(t, e, "")
	wrong := client(t, e, "not-a-valid-token-at-all")
	acme := client(t, e, acmeAdminToken)
	otherAdmin := client(t, e, otherAdminToken)
	user := client(t, e, acmeUserToken)
	pipeline := client(t, e, pipelineToken)

	call := func(c pb.ConfigServiceClient, f func(pb.ConfigServiceClient) error) codes.Code {
		return status.Code(f(c))
	}
	getTenant := func(id string) func(pb.ConfigServiceClient) error {
		return func(c pb.ConfigServiceClient) error {
			_, err := c.GetTenant(ctx, &pb.GetTenantRequest{Id: id})
			return err
		}
	}
	snapshot := func(c pb.ConfigServiceClient) error {
		_, err := c.GetSnapshot(ctx, &pb.GetSnapshotRequest{})
		return err
	}
	watch := func(c pb.ConfigServiceClient) error {
		s, err := c.WatchChanges(ctx, &pb.WatchChangesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	createRelay := func(tenantID string) func(pb.ConfigServiceClient) error {
		return func(c pb.ConfigServiceClient) error {
			_, err := c.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("", tenantID, "acme.example")})
			return err
		}
	}
	tests := []struct {
		name string
		got  codes.Code
		want codes.Code
	}{
		{"no token", call(anonymous, getTenant("acme")), codes.Unauthenticated},
		{"no token on a stream", call(anonymous, watch), codes.Unauthenticated},
		{"unknown token", call(wrong, getTenant("acme")), codes.Unauthenticated},
		{"tenant admin reads own tenant", call(acme, getTenant("acme")), codes.OK},
		{"tenant admin cannot read another tenant", call(otherAdmin, getTenant("acme")), codes.PermissionDenied},
		{"tenant admin cannot read another tenant's relay", call(otherAdmin, func(c pb.ConfigServiceClient) error {
			_, err := c.GetRelay(ctx, &pb.GetRelayRequest{Id: relay.Relay.Id})
			return err
		}), codes.PermissionDenied},
		{"tenant admin cannot list another tenant's domains", call(otherAdmin, func(c pb.ConfigServiceClient) error {
			_, err := c.ListDomains(ctx, &pb.ListDomainsRequest{TenantId: "acme"})
			return err
		}), codes.PermissionDenied},
		{"tenant admin cannot create tenants", call(acme, func(c pb.ConfigServiceClient) error {
			_, err := c.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: &pb.Tenant{Name: "x"}})
			return err
		}), codes.PermissionDenied},
		{"tenant admin cannot raise its plan", call(acme, func(c pb.ConfigServiceClient) error {
			tn := acmeTenant()
			tn.Plan = &pb.PlanCaps{MaxDomains: 100}
			_, err := c.UpdateTenant(ctx, &pb.UpdateTenantRequest{Tenant: tn})
			return err
		}), codes.PermissionDenied},
		{"tenant admin changes its tenant's settings", call(acme, func(c pb.ConfigServiceClient) error {
			tn := acmeTenant()
			tn.DefaultFrom = "hello"
			_, err := c.UpdateTenant(ctx, &pb.UpdateTenantRequest{Tenant: tn})
			return err
		}), codes.OK},
		{"tenant admin creates relays for its tenant", call(acme, createRelay("acme")), codes.OK},
		{"tenant admin cannot create relays for another tenant", call(otherAdmin, createRelay("acme")), codes.PermissionDenied},
		{"user reads own tenant", call(user, getTenant("acme")), codes.OK},
		{"user cannot write", call(user, createRelay("acme")), codes.PermissionDenied},
		{"pipeline reads any tenant", call(pipeline, getTenant("other")), codes.OK},
		{"pipeline cannot write", call(pipeline, createRelay("acme")), codes.PermissionDenied},
		{"pipeline reads the snapshot", call(pipeline, snapshot), codes.OK},
		{"tenant admin cannot read the snapshot", call(acme, snapshot), codes.PermissionDenied},
		{"tenant admin cannot watch", call(acme, watch), codes.PermissionDenied},
		{"pipeline cannot set the default server", call(pipeline, func(c pb.ConfigServiceClient) error {
			_, err := c.SetDefaultServer(ctx, &pb.SetDefaultServerRequest{Server: &pb.DefaultServer{Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX}})
			return err
		}), codes.PermissionDenied},
		{"tenant admin cannot test another tenant's relay", call(otherAdmin, func(c pb.ConfigServiceClient) error {
			_, err := c.TestRelay(ctx, &pb.TestRelayRequest{RelayId: relay.Relay.Id})
			return err
		}), codes.PermissionDenied},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: code = %v, want %v", tt.name, tt.got, tt.want)
		}
	}

	t.Run("a tenant admin lists only its own tenant", func(t *testing.T) {
		resp, err := acme.ListTenants(ctx, &pb.ListTenantsRequest{})
		if err != nil || len(resp.Tenants) != 1 || resp.Tenants[0].Id != "acme" {
			t.Errorf("ListTenants = %v, %v", resp, err)
		}
		relays, err := acme.ListRelays(ctx, &pb.ListRelaysRequest{})
		if err != nil || len(relays.Relays) != 2 {
			t.Errorf("ListRelays = %v, %v", relays, err)
		}
	})
	t.Run("health checks need no token", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(dial(t, e.addr, "")).Check(ctx, &healthpb.HealthCheckRequest{Service: pb.ConfigService_ServiceDesc.ServiceName})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health = %v, %v", resp, err)
		}
	})
	t.Run("a server without tokens refuses everything", func(t *testing.T) {
		bare := start(t, config.Config{DatabaseURL: sqliteURL(t), Tokens: map[string]auth.Identity{}}, "")
		_, err := client(t, bare, adminToken).ListTenants(ctx, &pb.ListTenantsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("code = %v", status.Code(err))
		}
	})
}

func TestConfigService_paginatesLists(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	ctx := ctxT(t)
	for i := range 5 {
		tn := acmeTenant()
		tn.Id = fmt.Sprintf("t%d", i)
		if _, err := admin.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: tn}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	token := ""
	for range 10 {
		resp, err := admin.ListTenants(ctx, &pb.ListTenantsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range resp.Tenants {
			ids = append(ids, tn.Id)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if strings.Join(ids, ",") != "t0,t1,t2,t3,t4" {
		t.Errorf("pages = %v", ids)
	}
	if _, err := admin.ListTenants(ctx, &pb.ListTenantsRequest{PageToken: "!!"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
}

// selfSigned returns a client certificate and key in PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailbus client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

func TestConfigService_neverReturnsOrStoresSecretsInPlainText(t *testing.T) {
	backends := map[string]func(t *testing.T) string{
		"SQLite":   func(t *testing.T) string { return sqliteURL(t) },
		"Postgres": func(t *testing.T) string { return testkit.Postgres(t) },
	}
	for name, newURL := range backends {
		t.Run(name, func(t *testing.T) {
			url := newURL(t)
			e := start(t, config.Config{DatabaseURL: url}, "")
			admin := client(t, e, adminToken)
			domain := setupAcme(t, admin)
			ctx := ctxT(t)
			certPEM, keyPEM := selfSigned(t)
			keyBody := strings.Split(keyPEM, "\n")[1]
			_, dkimPEM := ed25519PEM(t)
			dkimBody := strings.Split(dkimPEM, "\n")[1]
			secrets := []string{relayPassword, relayOAuthToken, keyBody, dkimBody}

			var responses []proto.Message
			record := func(m proto.Message, err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
				responses = append(responses, m)
			}
			r1, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("pw", "acme", "acme.example")})
			record(r1, err)
			if !r1.Relay.Auth.HasPassword || r1.Relay.Auth.Password != "" {
				t.Errorf("create response auth = %v", r1.Relay.Auth)
			}
			oauth := plainRelay("oauth", "acme", "acme.example")
			oauth.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: "mailer@acme.example", OauthToken: relayOAuthToken}
			record(admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: oauth}))
			cert := plainRelay("cert", "acme", "acme.example")
			cert.Security = pb.RelaySecurity_RELAY_SECURITY_TLS
			cert.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT, ClientCertPem: certPEM, ClientKeyPem: keyPEM}
			record(admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: cert}))
			domain.DkimKeys = []*pb.DkimKey{{Selector: "imported", PrivateKeyPem: dkimPEM, Active: true}}
			record(admin.UpdateDomain(ctx, &pb.UpdateDomainRequest{Domain: domain}))

			// Updating with the secret left empty keeps it.
			keep := plainRelay("pw", "acme", "acme.example")
			keep.Auth.Password = ""
			keep.Priority = 5
			updated, err := admin.UpdateRelay(ctx, &pb.UpdateRelayRequest{Relay: keep})
			record(updated, err)
			if !updated.Relay.Auth.HasPassword {
				t.Error("update with an empty password dropped the stored one")
			}
			if s, err := e.store.GetRelaySecrets(ctx, "pw"); err != nil || s.Password != relayPassword {
				t.Errorf("stored password after update = %q, %v", s.Password, err)
			}

			record(admin.GetRelay(ctx, &pb.GetRelayRequest{Id: "cert"}))
			record(admin.ListRelays(ctx, &pb.ListRelaysRequest{TenantId: "acme"}))
			record(admin.GetDomain(ctx, &pb.GetDomainRequest{Id: domain.Id}))
			record(admin.ListDomains(ctx, &pb.ListDomainsRequest{}))
			adminSnap, err := admin.GetSnapshot(ctx, &pb.GetSnapshotRequest{})
			record(adminSnap, err)
			for _, r := range adminSnap.Relays {
				if len(r.SealedPassword)+len(r.SealedOauthToken)+len(r.SealedClientKey) != 0 {
					t.Errorf("admin snapshot carries sealed secrets of %s", r.Relay.Id)
				}
			}
			pipeSnap, err := client(t, e, pipelineToken).GetSnapshot(ctx, &pb.GetSnapshotRequest{})
			record(pipeSnap, err)
			sealedCount := 0
			for _, r := range pipeSnap.Relays {
				sealedCount += min(len(r.SealedPassword), 1) + min(len(r.SealedOauthToken), 1) + min(len(r.SealedClientKey), 1)
			}
			if sealedCount != 3 || len(pipeSnap.DkimKeys) != 1 || len(pipeSnap.DkimKeys[0].SealedPrivateKey) == 0 {
				t.Errorf("pipeline snapshot has %d sealed relay secrets and keys %v; want 3 and 1", sealedCount, pipeSnap.DkimKeys)
			}

			for i, m := range responses {
				b, err := proto.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range secrets {
					if bytes.Contains(b, []byte(s)) {
						t.Errorf("response %d (%T) contains secret %.12q...", i, m, s)
					}
				}
			}

			if name == "SQLite" {
				e.stop()
				path := strings.TrimPrefix(url, "sqlite://")
				files, _ := filepath.Glob(path + "*")
				if len(files) == 0 {
					t.Fatal("no database files")
				}
				for _, f := range files {
					raw, err := os.ReadFile(f)
					if err != nil {
						t.Fatal(err)
					}
					for _, s := range secrets {
						if bytes.Contains(raw, []byte(s)) {
							t.Errorf("%s contains secret %.12q... in plain text", filepath.Base(f), s)
						}
					}
				}
				if !bytesContainAny(files, []byte("smtp.acme.example")) {
					t.Error("the database files do not even contain the relay host; the scan looked at the wrong files")
				}
				return
			}
			assertRowsFree(t, e.store, secrets, "relays", "dkim_keys", "domains", "tenants", "config_changes")
		})
	}
}

func bytesContainAny(files []string, needle []byte) bool {
	for _, f := range files {
		if raw, err := os.ReadFile(f); err == nil && bytes.Contains(raw, needle) {
			return true
		}
	}
	return false
}

// assertRowsFree reads every column of the tables as text and looks for the
// secrets.
func assertRowsFree(t *testing.T, st *config.Store, secrets []string, tables ...string) {
	t.Helper()
	ctx := ctxT(t)
	for _, table := range tables {
		rows, err := st.DB().QueryContext(ctx, "SELECT * FROM "+table)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			line := fmt.Sprint(vals...)
			for i, v := range vals {
				if b, ok := v.([]byte); ok {
					line += string(b)
				}
				_ = i
			}
			for _, s := range secrets {
				if strings.Contains(line, s) {
					t.Errorf("a %s row holds secret %.12q... in plain text", table, s)
				}
			}
			n++
		}
		rows.Close()
		if table == "relays" && n == 0 {
			t.Error("no relay rows scanned")
		}
	}
}

func ed25519PEM(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// parseTXT splits a DKIM record into its tags.
func parseTXT(t *testing.T, txt string) map[string]string {
	t.Helper()
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			t.Fatalf("malformed tag %q in %q", part, txt)
		}
		tags[k] = v
	}
	return tags
}

func TestGenerateDkimKey_publishesTheKeyThatSigns(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	domain := setupAcme(t, admin)
	ctx := ctxT(t)

	cfg, err := configclient.New(ctx, dial(t, e.addr, pipelineToken), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()

	records := map[string]string{}
	for _, tc := range []struct {
		selector string
		alg      pb.DkimAlgorithm
		k        string
	}{
		{"mb2026r", pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, "rsa"},
		{"mb2026e", pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256, "ed25519"},
	} {
		resp, err := admin.GenerateDkimKey(ctx, &pb.GenerateDkimKeyRequest{DomainId: domain.Id, Selector: tc.selector, Algorithm: tc.alg})
		if err != nil {
			t.Fatal(err)
		}
		key := resp.Key
		if key.DnsName != tc.selector+"._domainkey.acme.example" || !key.Active || key.PrivateKeyPem != "" {
			t.Errorf("key = %v", key)
		}
		tags := parseTXT(t, key.DnsTxtValue)
		if tags["v"] != "DKIM1" || tags["k"] != tc.k {
			t.Errorf("TXT %q", key.DnsTxtValue)
		}
		p, err := base64.StdEncoding.DecodeString(tags["p"])
		if err != nil {
			t.Fatal(err)
		}
		switch tc.k {
		case "rsa":
			pub, err := x509.ParsePKIXPublicKey(p)
			if err != nil {
				t.Fatal(err)
			}
			if rk, ok := pub.(*rsa.PublicKey); !ok || rk.N.BitLen() != 2048 {
				t.Errorf("published RSA key = %T %v", pub, pub)
			}
		case "ed25519":
			if len(p) != ed25519.PublicKeySize {
				t.Errorf("ed25519 p= is %d bytes, want the raw 32-byte key (RFC 8463)", len(p))
			}
		}
		records[key.DnsName] = key.DnsTxtValue
	}
	if _, err := admin.GenerateDkimKey(ctx, &pb.GenerateDkimKeyRequest{DomainId: domain.Id, Selector: "mb2026r", Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same selector twice: %v", err)
	}
	if _, err := admin.GenerateDkimKey(ctx, &pb.GenerateDkimKeyRequest{DomainId: domain.Id, Selector: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no algorithm: %v", err)
	}

	rev, err := e.store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	keys := cfg.DKIMKeys("ACME.example")
	if len(keys) != 2 {
		t.Fatalf("client has %d keys for acme.example, want 2", len(keys))
	}

	// Sign with the keys the pipeline gets and verify against the published
	// records: dual signing, RSA and Ed25519.
	msg := "From: Alice <alice@acme.example>\r\nTo: bob@example.net\r\nSubject: hi\r\nDate: Mon, 02 Jan 2026 10:00:00 +0000\r\nMessage-ID: <1@acme.example>\r\n\r\nHello Bob.\r\n"
	signed := msg
	for _, k := range keys {
		var b bytes.Buffer
		err := dkim.Sign(&b, strings.NewReader(signed), &dkim.SignOptions{Domain: "acme.example", Selector: k.Selector, Signer: k.Signer})
		if err != nil {
			t.Fatalf("signing with %s: %v", k, err)
		}
		signed = b.String()
	}
	verifications, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if r, ok := records[name]; ok {
				return []string{r}, nil
			}
			return nil, fmt.Errorf("no TXT record %s", name)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(verifications) != 2 {
		t.Fatalf("%d verifications, want 2", len(verifications))
	}
	for _, v := range verifications {
		if v.Err != nil {
			t.Errorf("signature by %s does not verify against the published record: %v", v.Domain, v.Err)
		}
	}

	t.Run("an imported PEM key is published and signs", func(t *testing.T) {
		key, keyPEM := ed25519PEM(t)
		resp, err := admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: "imported.example",
			DkimKeys: []*pb.DkimKey{{Selector: "imp", PrivateKeyPem: keyPEM, Active: true}}}})
		if err != nil {
			t.Fatal(err)
		}
		tags := parseTXT(t, resp.Domain.DkimKeys[0].DnsTxtValue)
		want := base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
		if tags["k"] != "ed25519" || tags["p"] != want {
			t.Errorf("imported key record = %q", resp.Domain.DkimKeys[0].DnsTxtValue)
		}
		_, err = admin.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: "acme", Name: "mismatch.example",
			DkimKeys: []*pb.DkimKey{{Selector: "imp", PrivateKeyPem: keyPEM, Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256}}}})
		if fields(err)["domain.dkim_keys[0].algorithm"] == "" {
			t.Errorf("algorithm mismatch: %v", err)
		}
	})
}

func TestSeed_appliesTheExampleAndIsIdempotent(t *testing.T) {
	const example = "../../deploy/mailbus.example.yaml"
	ctx := ctxT(t)
	st, err := config.OpenStore(ctx, sqliteURL(t), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	first, err := config.SeedFromFile(ctx, st, example)
	if err != nil {
		t.Fatal(err)
	}
	if first.Changes == 0 {
		t.Fatal("the first seed changed nothing")
	}
	second, err := config.SeedFromFile(ctx, st, example)
	if err != nil {
		t.Fatal(err)
	}
	if second.Changes != 0 || second.Revision != first.Revision {
		t.Errorf("the second seed recorded %d changes (revision %d -> %d)", second.Changes, first.Revision, second.Revision)
	}
	changes, _ := st.Changes(ctx, 0, 1000)
	if int64(len(changes)) != first.Changes {
		t.Errorf("%d change records, want %d", len(changes), first.Changes)
	}

	tn, err := st.GetTenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if tn.TimeZone != "Europe/Berlin" || tn.DefaultFrom != "noreply" || tn.DomainAlias != "mail.mailbus.test" || tn.BounceDomain != "bounce.mailbus.test" || !tn.Active {
		t.Errorf("tenant = %v", tn)
	}
	d, err := st.GetDomain(ctx, "acme-example")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "acme.example" || d.ReturnPathMode != pb.ReturnPathMode_RETURN_PATH_MODE_VERP || len(d.DkimKeys) != 2 {
		t.Errorf("domain = %v", d)
	}
	for _, k := range d.DkimKeys {
		want := map[string]string{"mb2026e": "ed25519", "mb2026r": "rsa"}[k.Selector]
		if parseTXT(t, k.DnsTxtValue)["k"] != want || !k.Active {
			t.Errorf("key %s = %v", k.Selector, k)
		}
	}
	r, err := st.GetRelay(ctx, "acme-catcher")
	if err != nil {
		t.Fatal(err)
	}
	if r.Host != "127.0.0.1" || r.Port != 1025 || r.Security != pb.RelaySecurity_RELAY_SECURITY_NONE || r.Domains[0] != "acme.example" || !r.Active ||
		r.MaxConnections != 20 {
		t.Errorf("relay = %v", r)
	}
	ds, err := st.GetDefaultServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ds.Mode != pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY || ds.Relay.GetPort() != 1025 || ds.Relay.GetId() != "default-catcher" {
		t.Errorf("default server = %v", ds)
	}
	roles := map[string]bool{}
	for _, id := range first.Tokens {
		roles[string(id.Role)] = true
	}
	if !roles["admin"] || !roles["pipeline"] {
		t.Errorf("seed tokens = %v", first.Tokens)
	}

	t.Run("a changed seed updates only what differs", func(t *testing.T) {
		raw, err := os.ReadFile(example)
		if err != nil {
			t.Fatal(err)
		}
		changed := strings.Replace(string(raw), "priority: 10", "priority: 20", 1)
		res, err := config.Seed(ctx, st, strings.NewReader(changed))
		if err != nil {
			t.Fatal(err)
		}
		if res.Changes != 1 {
			t.Errorf("changing one relay recorded %d changes", res.Changes)
		}
	})

	t.Run("seed errors say where", func(t *testing.T) {
		bad := "tenants:\n  - id: acme\n    name: ACME\n    relays:\n      - id: r\n        name: r\n        host: h\n        port: 0\n        security: none\n        domains: [acme.example]\n"
		_, err := config.Seed(ctx, st, strings.NewReader(bad))
		if err == nil || !strings.Contains(err.Error(), "tenants[0] (acme).relays[0]: relay.port: must be 1-65535, got 0") {
			t.Errorf("err = %v", err)
		}
		_, err = config.Seed(ctx, st, strings.NewReader("tenants:\n  - id: acme\n    nmae: typo\n"))
		if err == nil || !strings.Contains(err.Error(), "nmae") {
			t.Errorf("unknown field: err = %v", err)
		}
	})
}

func TestService_seedFileTokensAuthenticate(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t), SeedFile: "../../deploy/mailbus.example.yaml", Tokens: map[string]auth.Identity{}}, "")
	ctx := ctxT(t)
	resp, err := client(t, e, "dev-admin-token-not-for-production").GetTenant(ctx, &pb.GetTenantRequest{Id: "acme"})
	if err != nil || resp.Tenant.Name != "ACME Corp" {
		t.Fatalf("GetTenant with the seed's admin token = %v, %v", resp, err)
	}
	cfg, err := configclient.New(ctx, dial(t, e.addr, "dev-pipeline-token-not-for-production"), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	if ds := cfg.DefaultServer(); ds.Mode != pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY || ds.Relay.Relay.GetHost() != "127.0.0.1" {
		t.Errorf("default server = %+v", ds)
	}
	if len(cfg.DKIMKeys("acme.example")) != 2 {
		t.Errorf("keys = %v", cfg.DKIMKeys("acme.example"))
	}
}

func TestSeed_replicasSeedingAtOnceAgree(t *testing.T) {
	backends := map[string]func(t *testing.T) string{
		"SQLite":   func(t *testing.T) string { return sqliteURL(t) },
		"Postgres": func(t *testing.T) string { return testkit.Postgres(t) },
	}
	for name, newURL := range backends {
		t.Run(name, func(t *testing.T) {
			url := newURL(t)
			ctx := ctxT(t)
			stores := make([]*config.Store, 3)
			for i := range stores {
				st, err := config.OpenStore(ctx, url, testSealer(t))
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				stores[i] = st
			}
			errs := make(chan error, len(stores))
			for _, st := range stores {
				go func() {
					_, err := config.SeedFromFile(ctx, st, "../../deploy/mailbus.example.yaml")
					errs <- err
				}()
			}
			for range stores {
				if err := <-errs; err != nil {
					t.Errorf("concurrent seed: %v", err)
				}
			}
			snap, err := stores[0].Snapshot(ctx, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(snap.Tenants) != 1 || len(snap.Domains) != 1 || len(snap.Relays) != 1 || len(snap.DkimKeys) != 2 {
				t.Errorf("after concurrent seeds: %d tenants, %d domains, %d relays, %d keys", len(snap.Tenants), len(snap.Domains), len(snap.Relays), len(snap.DkimKeys))
			}
			// Every replica published one key per selector, and it stays.
			again, err := config.SeedFromFile(ctx, stores[1], "../../deploy/mailbus.example.yaml")
			if err != nil || again.Changes != 0 {
				t.Errorf("seeding again: %d changes, %v", again.Changes, err)
			}
		})
	}
}
