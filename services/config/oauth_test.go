package config_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

func oauthRelay(id string, srv *testkit.OAuthServer) *pb.Relay {
	r := plainRelay(id, "acme", "acme.example")
	r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: srv.User,
		Oauth: &pb.RelayOAuth{AuthUrl: srv.AuthURL, TokenUrl: srv.TokenURL, ClientId: srv.ClientID, ClientSecret: srv.ClientSecret}}
	return r
}

// consent does what the browser does: open the authorization URL, let the
// provider approve, and read the redirect's query.
func consent(t *testing.T, authURL string) url.Values {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorization URL answered %s, want a redirect", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Query()
}

func TestRelayOAuth_connectsAnAccountWithTheAuthorizationCodeFlowAndStoresTheRefreshTokenSealed(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)
	srv := testkit.StartOAuthServer(t, time.Hour)

	created, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: oauthRelay("gmail", srv)})
	if err != nil {
		t.Fatalf("an XOAUTH2 relay with an OAuth client and no token yet: %v", err)
	}
	if o := created.Relay.Auth.Oauth; !o.GetHasClientSecret() || o.GetHasRefreshToken() || o.GetClientSecret() != "" || o.GetClientId() != srv.ClientID {
		t.Errorf("created relay's oauth = %v, want the client id, has_client_secret and no refresh token", o)
	}

	redirect := "http://127.0.0.1:8765/oauth/callback"
	begun, err := admin.BeginRelayOAuth(ctx, &pb.BeginRelayOAuthRequest{RelayId: "gmail", RedirectUri: redirect})
	if err != nil {
		t.Fatal(err)
	}
	au, _ := url.Parse(begun.AuthorizationUrl)
	if q := au.Query(); q.Get("code_challenge_method") != "S256" || q.Get("redirect_uri") != redirect || q.Get("state") != begun.State ||
		q.Get("access_type") != "offline" || q.Get("login_hint") != srv.User || strings.Contains(begun.AuthorizationUrl, srv.ClientSecret) {
		t.Errorf("authorization URL %s lacks PKCE, the redirect, the state or offline access", begun.AuthorizationUrl)
	}
	back := consent(t, begun.AuthorizationUrl)
	if back.Get("state") != begun.State {
		t.Fatalf("redirect state %q, want %q", back.Get("state"), begun.State)
	}

	// Another tenant's administrator cannot complete it, nor a forged state.
	other := client(t, e, otherAdminToken)
	if _, err := other.CompleteRelayOAuth(ctx, &pb.CompleteRelayOAuthRequest{State: back.Get("state"), Code: back.Get("code")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another tenant's admin completing: %v, want PermissionDenied", err)
	}
	forged := []byte(back.Get("state"))
	forged[10] ^= 1
	if _, err := admin.CompleteRelayOAuth(ctx, &pb.CompleteRelayOAuthRequest{State: string(forged), Code: back.Get("code")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a forged state: %v, want InvalidArgument", err)
	}

	done, err := admin.CompleteRelayOAuth(ctx, &pb.CompleteRelayOAuthRequest{State: back.Get("state"), Code: back.Get("code")})
	if err != nil {
		t.Fatal(err)
	}
	if o := done.Relay.Auth.Oauth; !o.GetHasRefreshToken() || o.GetRefreshToken() != "" {
		t.Errorf("completed relay's oauth = %v, want has_refresh_token without the token", o)
	}
	if n := srv.Grants("authorization_code"); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
	sec, err := e.store.GetRelaySecrets(ctx, "gmail")
	if err != nil || !strings.HasPrefix(sec.OAuthRefreshToken, "refresh-") || sec.OAuthClientSecret != srv.ClientSecret {
		t.Fatalf("stored secrets: refresh token %q, client secret stored %t, %v", sec.OAuthRefreshToken, sec.OAuthClientSecret == srv.ClientSecret, err)
	}
	// A code is good once.
	if _, err := admin.CompleteRelayOAuth(ctx, &pb.CompleteRelayOAuthRequest{State: back.Get("state"), Code: back.Get("code")}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("the same code again: %v, want FailedPrecondition", err)
	}

	// Secrets are in no read API, nor in plain text in the database; the
	// pipeline gets them sealed.
	secrets := []string{srv.ClientSecret, sec.OAuthRefreshToken}
	var reads []proto.Message
	for _, f := range []func() (proto.Message, error){
		func() (proto.Message, error) { return admin.GetRelay(ctx, &pb.GetRelayRequest{Id: "gmail"}) },
		func() (proto.Message, error) { return admin.ListRelays(ctx, &pb.ListRelaysRequest{TenantId: "acme"}) },
		func() (proto.Message, error) { return admin.GetSnapshot(ctx, &pb.GetSnapshotRequest{}) },
		func() (proto.Message, error) {
			return client(t, e, pipelineToken).GetSnapshot(ctx, &pb.GetSnapshotRequest{})
		},
	} {
		m, err := f()
		if err != nil {
			t.Fatal(err)
		}
		reads = append(reads, m, done, created, begun)
	}
	for i, m := range reads {
		b, _ := proto.Marshal(m)
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("read %d (%T) contains a secret", i, m)
			}
		}
	}
	pipe, err := client(t, e, pipelineToken).GetSnapshot(ctx, &pb.GetSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r := pipe.Relays[0]; len(r.SealedOauthClientSecret) == 0 || len(r.SealedOauthRefreshToken) == 0 {
		t.Errorf("pipeline snapshot lacks the sealed client secret or refresh token")
	}
	rows, err := e.store.DB().QueryContext(ctx, `SELECT * FROM relays`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := fmt.Sprint(vals...)
		for _, s := range secrets {
			if strings.Contains(row, s) {
				t.Errorf("relays row holds a secret in plain text")
			}
		}
	}

	// An update that leaves the secrets empty keeps them; changing the
	// client drops the refresh token, which belongs to the old one.
	keep := oauthRelay("gmail", srv)
	keep.Auth.Oauth.ClientSecret = ""
	keep.Priority = 7
	up, err := admin.UpdateRelay(ctx, &pb.UpdateRelayRequest{Relay: keep})
	if err != nil || !up.Relay.Auth.Oauth.HasRefreshToken || !up.Relay.Auth.Oauth.HasClientSecret {
		t.Errorf("update keeping the secrets: %v, %v", up.GetRelay().GetAuth().GetOauth(), err)
	}
	keep.Auth.Oauth.ClientId = "another-client"
	up, err = admin.UpdateRelay(ctx, &pb.UpdateRelayRequest{Relay: keep})
	if err != nil || up.Relay.Auth.Oauth.HasRefreshToken {
		t.Errorf("update with another client kept the refresh token: %v, %v", up.GetRelay().GetAuth().GetOauth(), err)
	}
}

