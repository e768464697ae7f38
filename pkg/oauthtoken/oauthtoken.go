// Package oauthtoken keeps the XOAUTH2 access tokens of relays that sign in
// with OAuth 2.0 (Gmail, Microsoft 365) fresh, for every sender replica at
// once.
//
// Google's and Microsoft's access tokens live an hour. A relay configured
// with an OAuth client (client id and secret, the provider's token
// endpoint) and a refresh token gets its access tokens from Tokens:
//
//   - The current token is shared through Redis, sealed with the platform's
//     key and kept only until it expires, so N replicas make one refresh an
//     hour between them, not N.
//   - A token is refreshed a little before it expires (a minute, or a
//     quarter of its lifetime when that is shorter), so a connection opened
//     just before expiry does not authenticate with a dead token.
//   - One replica refreshes at a time: it takes a short Redis lock, and the
//     others wait for the token it writes instead of asking the provider
//     too.
//   - When the relay rejects a token anyway (revoked, clock skew), the
//     sender calls Refresh with the rejected token; a replica that finds a
//     different token already shared takes that one, else it refreshes.
//
// The refresh itself is golang.org/x/oauth2's refresh-token grant against
// the token endpoint, so any RFC 6749 provider works; Google and Microsoft
// have presets (Endpoint, Scopes).
package oauthtoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/endpoints"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
)

// Providers with presets.
const (
	ProviderGoogle    = "google"
	ProviderMicrosoft = "microsoft"
)

// Endpoint is the provider's authorization and token endpoints, with the
// given URLs taking precedence over the preset's.
func Endpoint(o *pb.RelayOAuth) (oauth2.Endpoint, error) {
	var e oauth2.Endpoint
	switch strings.ToLower(o.GetProvider()) {
	case "":
	case ProviderGoogle:
		e = endpoints.Google
	case ProviderMicrosoft:
		e = endpoints.AzureAD("")
	default:
		return e, fmt.Errorf("unknown OAuth provider %q (google, microsoft, or empty with the URLs given)", o.GetProvider())
	}
	e.DeviceAuthURL = ""
	if o.GetAuthUrl() != "" {
		e.AuthURL = o.GetAuthUrl()
	}
	if o.GetTokenUrl() != "" {
		e.TokenURL = o.GetTokenUrl()
	}
	if e.TokenURL == "" {
		return e, errors.New("no OAuth token URL (set token_url or a provider)")
	}
	return e, nil
}

// Scopes are the given scopes, or the provider's for sending mail over
// SMTP when none are given.
func Scopes(o *pb.RelayOAuth) []string {
	if len(o.GetScopes()) > 0 {
		return o.GetScopes()
	}
	switch strings.ToLower(o.GetProvider()) {
	case ProviderGoogle:
		return []string{"https://mail.google.com/"}
	case ProviderMicrosoft:
		return []string{"https://outlook.office.com/SMTP.Send", "offline_access"}
	}
	return nil
}

// Client is a relay's OAuth client with its secrets opened.
type Client struct {
	// RelayID names the shared token in Redis.
	RelayID      string
	OAuth        *pb.RelayOAuth
	ClientSecret string
	RefreshToken string
}

// Usable says whether c can refresh tokens.
func (c Client) Usable() bool {
	return c.OAuth.GetClientId() != "" && c.RefreshToken != ""
}

// Config is c as golang.org/x/oauth2 takes it, redirecting to redirectURL
// (empty for refreshes).
func (c Client) Config(redirectURL string) (*oauth2.Config, error) {
	e, err := Endpoint(c.OAuth)
	if err != nil {
		return nil, err
	}
	return &oauth2.Config{ClientID: c.OAuth.GetClientId(), ClientSecret: c.ClientSecret, Endpoint: e,
		RedirectURL: redirectURL, Scopes: Scopes(c.OAuth)}, nil
}

// key names c's shared token: a new client or refresh token (the account
// connected again) starts a new one instead of reusing the old account's.
func (c Client) key() string {
	h := sha256.Sum256([]byte(c.OAuth.GetTokenUrl() + "\x00" + c.OAuth.GetProvider() + "\x00" + c.OAuth.GetClientId() + "\x00" + c.RefreshToken))
	return "mb:oauth:{" + c.RelayID + "}:" + hex.EncodeToString(h[:8])
}

