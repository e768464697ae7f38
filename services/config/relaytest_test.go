package config_test

import (
	"crypto/x509"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

func loopbackRelay(id string, port int, sec pb.RelaySecurity, password string) *pb.Relay {
	r := plainRelay(id, "acme", "acme.example")
	r.Host, r.Port, r.Security = "127.0.0.1", int32(port), sec
	r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "mailer@acme.example", Password: password}
	return r
}

func withHost(host string, r *pb.Relay) *pb.Relay {
	r.Host = host
	return r
}

// stepsOf renders the steps as "name ok|FAIL: detail" lines, for failure
// messages.
func stepsOf(resp *pb.TestRelayResponse) string {
	var b strings.Builder
	for _, s := range resp.GetSteps() {
		mark := "ok"
		if !s.GetOk() {
			mark = "FAIL"
		}
		b.WriteString("\n  " + s.GetName() + " " + mark + ": " + s.GetDetail())
	}
	return b.String()
}

func TestConfigService_TestRelayReportsTheServersOwnWords(t *testing.T) {
	good := testkit.NewCert(t)                   // valid for 127.0.0.1
	misnamed := testkit.NewCert(t, "other.test") // trusted, but not for localhost
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(good.CAPEM)
	roots.AppendCertsFromPEM(misnamed.CAPEM)

	e := start(t, config.Config{DatabaseURL: sqliteURL(t), RelayTestRootCAs: roots}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	acme := client(t, e, acmeAdminToken)
	ctx := ctxT(t)

	const password = "s3cret-relay-pw"
	starttls := testkit.StartSMTP(t, testkit.SMTPStartTLS(good), testkit.SMTPAuth("mailer@acme.example", password),
		testkit.SMTPDomain("relay.test"))
	implicit := testkit.StartSMTP(t, testkit.SMTPImplicitTLS(good), testkit.SMTPAuth("mailer@acme.example", password))
	mismatch := testkit.StartSMTP(t, testkit.SMTPStartTLS(misnamed), testkit.SMTPAuth("mailer@acme.example", password))

	starttlsSec, tlsSec := pb.RelaySecurity_RELAY_SECURITY_STARTTLS, pb.RelaySecurity_RELAY_SECURITY_TLS
	tests := []struct {
		name   string
		relay  *pb.Relay
		sendTo string
		ok     bool
		// failStep is the step that fails, and detail what it must say.
		failStep, detail string
		// replyCode is the failing step's reply code; 0 for local errors.
		replyCode int32
	}{
		{name: "connection refused", relay: loopbackRelay("refused", closedPort(t), starttlsSec, password),
			failStep: "connect", detail: "connect: connection refused"},
		{name: "certificate name mismatch", relay: withHost("localhost", loopbackRelay("mismatch", mismatch.Port(), starttlsSec, password)),
			failStep: "starttls", detail: "tls: failed to verify certificate: x509: certificate is valid for other.test, not localhost"},
		{name: "wrong password", relay: loopbackRelay("badpw", starttls.Port(), starttlsSec, "wrong"),
			failStep: "auth", detail: "535 5.7.8 Authentication failed", replyCode: 535},
		{name: "success over STARTTLS with a test message", relay: loopbackRelay("good", starttls.Port(), starttlsSec, password),
			sendTo: "admin@acme.example", ok: true},
		{name: "success over implicit TLS", relay: loopbackRelay("implicit", implicit.Port(), tlsSec, password), ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: tt.relay}); err != nil {
				t.Fatal(err)
			}
			// The plan allows 3 relays per domain.
			t.Cleanup(func() { _, _ = admin.DeleteRelay(ctx, &pb.DeleteRelayRequest{Id: tt.relay.Id}) })
			resp, err := acme.TestRelay(ctx, &pb.TestRelayRequest{RelayId: tt.relay.Id, SendTo: tt.sendTo})
			if err != nil {
				t.Fatal(err)
			}
			steps := resp.GetSteps()
			if len(steps) == 0 {
				t.Fatal("no steps")
			}
			if resp.GetOk() != tt.ok {
				t.Fatalf("ok = %v, want %v; steps:%s", resp.GetOk(), tt.ok, stepsOf(resp))
			}
			if tt.ok {
				for _, s := range steps {
					if !s.GetOk() {
						t.Errorf("step %s failed in a passing test: %s", s.GetName(), s.GetDetail())
					}
				}
				if last := steps[len(steps)-1]; last.GetName() != "quit" || last.GetReply().GetCode() != 221 {
					t.Errorf("last step = %v, want quit with 221", last)
				}
				if tt.sendTo != "" {
					m := starttls.WaitMessage(t, func(m testkit.SMTPMessage) bool { return m.To[0] == tt.sendTo })
					if !strings.Contains(string(m.Data), "Subject: mailbus relay test") {
						t.Errorf("test message = %q", m.Data)
					}
				}
				return
			}
			var failed *pb.TestStep
			for _, s := range steps {
				if !s.GetOk() {
					failed = s
					break
				}
			}
			if failed == nil || failed.GetName() != tt.failStep {
				t.Fatalf("failing step = %v, want %s; steps:%s", failed, tt.failStep, stepsOf(resp))
			}
			if !strings.Contains(failed.GetDetail(), tt.detail) {
				t.Errorf("detail = %q, want it to contain %q", failed.GetDetail(), tt.detail)
			}
			if failed.GetReply().GetCode() != tt.replyCode {
				t.Errorf("reply = %v, want code %d", failed.GetReply(), tt.replyCode)
			}
		})
	}
}

