// Package configclient is the pipeline's view of the configuration: a local
// cache of the config service's snapshot, kept fresh by its change stream,
// so that routing, signing and sending a message never waits on a gRPC call.
//
// New loads the snapshot (GetSnapshot) and then follows WatchChanges; any
// change reloads the whole snapshot, which is small, and swaps it in
// atomically, so readers always see one consistent revision. When the
// config service is unreachable the client keeps serving the last good
// snapshot and reconnects with exponential backoff.
//
// Secrets arrive sealed; the client opens them with the same seal key the
// config service uses (MAILBUS_SECRET_KEY), once per snapshot, and hands
// them out only through RelayWithSecrets and SigningKey. Every value
// returned is shared and must be treated as read-only.
//
// The caller passes a connection that authenticates as the pipeline role,
// for example:
//
//	conn, _ := grpc.NewClient(addr,
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithPerRPCCredentials(auth.StaticToken{Token: tok, AllowInsecure: true}),
//		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second}))
//	cfg, err := configclient.New(ctx, conn, sealer)
//	defer cfg.Close()
package configclient

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
)

// RelayWithSecrets is a relay with its secrets opened, for the sender.
type RelayWithSecrets struct {
	// Relay has no secrets in it (auth.has_* say which exist).
	Relay      *pb.Relay
	Password   string
	OAuthToken string
	// OAuthClientSecret and OAuthRefreshToken let the sender refresh the
	// access token of an XOAUTH2 relay (auth.oauth).
	OAuthClientSecret string
	OAuthRefreshToken string
	// ClientCert is the TLS client certificate with its key, for
	// AUTH_MECHANISM_CLIENT_CERT; nil otherwise.
	ClientCert *tls.Certificate
}

// String describes the relay without its secrets, so that logging one never
// leaks them.
func (r *RelayWithSecrets) String() string {
	if r == nil || r.Relay == nil {
		return "<nil relay>"
	}
	return fmt.Sprintf("relay %s (%s:%d)", r.Relay.GetId(), r.Relay.GetHost(), r.Relay.GetPort())
}

// GoString is String, for %#v.
func (r *RelayWithSecrets) GoString() string { return r.String() }

// LogValue is String, for slog.
func (r *RelayWithSecrets) LogValue() slog.Value { return slog.StringValue(r.String()) }

// SigningKey is an active DKIM key of a domain.
type SigningKey struct {
	Domain    string
	Selector  string
	Algorithm pb.DkimAlgorithm
	// Signer is an *rsa.PrivateKey or an ed25519.PrivateKey, as
	// go-msgauth's dkim.SignOptions.Signer expects.
	Signer crypto.Signer
}

// String describes the key without the private part.
func (k SigningKey) String() string {
	return fmt.Sprintf("%s._domainkey.%s (%s)", k.Selector, k.Domain, k.Algorithm)
}

// DefaultServer is the platform's own outbound.
type DefaultServer struct {
	// Mode is DEFAULT_SERVER_MODE_UNSPECIFIED when none is configured.
	Mode     pb.DefaultServerMode
	HeloName string
	// Relay is set in RELAY mode.
	Relay *RelayWithSecrets
}

// view is one immutable snapshot, indexed.
type view struct {
	revision       int64
	tenants        map[string]*pb.Tenant
	domains        map[string]*pb.Domain // by name
	relays         map[string]*RelayWithSecrets
	relaysByTenant map[string][]*pb.Relay
	dkim           map[string][]SigningKey // by domain name
	defaultServer  DefaultServer
}

// Option configures a Client.
type Option func(*options)

type options struct {
	log        *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
}

// WithLogger logs reconnects and secrets that do not open.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithBackoff sets the reconnect backoff bounds (default 200ms to 30s).
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = min, max }
}

