package deliver

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bounce"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/smtpclient"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
	"github.com/mailbus/mailbus/services/sender/internal/mtasts"
)

// policyHost is mta-sts.example.com: a local HTTPS server with a
// certificate from the test's CA, serving what the test sets and counting
// the fetches.
type policyHost struct {
	mu     sync.Mutex
	body   string
	status int
	// answer, when set, answers instead.
	answer http.HandlerFunc
	cert   tls.Certificate
	hits   atomic.Int32
	srv    *httptest.Server
}

func (p *policyHost) serve(status int, body string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.body = status, body
}

// presents makes the host present c from its next handshake on.
func (p *policyHost) presents(c tls.Certificate) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cert = c
}

func (p *policyHost) answerWith(h http.HandlerFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answer = h
}

func (p *policyHost) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.hits.Add(1)
	if r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	status, body, answer := p.status, p.body, p.answer
	p.mu.Unlock()
	if answer != nil {
		answer(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// stsEnv is a recipient domain example.com with real DNS, a real policy
// host over HTTPS and a real SMTP server as its MX hosts, all on loopback,
// and a deliverer that honours MTA-STS.
type stsEnv struct {
	t       *testing.T
	zone    *dnstest.Zone
	policy  *policyHost
	smtp    *testkit.SMTPServer
	cert    *testkit.Cert
	reg     *prometheus.Registry
	d       *Deliverer
	rdb     *redis.Client
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	dnsAddr string

	mu     sync.Mutex
	dialed []string
	now    time.Time
}

// startSTS starts the environment. The SMTP server offers STARTTLS with a
// certificate for mx.example.com from the test's CA, unless smtpOpts (given
// that certificate) say otherwise.
func startSTS(t *testing.T, smtpOpts func(*testkit.Cert) []testkit.SMTPOption) *stsEnv {
	t.Helper()
	e := &stsEnv{t: t, zone: dnstest.NewZone(t), policy: &policyHost{status: http.StatusOK}, reg: prometheus.NewRegistry(), now: time.Now()}
	e.cert = testkit.NewCert(t, "mx.example.com")
	if smtpOpts == nil {
		smtpOpts = func(c *testkit.Cert) []testkit.SMTPOption { return []testkit.SMTPOption{testkit.SMTPStartTLS(c)} }
	}
	e.smtp = testkit.StartSMTP(t, smtpOpts(e.cert)...)
	e.policy.srv = httptest.NewUnstartedServer(e.policy)
	e.policy.presents(e.cert.Issue(t, "mta-sts.example.com").Certificate)
	e.policy.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		e.policy.mu.Lock()
		defer e.policy.mu.Unlock()
		c := e.policy.cert
		return &c, nil
	}}
	e.policy.srv.StartTLS()
	t.Cleanup(e.policy.srv.Close)
	_, httpsPort, _ := net.SplitHostPort(e.policy.srv.Listener.Addr().String())

	// Every name resolves to 127.0.0.1 through the test's DNS server; the
	// MX hosts' port 25 and the policy host's port 443 are the local
	// servers' ports.
	e.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, _ := net.SplitHostPort(addr)
		e.mu.Lock()
		e.dialed = append(e.dialed, addr)
		e.mu.Unlock()
		switch {
		case host == "127.0.0.1" && port == "25":
			addr = net.JoinHostPort(host, strconv.Itoa(e.smtp.Port()))
		case host == "127.0.0.1" && port == "443":
			addr = net.JoinHostPort(host, httpsPort)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	e.dnsAddr = dnstest.Start(t, e.zone)
	e.rdb = redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { e.rdb.Close() })
	e.d = e.deliverer(e.policies(nil, e.reg))
	return e
}

// policies is a replica's view of the policies (rdb nil: this process only).
func (e *stsEnv) policies(rdb redis.UniversalClient, reg prometheus.Registerer) *mtasts.Policies {
	return mtasts.New(mtasts.Options{
		Resolver: &resolve.Resolver{Servers: []string{e.dnsAddr}, Timeout: 5 * time.Second},
		RootCAs:  e.cert.CAPool, Dial: e.dial, Redis: rdb, Registerer: reg,
		Now: func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now },
	})
}

func (e *stsEnv) deliverer(sts *mtasts.Policies) *Deliverer {
	pool := smtpclient.NewPool(smtpclient.PoolConfig{Dial: e.dial, RootCAs: e.cert.CAPool})
	e.t.Cleanup(func() { pool.Close() })
	resolver := &resolve.Resolver{Servers: []string{e.dnsAddr}, Timeout: 5 * time.Second}
	return New(directConfig{}, pool, resolver, limits.New(e.rdb), health.New(e.rdb, limits.New(e.rdb), health.Options{}), bounce.Classify,
		Options{HeloName: "mailbus.test", MTASTS: sts}, slog.New(slog.DiscardHandler))
}