func TestConfigService_TestRelayVerifiesAgainstTheSystemRootsByDefault(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(testkit.NewCert(t)))
	r := loopbackRelay("r1", srv.Port(), pb.RelaySecurity_RELAY_SECURITY_STARTTLS, "pw")
	resp, err := admin.TestRelay(ctxT(t), &pb.TestRelayRequest{Relay: r})
	if err != nil {
		t.Fatal(err)
	}
	last := resp.GetSteps()[len(resp.GetSteps())-1]
	if resp.GetOk() || last.GetName() != "starttls" || !strings.Contains(last.GetDetail(), "certificate signed by unknown authority") {
		t.Errorf("a certificate from the test's own CA passed or failed otherwise; steps:%s", stepsOf(resp))
	}
}

func TestConfigService_TestRelayInlineUsesTheGivenSecretsOnly(t *testing.T) {
	cert := testkit.NewCert(t)
	e := start(t, config.Config{DatabaseURL: sqliteURL(t), RelayTestRootCAs: cert.CAPool}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPAuth("mailer@acme.example", "inline-pw"))
	ctx := ctxT(t)

	r := loopbackRelay("", srv.Port(), pb.RelaySecurity_RELAY_SECURITY_STARTTLS, "inline-pw")
	r.Name, r.Domains, r.TenantId = "", nil, "" // not needed to test; the tenant is the caller's
	resp, err := client(t, e, acmeAdminToken).TestRelay(ctx, &pb.TestRelayRequest{Relay: r})
	if err != nil || !resp.GetOk() {
		t.Fatalf("inline relay: %v; steps:%s", err, stepsOf(resp))
	}

	// A stored relay's id with an inline relay is refused: the stored
	// secrets must never go to a host the caller chose.
	stored := loopbackRelay("stored", srv.Port(), pb.RelaySecurity_RELAY_SECURITY_STARTTLS, "inline-pw")
	if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: stored}); err != nil {
		t.Fatal(err)
	}
	noSecret := loopbackRelay("stored", srv.Port(), pb.RelaySecurity_RELAY_SECURITY_STARTTLS, "")
	if _, err := admin.TestRelay(ctx, &pb.TestRelayRequest{Relay: noSecret}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("inline relay without its password: %v, want InvalidArgument", err)
	}
	if _, err := admin.TestRelay(ctx, &pb.TestRelayRequest{RelayId: "stored", Relay: noSecret}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("relay_id and relay together: %v, want InvalidArgument", err)
	}
}

func TestConfigService_TestRelayIsAuthorizedAsReadingTheRelaysTenant(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)
	port := closedPort(t) // every permitted test fails at connect, quickly
	stored := loopbackRelay("r1", port, pb.RelaySecurity_RELAY_SECURITY_NONE, "pw")
	stored.AllowPlaintextAuth = true
	if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: stored}); err != nil {
		t.Fatal(err)
	}
	inline := loopbackRelay("", port, pb.RelaySecurity_RELAY_SECURITY_NONE, "pw")
	inline.AllowPlaintextAuth = true

	tests := []struct {
		name  string
		token string
		req   *pb.TestRelayRequest
		want  codes.Code
	}{
		{"admin, stored", adminToken, &pb.TestRelayRequest{RelayId: "r1"}, codes.OK},
		{"tenant admin, stored", acmeAdminToken, &pb.TestRelayRequest{RelayId: "r1"}, codes.OK},
		{"tenant user, stored", acmeUserToken, &pb.TestRelayRequest{RelayId: "r1"}, codes.OK},
		{"other tenant's admin, stored", otherAdminToken, &pb.TestRelayRequest{RelayId: "r1"}, codes.PermissionDenied},
		{"no token", "", &pb.TestRelayRequest{RelayId: "r1"}, codes.Unauthenticated},
		{"unknown relay", adminToken, &pb.TestRelayRequest{RelayId: "nope"}, codes.NotFound},
		{"nothing to test", adminToken, &pb.TestRelayRequest{}, codes.InvalidArgument},
		{"tenant admin, inline", acmeAdminToken, &pb.TestRelayRequest{Relay: inline}, codes.OK},
		// An inline relay can point anywhere: only those who may change
		// the tenant's relays make the service connect to it.
		{"tenant user, inline", acmeUserToken, &pb.TestRelayRequest{Relay: inline}, codes.PermissionDenied},
		{"other tenant's admin, inline", otherAdminToken, &pb.TestRelayRequest{Relay: inline}, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client(t, e, tt.token).TestRelay(ctx, tt.req)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.want)
			}
			if err == nil && (resp.GetOk() || resp.GetSteps()[0].GetName() != "connect") {
				t.Errorf("test of a closed port: steps:%s", stepsOf(resp))
			}
		})
	}
}
