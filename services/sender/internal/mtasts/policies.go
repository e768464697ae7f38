package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/mailbus/mailbus/pkg/resolve"
)

// maxPolicyBytes is the largest policy file read; RFC 8461 3.3 suggests
// 64 KB as the limit.
const maxPolicyBytes = 64 << 10

// retryFailedFetch is how long a policy that could not be fetched under an
// id is not asked for again (RFC 8461 3.3 asks not to refetch on every
// message); a new id is fetched at once.
const retryFailedFetch = 5 * time.Minute

// Options configure Policies.
type Options struct {
	// Resolver looks up the TXT records and the policy host's addresses;
	// nil means /etc/resolv.conf's servers.
	Resolver *resolve.Resolver
	// RootCAs verify the policy host's certificate; nil means the system
	// roots.
	RootCAs *x509.CertPool
	// Dial connects to one of the policy host's addresses ("ip:443"); nil
	// means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds a policy fetch; default 10s.
	Timeout time.Duration
	// Redis, when set, shares fetched policies between replicas.
	Redis redis.UniversalClient
	// Registerer gets the metrics; nil registers none.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	Now        func() time.Time
}

// Policies looks up and keeps the domains' policies. It is safe for
// concurrent use.
type Policies struct {
	opts   Options
	client *http.Client
	group  singleflight.Group

	mu     sync.Mutex
	cache  map[string]*Policy   // by domain; expired when fetched+max_age passed
	expiry map[string]time.Time // by domain
	failed map[string]failure   // by domain

	fetches  *prometheus.CounterVec
	failures *prometheus.CounterVec
}

type failure struct {
	id    string
	until time.Time
}

// cached is a policy as Redis keeps it.
type cached struct {
	Policy  *Policy   `json:"policy"`
	Expires time.Time `json:"expires"`
}

// New builds Policies.
func New(opts Options) *Policies {
	if opts.Resolver == nil {
		opts.Resolver = &resolve.Resolver{}
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Policies{
		opts:   opts,
		cache:  map[string]*Policy{},
		expiry: map[string]time.Time{},
		failed: map[string]failure{},
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "sender", Name: "mta_sts_policy_fetches_total",
			Help: "MTA-STS policy fetches over HTTPS, by result (ok, error).",
		}, []string{"result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "sender", Name: "mta_sts_failures_total",
			Help: "MX hosts that failed a domain's MTA-STS policy, by the policy's mode (enforce: not used; testing: used anyway) and kind (mx_not_in_policy, tls).",
		}, []string{"mode", "kind"}),
	}
	p.client = &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			DialContext:         p.dial,
			TLSClientConfig:     &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: opts.Timeout,
			MaxIdleConns:        16,
			IdleConnTimeout:     30 * time.Second,
		},
		// RFC 8461 3.3: redirects are not followed; a 3xx is a failure.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(p.fetches, p.failures)
	}
	return p
}

// Lookup returns domain's policy, or nil when it has none. It never fails:
// a domain whose policy cannot be read is treated as having none, unless an
// unexpired policy of it is cached, which is then used (RFC 8461 3.1, 5.1:
// an attacker who blocks the TXT record or the policy host must not turn
// the policy off).
func (p *Policies) Lookup(ctx context.Context, domain string) *Policy {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	txts, err := p.opts.Resolver.TXT(ctx, "_mta-sts."+domain)
	if errors.Is(err, resolve.ErrNoName) {
		txts, err = nil, nil
	}
	var id string
	if err == nil {
		id, err = recordID(txts)
	}
	if err != nil {
		p.opts.Log.Warn("MTA-STS record unreadable; using the kept policy if any", "domain", domain, "err", err)
		return p.cached(ctx, domain, "", true)
	}
	if id == "" {
		// Most domains publish no policy: only a policy this replica saw
		// applies then, without a Redis round trip per delivery.
		return p.cached(ctx, domain, "", false)
	}
	if pol := p.cached(ctx, domain, id, true); pol != nil {
		return pol
	}
	p.mu.Lock()
	f, recent := p.failed[domain]
	p.mu.Unlock()
	if recent && f.id == id && p.opts.Now().Before(f.until) {
		return p.cached(ctx, domain, "", false)
	}
	// One fetch per domain and id however many deliveries ask at once, and
	// not cancelled with the delivery that happened to start it.
	v, err, _ := p.group.Do(domain+" "+id, func() (any, error) {
		pol, err := p.fetch(context.WithoutCancel(ctx), domain, id)
		if err != nil {
			p.fetches.WithLabelValues("error").Inc()
			p.opts.Log.Warn("MTA-STS policy fetch failed; using the kept policy if any", "domain", domain, "id", id, "err", err)
			p.mu.Lock()
			p.failed[domain] = failure{id: id, until: p.opts.Now().Add(retryFailedFetch)}
			p.mu.Unlock()
			return nil, err
		}
		p.fetches.WithLabelValues("ok").Inc()
		return pol, nil
	})
	if err != nil {
		return p.cached(ctx, domain, "", true)
	}
	return v.(*Policy)
}