// Client is a cached view of the configuration. It is safe for concurrent
// use; reads never block on the network.
type Client struct {
	rpc    pb.ConfigServiceClient
	sealer *seal.Sealer
	opts   options

	view atomic.Pointer[view]

	mu      sync.Mutex
	changed chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

// New loads the configuration snapshot, retrying with backoff while the
// config service is unavailable, until ctx ends; then it follows the change
// stream in the background until Close. A caller that lacks the pipeline
// role fails at once. sealer may be nil for callers that need no secrets
// (the router): relays then have no secrets and DKIMKeys is empty.
func New(ctx context.Context, conn grpc.ClientConnInterface, sealer *seal.Sealer, opts ...Option) (*Client, error) {
	o := options{log: slog.New(slog.DiscardHandler), minBackoff: 200 * time.Millisecond, maxBackoff: 30 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{rpc: pb.NewConfigServiceClient(conn), sealer: sealer, opts: o, changed: make(chan struct{})}
	backoff := o.minBackoff
	for {
		err := c.reload(ctx)
		if err == nil {
			break
		}
		if permanent(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("configclient: loading the configuration snapshot: %w", err)
		}
		o.log.WarnContext(ctx, "config service unavailable; retrying", "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return nil, fmt.Errorf("configclient: loading the configuration snapshot: %w", err)
		}
		backoff = next(backoff, o.maxBackoff)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go c.follow(runCtx)
	return c, nil
}

// Close stops following changes. The last snapshot stays readable.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	return nil
}

// permanent reports errors that retrying does not fix.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.Unimplemented:
		return true
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// next doubles a backoff up to max, with jitter so that many replicas do not
// reconnect in step after a config restart.
func next(d, max time.Duration) time.Duration {
	d *= 2
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

// follow watches changes and reloads the snapshot on each, reconnecting with
// backoff, until ctx ends.
func (c *Client) follow(ctx context.Context) {
	defer close(c.done)
	backoff := c.opts.minBackoff
	first := true
	for ctx.Err() == nil {
		healthy, err := c.watch(ctx, first)
		first = false
		if ctx.Err() != nil {
			return
		}
		if healthy {
			backoff = c.opts.minBackoff
		}
		c.opts.log.WarnContext(ctx, "config change stream interrupted; serving the last snapshot",
			"err", err, "revision", c.Revision(), "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = next(backoff, c.opts.maxBackoff)
	}
}

// watch follows one change stream. After a reconnect it reloads first:
// changes may have been missed, or the config database replaced. healthy
// reports that the service answered, which resets the backoff.
func (c *Client) watch(ctx context.Context, first bool) (healthy bool, err error) {
	if !first {
		if err := c.reload(ctx); err != nil {
			return false, err
		}
		healthy = true
	}
	stream, err := c.rpc.WatchChanges(ctx, &pb.WatchChangesRequest{SinceRevision: c.Revision()})
	if err != nil {
		return healthy, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return healthy, err
		}
		healthy = true
		if msg.GetChange().GetRevision() <= c.Revision() {
			continue
		}
		if err := c.reload(ctx); err != nil {
			return healthy, err
		}
	}
}

// reload fetches the snapshot and swaps it in.
func (c *Client) reload(ctx context.Context) error {
	snap, err := c.rpc.GetSnapshot(ctx, &pb.GetSnapshotRequest{})
	if err != nil {
		return err
	}
	v := c.build(ctx, snap)
	c.view.Store(v)
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return nil
}

func (c *Client) build(ctx context.Context, snap *pb.GetSnapshotResponse) *view {
	v := &view{
		revision:       snap.GetRevision(),
		tenants:        make(map[string]*pb.Tenant, len(snap.GetTenants())),
		domains:        make(map[string]*pb.Domain, len(snap.GetDomains())),
		relays:         make(map[string]*RelayWithSecrets, len(snap.GetRelays())+1),
		relaysByTenant: map[string][]*pb.Relay{},
		dkim:           map[string][]SigningKey{},
	}
	for _, t := range snap.GetTenants() {
		v.tenants[t.GetId()] = t
	}
	for _, d := range snap.GetDomains() {
		v.domains[d.GetName()] = d
	}
	for _, sr := range snap.GetRelays() {
		r, err := c.openRelay(sr)
		if err != nil {
			c.opts.log.ErrorContext(ctx, "leaving out a relay whose secrets do not open (is MAILBUS_SECRET_KEY the config service's?)",
				"relay", sr.GetRelay().GetId(), "tenant", sr.GetRelay().GetTenantId(), "err", err)
			continue
		}
		v.relays[r.Relay.GetId()] = r
		v.relaysByTenant[r.Relay.GetTenantId()] = append(v.relaysByTenant[r.Relay.GetTenantId()], r.Relay)
	}
	for _, list := range v.relaysByTenant {
		sort.Slice(list, func(i, j int) bool {
			if list[i].GetPriority() != list[j].GetPriority() {
				return list[i].GetPriority() < list[j].GetPriority()
			}
			return list[i].GetId() < list[j].GetId()
		})
	}
	v.defaultServer = DefaultServer{Mode: snap.GetDefaultServer().GetMode(), HeloName: snap.GetDefaultServer().GetHeloName()}
	if sr := snap.GetDefaultRelay(); sr != nil {
		r, err := c.openRelay(sr)
		if err != nil {
			c.opts.log.ErrorContext(ctx, "default relay secrets do not open", "relay", sr.GetRelay().GetId(), "err", err)
		} else {
			v.defaultServer.Relay = r
			v.relays[r.Relay.GetId()] = r
		}
	}
	for _, k := range snap.GetDkimKeys() {
		if !k.GetKey().GetActive() {
			continue
		}
		if len(k.GetSealedPrivateKey()) == 0 || c.sealer == nil {
			continue
		}
		der, err := c.sealer.Open(k.GetSealedPrivateKey(), DKIMKeyAAD(k.GetDomain(), k.GetKey().GetSelector()))
		if err == nil {
			var key any
			if key, err = x509.ParsePKCS8PrivateKey(der); err == nil {
				signer, ok := key.(crypto.Signer)
				if !ok {
					err = fmt.Errorf("%T is not a signer", key)
				} else {
					v.dkim[k.GetDomain()] = append(v.dkim[k.GetDomain()], SigningKey{
						Domain: k.GetDomain(), Selector: k.GetKey().GetSelector(), Algorithm: k.GetKey().GetAlgorithm(), Signer: signer,
					})
				}
			}
		}
		if err != nil {
			c.opts.log.ErrorContext(ctx, "leaving out a DKIM key that does not open", "domain", k.GetDomain(), "selector", k.GetKey().GetSelector(), "err", err)
		}
	}
	for _, keys := range v.dkim {
		sort.Slice(keys, func(i, j int) bool { return keys[i].Selector < keys[j].Selector })
	}
	return v
}

func (c *Client) openRelay(sr *pb.SealedRelay) (*RelayWithSecrets, error) {
	r := &RelayWithSecrets{Relay: sr.GetRelay()}
	if c.sealer == nil {
		return r, nil
	}
	id := r.Relay.GetId()
	open := func(sealed []byte, secret string) (string, error) {
		if len(sealed) == 0 {
			return "", nil
		}
		plain, err := c.sealer.Open(sealed, RelaySecretAAD(id, secret))
		if err != nil {
			return "", fmt.Errorf("%s: %w", secret, err)
		}
		return string(plain), nil
	}
	var err error
	if r.Password, err = open(sr.GetSealedPassword(), SecretPassword); err != nil {
		return nil, err
	}
	if r.OAuthToken, err = open(sr.GetSealedOauthToken(), SecretOAuthToken); err != nil {
		return nil, err
	}
	if r.OAuthClientSecret, err = open(sr.GetSealedOauthClientSecret(), SecretOAuthClientSecret); err != nil {
		return nil, err
	}
	if r.OAuthRefreshToken, err = open(sr.GetSealedOauthRefreshToken(), SecretOAuthRefreshToken); err != nil {
		return nil, err
	}
	keyPEM, err := open(sr.GetSealedClientKey(), SecretClientKey)
	if err != nil {
		return nil, err
	}
	if keyPEM != "" {
		cert, err := tls.X509KeyPair([]byte(r.Relay.GetAuth().GetClientCertPem()), []byte(keyPEM))
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		r.ClientCert = &cert
	}
	return r, nil
}

func (c *Client) v() *view { return c.view.Load() }

// Revision returns the revision of the snapshot being served.
func (c *Client) Revision() int64 { return c.v().revision }

// Changed returns a channel that is closed when the next snapshot is
// swapped in, for caches derived from this one.
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// WaitRevision waits until the served snapshot is at revision rev or later.
func (c *Client) WaitRevision(ctx context.Context, rev int64) error {
	for {
		ch := c.Changed()
		if c.Revision() >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("configclient: waiting for revision %d (at %d): %w", rev, c.Revision(), ctx.Err())
		case <-ch:
		}
	}
}

// Tenant returns a tenant by id.
func (c *Client) Tenant(id string) (*pb.Tenant, bool) {
	t, ok := c.v().tenants[id]
	return t, ok
}

// Tenants returns every tenant, by id.
func (c *Client) Tenants() []*pb.Tenant {
	ts := c.v().tenants
	out := make([]*pb.Tenant, 0, len(ts))
	for _, t := range ts {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

func normalize(domain string) string { return strings.ToLower(strings.TrimSuffix(domain, ".")) }

// DomainByName returns a domain by name (case-insensitive).
func (c *Client) DomainByName(name string) (*pb.Domain, bool) {
	d, ok := c.v().domains[normalize(name)]
	return d, ok
}

// Domain returns a tenant's domain by name; another tenant's domain of that
// name is not found.
func (c *Client) Domain(tenantID, name string) (*pb.Domain, bool) {
	d, ok := c.DomainByName(name)
	if !ok || d.GetTenantId() != tenantID {
		return nil, false
	}
	return d, true
}

// Relays returns a tenant's relays, active or not, by ascending priority
// (then id). Relays whose secrets do not open are left out.
func (c *Client) Relays(tenantID string) []*pb.Relay {
	return c.v().relaysByTenant[tenantID]
}

// Relay returns a relay with its secrets, by id; this includes the default
// server's relay.
func (c *Client) Relay(id string) (*RelayWithSecrets, bool) {
	r, ok := c.v().relays[id]
	return r, ok
}

// DefaultServer returns the default server.
func (c *Client) DefaultServer() DefaultServer { return c.v().defaultServer }

// DKIMKeys returns the active signing keys of a domain, by selector; empty
// when the domain has none or the client has no sealer.
func (c *Client) DKIMKeys(domain string) []SigningKey {
	return c.v().dkim[normalize(domain)]
}