// records publishes example.com with mxHost as its MX and the policy id
// (none when id is "").
func (e *stsEnv) records(mxHost, id string) {
	rrs := []string{
		"example.com. 300 IN MX 10 " + mxHost + ".",
		mxHost + ". 300 IN A 127.0.0.1",
		"mta-sts.example.com. 300 IN A 127.0.0.1",
	}
	if id != "" {
		rrs = append(rrs, `_mta-sts.example.com. 300 IN TXT "v=STSv1; id=`+id+`"`)
	}
	e.zone.Reset(e.t, rrs...)
}

func (e *stsEnv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func (e *stsEnv) smtpDials() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, a := range e.dialed {
		if strings.HasSuffix(a, ":25") {
			n++
		}
	}
	return n
}

var stsMessages atomic.Int32

// send delivers one message to a@example.com and returns its one event.
func (e *stsEnv) send() *mailbusv1.DeliveryEvent {
	e.t.Helper()
	id := "m" + strconv.Itoa(int(stsMessages.Add(1)))
	dl := &mailbusv1.Delivery{
		DeliveryId: id + ".0", MessageId: id, TenantId: "acme", Attempt: 1,
		Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX},
		Envelope: &mailbusv1.Envelope{MailFrom: "news@acme.example", RcptTo: []string{"a@example.com"}},
		Message:  []byte("From: news@acme.example\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nhi\r\n"),
	}
	out, err := e.d.Deliver(context.Background(), dl)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(out.Events) != 1 {
		e.t.Fatalf("events %v, want one", out.Events)
	}
	ev := out.Events[0]
	if (ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED) != (out.Retry != nil) {
		e.t.Fatalf("event %v with retry %v: a deferral and a retry go together", ev, out.Retry)
	}
	return ev
}

func (e *stsEnv) failures(mode, kind string) float64 {
	e.t.Helper()
	return e.counter("mailbus_sender_mta_sts_failures_total", "mode", mode, "kind", kind)
}

// counter is the value of the named counter with the label values given as
// name, value pairs.
func (e *stsEnv) counter(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				for i := 0; i+1 < len(labels); i += 2 {
					if l.GetName() == labels[i] && l.GetValue() != labels[i+1] {
						continue metrics
					}
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

const (
	enforceExample = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
	testingExample = "version: STSv1\nmode: testing\nmx: *.example.com\nmax_age: 86400\n"
)

func wantStatus(t *testing.T, ev *mailbusv1.DeliveryEvent, want mailbusv1.DeliveryStatus) {
	t.Helper()
	if ev.GetStatus() != want {
		t.Fatalf("status %v (%s; %s), want %v", ev.GetStatus(), ev.GetDetail(), ev.GetReply().GetText(), want)
	}
}

func TestMTASTS_enforceDeliversToAListedMXOverVerifiedTLS(t *testing.T) {
	e := startSTS(t, nil)
	e.records("mx.example.com", "20260101")
	e.policy.serve(http.StatusOK, "version: STSv1\r\nmode: enforce\r\nmx: *.example.com\r\nmax_age: 86400\r\n")

	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	if n := e.counter("mailbus_sender_mta_sts_policy_fetches_total", "result", "ok"); n != 1 {
		t.Errorf("%v policy fetches counted, want 1", n)
	}
	got := e.smtp.WaitMessages(t, 1)[0]
	if !got.TLS || got.TLSServerName != "mx.example.com" {
		t.Errorf("message came with TLS %v for %q, want TLS for mx.example.com", got.TLS, got.TLSServerName)
	}
	if n := e.failures("enforce", "tls") + e.failures("enforce", "mx_not_in_policy"); n != 0 {
		t.Errorf("%v failures counted, want none", n)
	}
}

func TestMTASTS_enforceDefersAnMXNotInThePolicyWithoutConnecting(t *testing.T) {
	e := startSTS(t, nil)
	e.records("mx.evil.test", "1")
	e.policy.serve(http.StatusOK, enforceExample)

	ev := e.send()
	wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
	const want = "MTA-STS policy of example.com (enforce): mx.evil.test is not in the policy"
	if ev.GetReply().GetText() != want {
		t.Errorf("reply %q, want %q", ev.GetReply().GetText(), want)
	}
	if ev.GetReply().GetCode() != 451 || !strings.Contains(ev.GetDetail(), "mta-sts") {
		t.Errorf("reply %v, detail %q: want a temporary MTA-STS deferral", ev.GetReply(), ev.GetDetail())
	}
	if n := e.smtpDials(); n != 0 || e.smtp.Connections() != 0 {
		t.Errorf("%d connections to port 25, want none", n)
	}
	if n := e.failures("enforce", "mx_not_in_policy"); n != 1 {
		t.Errorf("failures counted %v, want 1", n)
	}
}

func TestMTASTS_enforceDefersWhenTheMXHasNoVerifiedTLS(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts func(*testkit.Cert) []testkit.SMTPOption
		want string
	}{
		{"no STARTTLS", func(*testkit.Cert) []testkit.SMTPOption { return []testkit.SMTPOption{} },
			"does not offer STARTTLS"},
		{"certificate for another name", func(c *testkit.Cert) []testkit.SMTPOption {
			return []testkit.SMTPOption{testkit.SMTPStartTLS(c.Issue(t, "mx.other.test"))}
		}, "certificate is valid for mx.other.test, not mx.example.com"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := startSTS(t, tt.opts)
			e.records("mx.example.com", "1")
			e.policy.serve(http.StatusOK, enforceExample)

			ev := e.send()
			wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
			const prefix = "MTA-STS policy of example.com (enforce): TLS to mx.example.com failed: "
			if text := ev.GetReply().GetText(); !strings.HasPrefix(text, prefix) || !strings.Contains(text, tt.want) {
				t.Errorf("reply %q, want %q...%q", text, prefix, tt.want)
			}
			if e.smtp.Received() != 0 {
				t.Errorf("the MX host received %d messages without verified TLS", e.smtp.Received())
			}
			if n := e.failures("enforce", "tls"); n != 1 {
				t.Errorf("failures counted %v, want 1", n)
			}
		})
	}
}