// Report counts and logs an MX host of domain that failed its policy.
func (p *Policies) Report(pol *Policy, kind, why string) {
	p.failures.WithLabelValues(pol.Mode, kind).Inc()
	p.opts.Log.Warn("MTA-STS policy failed", "domain", pol.Domain, "mode", pol.Mode, "kind", kind, "why", why)
}

// cached returns domain's unexpired policy fetched under id, under any id
// when id is "", from this process or else, when shared, from Redis.
func (p *Policies) cached(ctx context.Context, domain, id string, shared bool) *Policy {
	now := p.opts.Now()
	p.mu.Lock()
	pol, exp := p.cache[domain], p.expiry[domain]
	p.mu.Unlock()
	if pol != nil && now.Before(exp) && (id == "" || pol.ID == id) {
		return pol
	}
	if p.opts.Redis == nil || !shared {
		return nil
	}
	raw, err := p.opts.Redis.Get(ctx, redisKey(domain)).Bytes()
	if err != nil {
		if !errors.Is(err, redis.Nil) {
			p.opts.Log.Warn("reading a shared MTA-STS policy", "domain", domain, "err", err)
		}
		return nil
	}
	var c cached
	if err := json.Unmarshal(raw, &c); err != nil || c.Policy == nil {
		return nil
	}
	if !now.Before(c.Expires) || (id != "" && c.Policy.ID != id) {
		return nil
	}
	p.keep(c.Policy, c.Expires)
	return c.Policy
}

func (p *Policies) keep(pol *Policy, expires time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cache[pol.Domain], p.expiry[pol.Domain] = pol, expires
	delete(p.failed, pol.Domain)
}

// fetch gets domain's policy over HTTPS (RFC 8461 3.3) and keeps it for
// its max_age.
func (p *Policies) fetch(ctx context.Context, domain, id string) (*Policy, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: HTTP %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("fetch %s: content type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if len(body) > maxPolicyBytes {
		return nil, fmt.Errorf("fetch %s: policy larger than %d bytes", url, maxPolicyBytes)
	}
	pol, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("policy at %s: %w", url, err)
	}
	pol.Domain, pol.ID = domain, id
	expires := p.opts.Now().Add(pol.MaxAge)
	p.keep(pol, expires)
	if p.opts.Redis != nil && pol.MaxAge > 0 {
		raw, _ := json.Marshal(cached{Policy: pol, Expires: expires})
		if err := p.opts.Redis.Set(ctx, redisKey(domain), raw, pol.MaxAge).Err(); err != nil {
			p.opts.Log.Warn("sharing an MTA-STS policy", "domain", domain, "err", err)
		}
	}
	return pol, nil
}

// dial resolves the policy host with the resolver of the MX lookups and
// connects to its addresses in turn.
func (p *Policies) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := p.opts.Resolver.Addrs(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s has no address", host)
	}
	var last error
	for _, a := range addrs {
		c, err := p.opts.Dial(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

func redisKey(domain string) string { return "mb:mtasts:" + domain }
