package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
	"github.com/mailbus/mailbus/pkg/smtpclient"
)

// relayTester runs relay tests with the sender's own SMTP client, so that a
// test dials, negotiates TLS and authenticates exactly as a delivery would.
type relayTester struct {
	// rootCAs verifies relays' certificates; nil means the system roots.
	rootCAs *x509.CertPool
	// timeout bounds a whole test, so that a relay that never answers
	// does not hold an administrator's request for Postfix's 5 minutes.
	timeout time.Duration
}

// relayTestPhaseTimeout bounds each SMTP phase of a relay test: an
// administrator waits for the answer, and a relay slower than this would
// be a problem worth reporting anyway.
const relayTestPhaseTimeout = 20 * time.Second

func (s *server) TestRelay(ctx context.Context, req *pb.TestRelayRequest) (*pb.TestRelayResponse, error) {
	rs, err := s.relayToTest(ctx, req)
	if err != nil {
		return nil, err
	}
	relay, err := smtpclient.FromConfig(rs, "")
	if err != nil {
		return nil, invalidArgument(violation("relay", err.Error()))
	}
	// A relay with an OAuth client is tested with a token fresh from its
	// provider, as the senders get one, not with a stored token that
	// expired within the hour.
	if oc := (oauthtoken.Client{RelayID: rs.Relay.GetId(), OAuth: rs.Relay.GetAuth().GetOauth(), ClientSecret: rs.OAuthClientSecret,
		RefreshToken: rs.OAuthRefreshToken}); relay.Auth.Mechanism == smtpclient.MechanismXOAUTH2 && oc.Usable() {
		relay.Auth.Tokens = oauthtoken.Direct{Client: oc, HTTP: oauthHTTP}
	}
	tctx, cancel := context.WithTimeout(ctx, s.tester.timeout)
	defer cancel()
	pt := relayTestPhaseTimeout
	steps := smtpclient.TestRelay(tctx, relay, req.GetSendTo(), smtpclient.TestOptions{
		MailFrom: req.GetMailFrom(),
		RootCAs:  s.tester.rootCAs,
		Timeouts: smtpclient.Timeouts{Connect: pt, Greeting: pt, Helo: pt, StartTLS: pt, Mail: pt,
			Rcpt: pt, Data: pt, DataXfer: pt, DataDone: pt, Rset: pt, Quit: pt},
	})
	resp := &pb.TestRelayResponse{Ok: len(steps) > 0, Steps: make([]*pb.TestStep, len(steps))}
	for i, st := range steps {
		resp.Steps[i] = testStep(st)
		resp.Ok = resp.Ok && st.OK
	}
	s.log.InfoContext(ctx, "tested relay", "relay_id", rs.Relay.GetId(), "tenant_id", rs.Relay.GetTenantId(),
		"addr", relay.Addr(), "security", relay.Security.String(), "ok", resp.Ok, "steps", len(steps))
	return resp, nil
}

// relayToTest loads the stored relay with its secrets, or checks the
// inline one. A stored relay may be tested by whoever may read its tenant:
// the test goes to the configured host only. An inline relay may name any
// host and port, so only those who may change the tenant's relays test
// one; it carries its own secrets, never the stored ones, which would
// otherwise go to a host of the caller's choosing.
func (s *server) relayToTest(ctx context.Context, req *pb.TestRelayRequest) (*configclient.RelayWithSecrets, error) {
	id, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case req.GetRelayId() != "" && req.GetRelay() != nil:
		return nil, invalidArgument(violation("relay_id", "give relay_id or relay, not both"))
	case req.GetRelayId() != "":
		r, err := s.relayFor(ctx, req.GetRelayId(), false)
		if err != nil {
			return nil, err
		}
		sec, err := s.store.GetRelaySecrets(ctx, r.Id)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		rs := &configclient.RelayWithSecrets{Relay: r, Password: sec.Password, OAuthToken: sec.OAuthToken,
			OAuthClientSecret: sec.OAuthClientSecret, OAuthRefreshToken: sec.OAuthRefreshToken}
		if err := addClientCert(rs, r.GetAuth().GetClientCertPem(), sec.ClientKeyPEM); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "relay %s: %v", r.Id, err)
		}
		return rs, nil
	case req.GetRelay() != nil:
		r := clone(req.GetRelay())
		if r.TenantId == "" {
			r.TenantId = id.TenantID
		}
		if _, err := canWriteTenant(ctx, r.TenantId); err != nil {
			return nil, err
		}
		// Only what the connection needs is checked: a relay being tried
		// out need not have its name or domains yet.
		if r.Name == "" {
			r.Name = "relay test"
		}
		if len(r.Domains) == 0 {
			r.Domains = []string{"relay-test.invalid"}
		}
		if err := validateRelay(r, "relay", true, false); err != nil {
			return nil, err
		}
		a := r.GetAuth()
		rs := &configclient.RelayWithSecrets{Relay: r, Password: a.GetPassword(), OAuthToken: a.GetOauthToken(),
			OAuthClientSecret: a.GetOauth().GetClientSecret(), OAuthRefreshToken: a.GetOauth().GetRefreshToken()}
		if err := addClientCert(rs, a.GetClientCertPem(), a.GetClientKeyPem()); err != nil {
			return nil, invalidArgument(violation("relay.auth.client_key_pem", err.Error()))
		}
		return rs, nil
	}
	return nil, invalidArgument(violation("relay_id", "required (or an inline relay)"))
}

func addClientCert(rs *configclient.RelayWithSecrets, certPEM, keyPEM string) error {
	if rs.Relay.GetAuth().GetMechanism() != pb.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT || certPEM == "" || keyPEM == "" {
		return nil
	}
	cert, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		return fmt.Errorf("loading the TLS client certificate: %w", err)
	}
	rs.ClientCert = &cert
	return nil
}

// testStep maps a step of the SMTP client's test to the API's.
func testStep(st smtpclient.Step) *pb.TestStep {
	out := &pb.TestStep{Name: st.Name, Ok: st.OK, Detail: st.Detail, DurationMs: st.Duration.Milliseconds()}
	if st.Reply.Code != 0 {
		out.Reply = &pb.SmtpReply{Code: int32(st.Reply.Code), EnhancedCode: st.Reply.Enhanced, Text: st.Reply.Text}
	}
	return out
}