// Options tune Tokens.
type Options struct {
	// EarlyRefresh is how long before expiry a token is refreshed; default
	// 1 minute, at most a quarter of the token's lifetime.
	EarlyRefresh time.Duration
	// LockTTL bounds one refresh (the HTTP request to the provider) and so
	// how long other replicas wait for it; default 30s.
	LockTTL time.Duration
	// HTTPClient calls the token endpoint; default http.DefaultClient
	// with a 30 s timeout.
	HTTPClient *http.Client
	Log        *slog.Logger
	Now        func() time.Time
}

// Tokens hands out current access tokens.
type Tokens struct {
	rdb    redis.UniversalClient
	sealer *seal.Sealer
	opts   Options
}

// entry is a shared token. RefreshAt is when a replica should refresh it.
type entry struct {
	AccessToken string    `json:"access_token"`
	Expiry      time.Time `json:"expiry"`
	RefreshAt   time.Time `json:"refresh_at"`
}

// New builds Tokens on rdb. sealer seals the tokens in Redis; nil keeps
// them in plain text (tests, or a Redis only the pipeline reaches).
func New(rdb redis.UniversalClient, sealer *seal.Sealer, opts Options) *Tokens {
	if opts.EarlyRefresh <= 0 {
		opts.EarlyRefresh = time.Minute
	}
	if opts.LockTTL <= 0 {
		opts.LockTTL = 30 * time.Second
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Tokens{rdb: rdb, sealer: sealer, opts: opts}
}

// Token returns a current access token for c, refreshing it (once over all
// replicas) when it is due.
func (t *Tokens) Token(ctx context.Context, c Client) (string, error) {
	return t.get(ctx, c, "")
}

// Refresh returns an access token other than rejected, which the relay
// refused: the one another replica already shared, or a new one.
func (t *Tokens) Refresh(ctx context.Context, c Client, rejected string) (string, error) {
	if rejected == "" {
		rejected = "\x00" // any shared token will do, but not a cached one
	}
	return t.get(ctx, c, rejected)
}

func (t *Tokens) usable(e entry, ok bool, rejected string) bool {
	return ok && e.AccessToken != "" && e.AccessToken != rejected && t.opts.Now().Before(e.RefreshAt)
}

func (t *Tokens) get(ctx context.Context, c Client, rejected string) (string, error) {
	if !c.Usable() {
		return "", fmt.Errorf("relay %s has no OAuth client id or refresh token (connect the account first)", c.RelayID)
	}
	key := c.key()
	// Every call reads the shared token, once per SMTP connection: a copy
	// kept in the replica goes stale when another replica replaces a
	// token the relay refused, and if the provider revoked that
	// replacement too (a password change revokes every token), the
	// stale copy's one swap would hand out the revoked replacement and
	// the relay would count as failed.
	for {
		e, ok, err := t.shared(ctx, key, c.RelayID)
		if err != nil {
			return "", err
		}
		if t.usable(e, ok, rejected) {
			return e.AccessToken, nil
		}
		token := make([]byte, 16)
		_, _ = rand.Read(token)
		lock := key + ":lock"
		got, err := t.rdb.SetNX(ctx, lock, hex.EncodeToString(token), t.opts.LockTTL).Result()
		if err != nil {
			return "", fmt.Errorf("lock the OAuth refresh of relay %s: %w", c.RelayID, err)
		}
		if !got {
			// Another replica is refreshing: wait for its token.
			if err := t.waitUnlocked(ctx, lock); err != nil {
				return "", err
			}
			continue
		}
		// Another replica may have shared a token between the read above
		// and taking the lock: check again under it.
		if e, ok, err := t.shared(ctx, key, c.RelayID); err == nil && t.usable(e, ok, rejected) {
			t.unlock(lock, hex.EncodeToString(token))
			return e.AccessToken, nil
		}
		e, err = t.refresh(ctx, c, key)
		t.unlock(lock, hex.EncodeToString(token))
		if err != nil {
			return "", err
		}
		return e.AccessToken, nil
	}
}

// waitUnlocked polls until lock is gone (the refresh ended, or its holder
// died and the lock expired).
func (t *Tokens) waitUnlocked(ctx context.Context, lock string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := t.rdb.Exists(ctx, lock).Result()
		if err != nil {
			return fmt.Errorf("wait for another replica's OAuth refresh: %w", err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for another replica's OAuth refresh: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

var unlockScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

func (t *Tokens) unlock(lock, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := unlockScript.Run(ctx, t.rdb, []string{lock}, token).Err(); err != nil {
		// It expires by itself after LockTTL.
		t.opts.Log.Warn("releasing the OAuth refresh lock", "lock", lock, "err", err)
	}
}

func aad(relayID string) []byte { return []byte("mailbus/relay/" + relayID + "/oauth_access_token") }

// shared reads the token in Redis.
func (t *Tokens) shared(ctx context.Context, key, relayID string) (entry, bool, error) {
	raw, err := t.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, fmt.Errorf("read the shared OAuth token of relay %s: %w", relayID, err)
	}
	if t.sealer != nil {
		if raw, err = t.sealer.Open(raw, aad(relayID)); err != nil {
			// Sealed with a key this replica lacks (a rotation under
			// way): refresh instead, which overwrites it.
			t.opts.Log.Warn("shared OAuth token does not open; refreshing", "relay_id", relayID, "err", err)
			return entry{}, false, nil
		}
	}
	var e entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return entry{}, false, nil
	}
	return e, true, nil
}

// refresh gets a new access token from the provider and shares it.
func (t *Tokens) refresh(ctx context.Context, c Client, key string) (entry, error) {
	cfg, err := c.Config("")
	if err != nil {
		return entry{}, fmt.Errorf("relay %s: %w", c.RelayID, err)
	}
	rctx, cancel := context.WithTimeout(ctx, t.opts.LockTTL)
	defer cancel()
	tok, err := c.fetch(rctx, cfg, t.opts.HTTPClient)
	if err != nil {
		return entry{}, err
	}
	now := t.opts.Now()
	e := entry{AccessToken: tok.AccessToken, Expiry: tok.Expiry}
	if e.Expiry.IsZero() {
		// No expires_in: assume the hour Google and Microsoft give.
		e.Expiry = now.Add(time.Hour)
	}
	life := e.Expiry.Sub(now)
	e.RefreshAt = e.Expiry.Add(-min(t.opts.EarlyRefresh, life/4))
	raw, err := json.Marshal(e)
	if err != nil {
		return entry{}, err
	}
	if t.sealer != nil {
		if raw, err = t.sealer.Seal(raw, aad(c.RelayID)); err != nil {
			return entry{}, fmt.Errorf("seal the OAuth token of relay %s: %w", c.RelayID, err)
		}
	}
	// The token is in Redis no longer than it is valid; sealed, a copy of
	// Redis's data gives nothing without the platform's key.
	if ttl := e.Expiry.Sub(now); ttl > 0 {
		if err := t.rdb.Set(ctx, key, raw, ttl).Err(); err != nil {
			// The caller gets it all the same; the other replicas (and this
			// one's next connection) refresh for themselves.
			t.opts.Log.Warn("sharing the refreshed OAuth token", "relay_id", c.RelayID, "err", err)
		}
	}
	t.opts.Log.Info("refreshed OAuth access token", "relay_id", c.RelayID, "expires_in", life.Round(time.Second).String())
	return e, nil
}

// fetch gets a new access token with the refresh token.
func (c Client) fetch(ctx context.Context, cfg *oauth2.Config, hc *http.Client) (*oauth2.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
	// An expired token makes the source use the refresh token at once.
	tok, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: c.RefreshToken, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		return nil, fmt.Errorf("refresh the OAuth access token of relay %s at %s: %w", c.RelayID, cfg.Endpoint.TokenURL, err)
	}
	return tok, nil
}

// Direct hands out tokens fetched for each call, shared with no one: for a
// relay test, which authenticates once.
type Direct struct {
	Client Client
	// HTTP calls the token endpoint; nil means a client with a 30 s
	// timeout.
	HTTP *http.Client
}

// Token fetches a new access token.
func (d Direct) Token(ctx context.Context) (string, error) {
	if !d.Client.Usable() {
		return "", fmt.Errorf("relay %s has no OAuth client id or refresh token (connect the account first)", d.Client.RelayID)
	}
	cfg, err := d.Client.Config("")
	if err != nil {
		return "", err
	}
	hc := d.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	tok, err := d.Client.fetch(ctx, cfg, hc)
	if err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

// Refresh fetches another access token.
func (d Direct) Refresh(ctx context.Context, _ string) (string, error) { return d.Token(ctx) }