func TestMTASTS_testingDeliversAndReports(t *testing.T) {
	t.Run("MX not in the policy", func(t *testing.T) {
		e := startSTS(t, nil)
		e.records("mx.evil.test", "1")
		e.policy.serve(http.StatusOK, testingExample)

		ev := e.send()
		wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
		if !strings.Contains(ev.GetDetail(), "MTA-STS policy of example.com (testing): mx.evil.test is not in the policy") {
			t.Errorf("detail %q does not report the policy failure", ev.GetDetail())
		}
		e.smtp.WaitMessages(t, 1)
		if n := e.failures("testing", "mx_not_in_policy"); n != 1 {
			t.Errorf("failures counted %v, want 1", n)
		}
	})
	t.Run("certificate for another name", func(t *testing.T) {
		e := startSTS(t, func(c *testkit.Cert) []testkit.SMTPOption {
			return []testkit.SMTPOption{testkit.SMTPStartTLS(c.Issue(t, "mx.other.test"))}
		})
		e.records("mx.example.com", "1")
		e.policy.serve(http.StatusOK, testingExample)

		ev := e.send()
		wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
		if !strings.Contains(ev.GetDetail(), "MTA-STS policy of example.com (testing): TLS to mx.example.com failed: ") {
			t.Errorf("detail %q does not report the TLS failure", ev.GetDetail())
		}
		if got := e.smtp.WaitMessages(t, 1)[0]; !got.TLS {
			t.Errorf("delivered without TLS, want opportunistic TLS as without a policy")
		}
		if n := e.failures("testing", "tls"); n != 1 {
			t.Errorf("failures counted %v, want 1", n)
		}
	})
}

func TestMTASTS_policyIsCachedForItsMaxAgeAndFetchedAgainWhenTheIDChanges(t *testing.T) {
	e := startSTS(t, nil)
	e.records("mx.example.com", "1")
	e.policy.serve(http.StatusOK, enforceExample)

	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	if n := e.policy.hits.Load(); n != 1 {
		t.Fatalf("policy host asked %d times for two messages, want once", n)
	}

	// A new id: the new policy no longer lists the MX host.
	e.records("mx.example.com", "2")
	e.policy.serve(http.StatusOK, "version: STSv1\nmode: enforce\nmx: mx2.example.com\nmax_age: 60\n")
	ev := e.send()
	wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
	if !strings.Contains(ev.GetReply().GetText(), "mx.example.com is not in the policy") {
		t.Errorf("reply %q, want the new policy's refusal", ev.GetReply().GetText())
	}
	if n := e.policy.hits.Load(); n != 2 {
		t.Fatalf("policy host asked %d times after the id changed, want 2", n)
	}

	// Past its max_age the policy is fetched again under the same id.
	e.policy.serve(http.StatusOK, enforceExample)
	e.advance(61 * time.Second)
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	if n := e.policy.hits.Load(); n != 3 {
		t.Fatalf("policy host asked %d times after max_age, want 3", n)
	}
}

