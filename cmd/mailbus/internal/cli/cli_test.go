package cli

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/auth"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

func TestAPIFlags_findTheDevDataDirectoryFromFlagEnvThenTheRecordMailbusDevWrote(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("MAILBUS_DATA", "")
	t.Setenv("MAILBUS_API", "")
	t.Chdir(t.TempDir()) // not the repository root: no ./.mailbus here
	var f apiFlags
	if _, err := f.apiToken(); err == nil || !strings.Contains(err.Error(), "no API token") {
		t.Fatalf("with nothing recorded: %v, want no API token", err)
	}

	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "admin.token"), []byte("tok-from-dev\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteDevState(DevState{DataDir: data, GRPCAddr: "127.0.0.1:17070"}); err != nil {
		t.Fatal(err)
	}
	tok, err := f.apiToken()
	addr, _ := f.resolve()
	if err != nil || tok != "tok-from-dev" || addr != "127.0.0.1:17070" {
		t.Errorf("from the dev record: token %q, addr %s, %v", tok, addr, err)
	}

	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "admin.token"), []byte("tok-from-env\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILBUS_DATA", other)
	t.Setenv("MAILBUS_API", "127.0.0.1:1")
	if tok, _ := f.apiToken(); tok != "tok-from-env" {
		t.Errorf("MAILBUS_DATA: token %q", tok)
	}
	f.data, f.addr = data, "127.0.0.1:2"
	if tok, _ := f.apiToken(); tok != "tok-from-dev" {
		t.Errorf("--data over MAILBUS_DATA: token %q", tok)
	}
	if addr, _ := f.resolve(); addr != "127.0.0.1:2" {
		t.Errorf("--api over MAILBUS_API: %s", addr)
	}
}

// oauthEnv is a config service with relay gmail set up to connect to a
// local OAuth server.
type oauthEnv struct {
	api   string
	token string
	store *config.Store
	srv   *testkit.OAuthServer
	ctx   context.Context
}

func startOAuthEnv(t *testing.T) oauthEnv {
	t.Helper()
	sealer, err := seal.New(map[byte][]byte{1: bytes.Repeat([]byte{9}, 32)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	const token = "cli-test-admin-token-0123456789"
	svc := config.New(config.Config{DatabaseURL: "sqlite://" + filepath.Join(t.TempDir(), "config.db"),
		Tokens: map[string]auth.Identity{token: {Role: auth.RoleAdmin}}}, config.Deps{Log: slog.New(slog.DiscardHandler), Sealer: sealer})
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

	srv := testkit.StartOAuthServer(t, time.Hour)
	st := svc.Store()
	tctx, tcancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(tcancel)
	if _, err := st.CreateTenant(tctx, &pb.Tenant{Id: "acme", Name: "ACME", TimeZone: "UTC", Active: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateRelay(tctx, &pb.Relay{Id: "gmail", TenantId: "acme", Name: "gmail", Host: "smtp.gmail.com", Port: 587,
		Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS, Active: true,
		Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: srv.User,
			Oauth: &pb.RelayOAuth{AuthUrl: srv.AuthURL, TokenUrl: srv.TokenURL, ClientId: srv.ClientID, ClientSecret: srv.ClientSecret}}}); err != nil {
		t.Fatal(err)
	}
	return oauthEnv{api: lis.Addr().String(), token: token, store: st, srv: srv, ctx: tctx}
}

func (e oauthEnv) checkConnected(t *testing.T, printed string) {
	t.Helper()
	if !strings.Contains(printed, "relay gmail is connected to "+e.srv.User) {
		t.Errorf("output:\n%s", printed)
	}
	sec, err := e.store.GetRelaySecrets(e.ctx, "gmail")
	if err != nil || sec.OAuthRefreshToken == "" || e.srv.Grants("authorization_code") != 1 {
		t.Errorf("refresh token stored %t after %d exchanges (%v)", sec.OAuthRefreshToken != "", e.srv.Grants("authorization_code"), err)
	}
}

// oauth-connect against a config service and a local OAuth server: the
// test opens the printed URL as a browser would, the provider redirects to
// the command's loopback listener, and the relay ends up connected.
func TestRelayOAuthConnect_connectsARelayThroughTheLoopbackRedirect(t *testing.T) {
	e := startOAuthEnv(t)
	outR, outW := io.Pipe()
	cmd := Root()
	cmd.SetArgs([]string{"relay", "oauth-connect", "gmail", "--api", e.api, "--token", e.token, "--timeout", "1m"})
	cmd.SetOut(outW)
	ran := make(chan error, 1)
	go func() { ran <- cmd.ExecuteContext(e.ctx); outW.Close() }()

	// The browser: open the URL the command prints, follow the redirect.
	var printed strings.Builder
	sc := bufio.NewScanner(outR)
	opened := false
	for sc.Scan() {
		line := sc.Text()
		printed.WriteString(line + "\n")
		if !opened && strings.HasPrefix(line, e.srv.AuthURL+"?") {
			opened = true
			go func() {
				resp, err := http.Get(line)
				if err != nil {
					t.Errorf("browser: %v", err)
					return
				}
				resp.Body.Close()
			}()
		}
	}
	if err := <-ran; err != nil {
		t.Fatalf("oauth-connect: %v\n%s", err, printed.String())
	}
	e.checkConnected(t, printed.String())
}

// With a registered redirect URI that nothing listens on, the user pastes
// the address the browser ended up at.
func TestRelayOAuthConnect_takesThePastedRedirectAddress(t *testing.T) {
	e := startOAuthEnv(t)
	outR, outW := io.Pipe()
	inR, inW := io.Pipe()
	cmd := Root()
	cmd.SetArgs([]string{"relay", "oauth-connect", "gmail", "--api", e.api, "--token", e.token, "--timeout", "1m",
		"--redirect-uri", "https://console.acme.example/oauth/callback"})
	cmd.SetOut(outW)
	cmd.SetIn(inR)
	ran := make(chan error, 1)
	go func() { ran <- cmd.ExecuteContext(e.ctx); outW.Close() }()

	var printed strings.Builder
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		line := sc.Text()
		printed.WriteString(line + "\n")
		if strings.HasPrefix(line, e.srv.AuthURL+"?") {
			hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := hc.Get(line)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			go func() { _, _ = io.WriteString(inW, resp.Header.Get("Location")+"\n") }()
		}
	}
	if err := <-ran; err != nil {
		t.Fatalf("oauth-connect: %v\n%s", err, printed.String())
	}
	e.checkConnected(t, printed.String())
}
