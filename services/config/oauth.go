package config

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
)

// oauthStateTTL is how long a started OAuth connection may take: a person
// signing in at the provider, perhaps with a second factor.
const oauthStateTTL = 15 * time.Minute

// oauthStateAAD binds a sealed state to its use.
var oauthStateAAD = []byte("mailbus/relay-oauth-state")

// oauthState is what a connection carries from BeginRelayOAuth to
// CompleteRelayOAuth. It travels sealed in the OAuth state parameter, so
// no replica has to remember it and the PKCE verifier never leaves the
// service readable.
type oauthState struct {
	RelayID     string    `json:"relay_id"`
	Verifier    string    `json:"verifier"`
	RedirectURI string    `json:"redirect_uri"`
	Expires     time.Time `json:"expires"`
}

// oauthHTTP calls providers' token endpoints.
var oauthHTTP = &http.Client{Timeout: 30 * time.Second}

// oauthClient is a stored relay's OAuth client with its secret opened.
func (s *server) oauthClient(ctx context.Context, relayID string) (*pb.Relay, oauthtoken.Client, error) {
	r, err := s.relayFor(ctx, relayID, true)
	if err != nil {
		return nil, oauthtoken.Client{}, err
	}
	o := r.GetAuth().GetOauth()
	if r.GetAuth().GetMechanism() != pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2 || o == nil {
		return nil, oauthtoken.Client{}, status.Errorf(codes.FailedPrecondition,
			"relay %s does not sign in with OAuth: set auth.mechanism XOAUTH2 and auth.oauth (provider or URLs, client id and secret) first", relayID)
	}
	sec, err := s.store.GetRelaySecrets(ctx, relayID)
	if err != nil {
		return nil, oauthtoken.Client{}, s.fail(ctx, err)
	}
	return r, oauthtoken.Client{RelayID: relayID, OAuth: o, ClientSecret: sec.OAuthClientSecret}, nil
}

func (s *server) BeginRelayOAuth(ctx context.Context, req *pb.BeginRelayOAuthRequest) (*pb.BeginRelayOAuthResponse, error) {
	if u, err := url.Parse(req.GetRedirectUri()); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, invalidArgument(violation("redirect_uri", "required: the http(s) URL the provider sends the browser back to"))
	}
	r, c, err := s.oauthClient(ctx, req.GetRelayId())
	if err != nil {
		return nil, err
	}
	cfg, err := c.Config(req.GetRedirectUri())
	if err != nil {
		return nil, invalidArgument(violation("relay.auth.oauth", err.Error()))
	}
	if cfg.Endpoint.AuthURL == "" {
		return nil, invalidArgument(violation("relay.auth.oauth.auth_url", "required to connect an account (or a provider)"))
	}
	st := oauthState{RelayID: r.GetId(), Verifier: oauth2.GenerateVerifier(), RedirectURI: req.GetRedirectUri(),
		Expires: time.Now().Add(oauthStateTTL)}
	plain, err := json.Marshal(st)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sealed, err := s.store.Sealer().Seal(plain, oauthStateAAD)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sealing the OAuth state: %v", err)
	}
	state := base64.RawURLEncoding.EncodeToString(sealed)
	// offline access and consent: the provider returns a refresh token
	// (Google gives one only on consent, so connecting the same account
	// again would otherwise get none).
	authURL := cfg.AuthCodeURL(state, oauth2.AccessTypeOffline, oauth2.S256ChallengeOption(st.Verifier),
		oauth2.SetAuthURLParam("prompt", "consent"), oauth2.SetAuthURLParam("login_hint", r.GetAuth().GetUsername()))
	s.log.InfoContext(ctx, "started OAuth connection of relay", "relay_id", r.GetId(), "tenant_id", r.GetTenantId(), "auth_url", cfg.Endpoint.AuthURL)
	return &pb.BeginRelayOAuthResponse{AuthorizationUrl: authURL, State: state}, nil
}

func (s *server) CompleteRelayOAuth(ctx context.Context, req *pb.CompleteRelayOAuthRequest) (*pb.CompleteRelayOAuthResponse, error) {
	if req.GetCode() == "" {
		return nil, invalidArgument(violation("code", "required: the code in the redirect's query"))
	}
	sealed, err := base64.RawURLEncoding.DecodeString(req.GetState())
	var st oauthState
	if err == nil {
		var plain []byte
		if plain, err = s.store.Sealer().Open(sealed, oauthStateAAD); err == nil {
			err = json.Unmarshal(plain, &st)
		}
	}
	if err != nil {
		return nil, invalidArgument(violation("state", "not a state that BeginRelayOAuth gave"))
	}
	if time.Now().After(st.Expires) {
		return nil, invalidArgument(violation("state", "expired: the connection was started more than 15 minutes ago; start again"))
	}
	r, c, err := s.oauthClient(ctx, st.RelayID)
	if err != nil {
		return nil, err
	}
	cfg, err := c.Config(st.RedirectURI)
	if err != nil {
		return nil, invalidArgument(violation("relay.auth.oauth", err.Error()))
	}
	xctx := context.WithValue(ctx, oauth2.HTTPClient, oauthHTTP)
	tok, err := cfg.Exchange(xctx, req.GetCode(), oauth2.VerifierOption(st.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return nil, status.Errorf(codes.FailedPrecondition, "the provider refused the code at %s: %v", cfg.Endpoint.TokenURL, err)
		}
		return nil, status.Errorf(codes.Unavailable, "exchanging the code at %s: %v", cfg.Endpoint.TokenURL, err)
	}
	if tok.RefreshToken == "" {
		return nil, status.Errorf(codes.FailedPrecondition,
			"the provider at %s returned no refresh token (the client may lack offline access, or the scopes %v need offline_access)", cfg.Endpoint.TokenURL, cfg.Scopes)
	}
	out, err := s.store.SetRelayOAuthRefreshToken(ctx, r.GetId(), tok.RefreshToken)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "connected relay to its OAuth account", "relay_id", r.GetId(), "tenant_id", r.GetTenantId())
	return &pb.CompleteRelayOAuthResponse{Relay: out}, nil
}
