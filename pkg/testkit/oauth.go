package testkit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"
)

// OAuthServer is an OAuth 2.0 authorization server on loopback, as Google's
// and Microsoft's behave for mail clients: the authorization-code grant
// with PKCE (S256) whose consent page approves at once and redirects, and
// the refresh-token grant, issuing access tokens that expire after
// TokenLifetime. Valid says whether an access token is current, for an
// SMTP server that accepts only those (SMTPBearerTokenFunc).
type OAuthServer struct {
	// URL is the base URL; AuthURL and TokenURL are its endpoints.
	URL, AuthURL, TokenURL string
	// ClientID and ClientSecret are the one registered client.
	ClientID, ClientSecret string
	// User is the account that "signs in" at the consent page.
	User string

	mu       sync.Mutex
	lifetime time.Duration
	codes    map[string]oauthCode
	refresh  map[string]bool
	access   map[string]time.Time
	grants   map[string]int
}

type oauthCode struct {
	challenge, redirectURI string
}

// StartOAuthServer starts an authorization server whose access tokens live
// lifetime; it stops when the test ends.
func StartOAuthServer(t testing.TB, lifetime time.Duration) *OAuthServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testkit: listen for OAuth: %v", err)
	}
	s := &OAuthServer{ClientID: "mailbus-test-client", ClientSecret: "client-secret-" + randomHex(8), User: "mailer@acme.example",
		lifetime: lifetime, codes: map[string]oauthCode{}, refresh: map[string]bool{}, access: map[string]time.Time{}, grants: map[string]int{}}
	s.URL = "http://" + ln.Addr().String()
	s.AuthURL, s.TokenURL = s.URL+"/authorize", s.URL+"/token"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", s.authorize)
	mux.HandleFunc("POST /token", s.token)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SetTokenLifetime changes the lifetime of the access tokens issued next.
func (s *OAuthServer) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// IssueRefreshToken makes a refresh token, as a finished consent would.
func (s *OAuthServer) IssueRefreshToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := "refresh-" + randomHex(12)
	s.refresh[rt] = true
	return rt
}

// Valid reports whether token is an access token that has not expired.
func (s *OAuthServer) Valid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.access[token]
	return ok && time.Now().Before(exp)
}

// Revoke makes an access token invalid before it expires, as a password
// change or an administrator does.
func (s *OAuthServer) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.access, token)
}

// Grants counts the token requests served, by grant type
// ("authorization_code", "refresh_token").
func (s *OAuthServer) Grants(grantType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[grantType]
}

// authorize is the consent page: it checks the client and the PKCE
// challenge and sends the browser back with a code at once.
func (s *OAuthServer) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != s.ClientID || q.Get("response_type") != "code" {
		http.Error(w, "unknown client or response type", http.StatusBadRequest)
		return
	}
	if q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256" {
		http.Error(w, "PKCE (S256) required", http.StatusBadRequest)
		return
	}
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || redirect.Host == "" {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	code := "code-" + randomHex(12)
	s.mu.Lock()
	s.codes[code] = oauthCode{challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
	s.mu.Unlock()
	back := redirect.Query()
	back.Set("code", code)
	back.Set("state", q.Get("state"))
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (s *OAuthServer) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, "invalid_request", err.Error())
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != s.ClientID || secret != s.ClientSecret {
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	grant := r.PostForm.Get("grant_type")
	s.grants[grant]++
	resp := map[string]any{"token_type": "Bearer"}
	switch grant {
	case "authorization_code":
		c, ok := s.codes[r.PostForm.Get("code")]
		delete(s.codes, r.PostForm.Get("code"))
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if !ok || c.redirectURI != r.PostForm.Get("redirect_uri") || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
			oauthError(w, "invalid_grant", "unknown code, or redirect_uri or code_verifier does not match")
			return
		}
		rt := "refresh-" + randomHex(12)
		s.refresh[rt] = true
		resp["refresh_token"] = rt
	case "refresh_token":
		if !s.refresh[r.PostForm.Get("refresh_token")] {
			oauthError(w, "invalid_grant", "unknown refresh token")
			return
		}
	default:
		oauthError(w, "unsupported_grant_type", grant)
		return
	}
	at := "access-" + randomHex(12)
	s.access[at] = time.Now().Add(s.lifetime)
	resp["access_token"] = at
	resp["expires_in"] = int(s.lifetime / time.Second)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func oauthError(w http.ResponseWriter, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}