func TestMTASTS_cachedPolicyIsUsedWhenTheFetchFailsOrTheRecordGoes(t *testing.T) {
	e := startSTS(t, nil)
	e.records("mx.example.com", "1")
	e.policy.serve(http.StatusOK, enforceExample)
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)

	// An attacker points the MX elsewhere, announces a new policy id and
	// breaks the policy host: the cached policy still refuses the host.
	e.records("mx.evil.test", "2")
	e.policy.serve(http.StatusInternalServerError, "")
	ev := e.send()
	wantStatus(t, ev, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
	if !strings.Contains(ev.GetReply().GetText(), "(enforce): mx.evil.test is not in the policy") {
		t.Errorf("reply %q, want the cached policy's refusal", ev.GetReply().GetText())
	}
	if n := e.policy.hits.Load(); n != 2 {
		t.Errorf("policy host asked %d times, want 2 (the failed fetch of id 2)", n)
	}

	// The TXT record gone does not remove the cached policy either.
	e.records("mx.evil.test", "")
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
	if e.smtp.Received() != 1 {
		t.Errorf("MX hosts received %d messages, want only the first", e.smtp.Received())
	}

	// Once the cached policy expires, the domain has none.
	e.advance(86401 * time.Second)
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
}

func TestMTASTS_replicasShareAPolicyThroughRedis(t *testing.T) {
	e := startSTS(t, nil)
	e.records("mx.example.com", "1")
	e.policy.serve(http.StatusOK, enforceExample)
	a, b := e.policies(e.rdb, nil), e.policies(e.rdb, nil)

	pa := a.Lookup(context.Background(), "example.com")
	pb := b.Lookup(context.Background(), "Example.COM.")
	if pa == nil || pb == nil || pb.Mode != mtasts.ModeEnforce || !pb.Allows("mx.example.com") {
		t.Fatalf("policies %+v and %+v, want example.com's enforce policy on both replicas", pa, pb)
	}
	if n := e.policy.hits.Load(); n != 1 {
		t.Errorf("policy host asked %d times by two replicas, want once", n)
	}
	ttl, err := e.rdb.TTL(context.Background(), "mb:mtasts:example.com").Result()
	if err != nil || ttl <= 0 || ttl > 86400*time.Second {
		t.Errorf("shared policy TTL %v (%v), want up to max_age", ttl, err)
	}
}

func TestMTASTS_withoutAPolicyDeliversAsBefore(t *testing.T) {
	e := startSTS(t, func(*testkit.Cert) []testkit.SMTPOption { return nil })
	e.records("mx.example.com", "")
	wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	if got := e.smtp.WaitMessages(t, 1)[0]; got.TLS {
		t.Errorf("a server without STARTTLS got TLS?")
	}
	if n := e.policy.hits.Load(); n != 0 {
		t.Errorf("policy host asked %d times without a record, want never", n)
	}
}

func TestMTASTS_aPolicyServedWronglyIsNoPolicy(t *testing.T) {
	for name, answer := range map[string]http.HandlerFunc{
		"redirect": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/policy.txt", http.StatusFound)
		},
		"HTML": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(enforceExample))
		},
		"larger than 64 KB": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(enforceExample + strings.Repeat("# padding\n", 7000)))
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := startSTS(t, nil)
			e.records("mx.evil.test", "1")
			e.policy.answerWith(answer)
			wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
			if n := e.policy.hits.Load(); n != 1 {
				t.Errorf("policy host asked %d times, want once", n)
			}
			if n := e.counter("mailbus_sender_mta_sts_policy_fetches_total", "result", "error"); n != 1 {
				t.Errorf("%v failed fetches counted, want 1", n)
			}
		})
	}
	t.Run("certificate from another CA", func(t *testing.T) {
		e := startSTS(t, nil)
		e.records("mx.evil.test", "1")
		e.policy.serve(http.StatusOK, enforceExample)
		e.policy.presents(testkit.NewCert(t, "mta-sts.example.com").Certificate)
		wantStatus(t, e.send(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
		if n := e.counter("mailbus_sender_mta_sts_policy_fetches_total", "result", "error"); n != 1 || e.policy.hits.Load() != 0 {
			t.Errorf("%v failed fetches counted, %d answered; want the fetch refused at the handshake", n, e.policy.hits.Load())
		}
	})
}