func TestRelayOAuth_providerPresetsFillTheEndpointsAndScopes(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)
	for _, tc := range []struct{ provider, host, scope string }{
		{"google", "accounts.google.com", "https://mail.google.com/"},
		{"microsoft", "login.microsoftonline.com", "https://outlook.office.com/SMTP.Send offline_access"},
	} {
		r := plainRelay(tc.provider, "acme", "acme.example")
		r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: "mailer@acme.example",
			Oauth: &pb.RelayOAuth{Provider: tc.provider, ClientId: "id-" + tc.provider, ClientSecret: "secret"}}
		if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: r}); err != nil {
			t.Fatal(err)
		}
		b, err := admin.BeginRelayOAuth(ctx, &pb.BeginRelayOAuthRequest{RelayId: r.Id, RedirectUri: "http://127.0.0.1:9/cb"})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(b.AuthorizationUrl)
		if u.Host != tc.host || u.Query().Get("scope") != tc.scope {
			t.Errorf("%s: authorization URL %s, want host %s and scope %q", tc.provider, b.AuthorizationUrl, tc.host, tc.scope)
		}
	}
	bad := plainRelay("bad", "acme", "acme.example")
	bad.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: "mailer@acme.example",
		Oauth: &pb.RelayOAuth{Provider: "yahoo", ClientId: "x"}}
	_, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: bad})
	if f := fields(err); !strings.Contains(f["relay.auth.oauth"], "unknown OAuth provider") {
		t.Errorf("unknown provider: %v", err)
	}
	var st interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &st) {
		t.Errorf("not a status: %v", err)
	}
	_ = context.Background()
}

// A relay test of an OAuth relay authenticates with a token fresh from the
// provider, as the senders would; its stored access token is long dead.
func TestRelayOAuth_relayTestSignsInWithAFreshToken(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)
	srv := testkit.StartOAuthServer(t, time.Hour)
	smtpSrv := testkit.StartSMTP(t, testkit.SMTPAllowInsecureAuth(), testkit.SMTPAuthMechanisms("XOAUTH2"),
		testkit.SMTPBearerTokenFunc(func(user, token string) bool { return user == srv.User && srv.Valid(token) }))
	r := oauthRelay("gmail", srv)
	r.Host, r.Port, r.Security, r.AllowPlaintextAuth = smtpSrv.Host(), int32(smtpSrv.Port()), pb.RelaySecurity_RELAY_SECURITY_NONE, true
	r.Auth.OauthToken = "expired-long-ago"
	r.Auth.Oauth.RefreshToken = srv.IssueRefreshToken()
	if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: r}); err != nil {
		t.Fatal(err)
	}
	resp, err := admin.TestRelay(ctx, &pb.TestRelayRequest{RelayId: "gmail"})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Ok || srv.Grants("refresh_token") != 1 {
		t.Errorf("relay test ok=%t after %d refreshes; steps %v", resp.Ok, srv.Grants("refresh_token"), resp.Steps)
	}
}

func TestSeed_storesAnOAuthRelaysClientAndRefreshTokenSealed(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	ctx := ctxT(t)
	seed := filepath.Join(t.TempDir(), "seed.yaml")
	if err := os.WriteFile(seed, []byte(`
tenants:
  - id: acme
    name: ACME
    time_zone: UTC
    domains:
      - name: acme.example
    relays:
      - id: acme-gmail
        name: gmail
        host: smtp.gmail.com
        port: 587
        security: starttls
        auth:
          mechanism: xoauth2
          username: mailer@acme.example
          oauth:
            provider: google
            client_id: 1234-abc.apps.googleusercontent.com
            client_secret: GOCSPX-seeded-secret
            refresh_token: 1//seeded-refresh-token
        domains: [acme.example]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.SeedFromFile(ctx, e.store, seed); err != nil {
		t.Fatal(err)
	}
	r, err := client(t, e, adminToken).GetRelay(ctx, &pb.GetRelayRequest{Id: "acme-gmail"})
	if err != nil {
		t.Fatal(err)
	}
	if o := r.Relay.Auth.Oauth; o.GetProvider() != "google" || !o.GetHasClientSecret() || !o.GetHasRefreshToken() || o.GetClientSecret()+o.GetRefreshToken() != "" {
		t.Errorf("seeded relay's oauth = %v", o)
	}
	sec, err := e.store.GetRelaySecrets(ctx, "acme-gmail")
	if err != nil || sec.OAuthClientSecret != "GOCSPX-seeded-secret" || sec.OAuthRefreshToken != "1//seeded-refresh-token" {
		t.Errorf("seeded secrets: %v", err)
	}
	// Seeding again changes nothing.
	res, err := config.SeedFromFile(ctx, e.store, seed)
	if err != nil || res.Changes != 0 {
		t.Errorf("second seed: %d changes, %v; want none", res.Changes, err)
	}
}
