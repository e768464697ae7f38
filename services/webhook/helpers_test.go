package webhook_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/webhook"
)

// Tokens of the test's gRPC server.
const (
	adminToken = "mbk_test_admin_token_0001"
	acmeToken  = "mbk_test_acme_admin_token_0001"
	otherToken = "mbk_test_other_admin_token_0001"
)

// harness is a webhook service on a real broker, a real SQLite file and a
// real gRPC server on loopback that authenticates with the tokens above.
type harness struct {
	t      *testing.T
	bus    bus.Config
	dbURL  string
	sealer *seal.Sealer
	cfg    webhook.Config

	mu   sync.Mutex
	svc  *webhook.Service
	stop func()
	addr string
}

// sqliteURL is a fresh SQLite store in the test's temporary directory.
func sqliteURL(t *testing.T) string {
	return "sqlite://" + filepath.Join(t.TempDir(), "webhook.db")
}

// postgresOrSQLite is a fresh PostgreSQL schema when DATABASE_URL is set
// (CI sets it), and SQLite otherwise. The large tests use it: the outbox
// contract runs on both anyway, and SQLite's engine (pure Go) costs many
// times more CPU under the race detector than a PostgreSQL server does.
func postgresOrSQLite(t *testing.T) string {
	if os.Getenv("DATABASE_URL") != "" {
		return testkit.Postgres(t)
	}
	return sqliteURL(t)
}

func newHarness(t *testing.T, cfg webhook.Config) *harness {
	return newHarnessOn(t, cfg, sqliteURL(t))
}

func newHarnessOn(t *testing.T, cfg webhook.Config, dbURL string) *harness {
	t.Helper()
	key, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.New(map[byte][]byte{1: key}, 1)
	if err != nil {
		t.Fatal(err)
	}
	// As many partitions as a deployment has (the test broker's default is
	// 3): each partition's consumer waits for its event's outbox write, and
	// partitions are what lets events share a transaction.
	ctx, cancel := context.WithTimeout(context.Background(), testkit.WaitTimeout)
	defer cancel()
	broker, err := bus.StartEmbedded(ctx, bus.EmbeddedConfig{Addr: "127.0.0.1:0", Partitions: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	cfg.Bus = testkit.BusConfig(broker.Addrs())
	cfg.AllowHTTP = true
	h := &harness{t: t, bus: cfg.Bus, dbURL: dbURL, sealer: sealer, cfg: cfg}
	h.start()
	t.Cleanup(h.shutdown)
	return h
}

// start runs a service process: its own database handle, consumer and
// gRPC server, on the harness's database and broker.
func (h *harness) start() {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	db, err := sqlstore.Open(ctx, h.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := webhook.New(ctx, h.cfg, webhook.Deps{Log: slog.New(slog.DiscardHandler), DB: db, Sealer: h.sealer})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := auth.NewTokens(map[string]auth.Identity{
		adminToken: {Role: auth.RoleAdmin},
		acmeToken:  {Role: auth.RoleTenantAdmin, TenantID: "acme"},
		otherToken: {Role: auth.RoleTenantAdmin, TenantID: "other"},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(auth.NewInterceptor(tokens, auth.IsPublic).ServerOptions()...)
	svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	h.mu.Lock()
	h.svc, h.addr = svc, lis.Addr().String()
	h.stop = func() {
		cancel()
		srv.Stop()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("webhook service: %v", err)
		}
		_ = db.Close()
	}
	h.mu.Unlock()
}

func (h *harness) shutdown() {
	h.mu.Lock()
	stop := h.stop
	h.stop = nil
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// restart stops the service process and starts another on the same
// database and consumer group.
func (h *harness) restart() {
	h.shutdown()
	h.start()
}

// client returns WebhookService as the holder of token.
func (h *harness) client(token string) mailbusv1.WebhookServiceClient {
	h.t.Helper()
	h.mu.Lock()
	addr := h.addr
	h.mu.Unlock()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: token, AllowInsecure: true}))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = conn.Close() })
	return mailbusv1.NewWebhookServiceClient(conn)
}

// createEndpoint creates an endpoint as the admin and returns it with its
// secret.
func (h *harness) createEndpoint(e *mailbusv1.WebhookEndpoint) (*mailbusv1.WebhookEndpoint, string) {
	h.t.Helper()
	e.Active = true
	resp, err := h.client(adminToken).CreateWebhookEndpoint(context.Background(), &mailbusv1.CreateWebhookEndpointRequest{Endpoint: e})
	if err != nil {
		h.t.Fatalf("create webhook endpoint: %v", err)
	}
	return resp.GetEndpoint(), resp.GetSecret()
}

// publish publishes events to mail.events from several producers at once,
// each message's events from one producer in order, as the pipeline's
// stages publish them (keyed by message id).
func (h *harness) publish(evs []*mailbusv1.DeliveryEvent) {
	t := h.t
	t.Helper()
	const producers = 8
	byMessage := map[string]int{}
	lanes := make([][]*mailbusv1.DeliveryEvent, producers)
	for _, ev := range evs {
		i, ok := byMessage[ev.GetMessageId()]
		if !ok {
			i = len(byMessage) % producers
			byMessage[ev.GetMessageId()] = i
		}
		lanes[i] = append(lanes[i], ev)
	}
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for _, lane := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pub, err := bus.NewPublisher(h.bus, nil)
			if err != nil {
				errs <- err
				return
			}
			defer pub.Close()
			for _, ev := range lane {
				if err := bus.Publish(pub, bus.TopicEvents, ev, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// received is one webhook request that a receiver accepted (or, for a
// turn that records and then answers too late, processed).
type received struct {
	path               string
	id, ts, sig        string
	body               []byte
	eventID, messageID string
	eventType          string
	at                 time.Time
}

// receiver is a real HTTP server on loopback that answers in turns: of
// every twenty requests to a path, one gets 503, one hangs until the
// client gives up, one is processed but answered after the client gave up
// (so it comes again: a duplicate), one has its connection closed without
// an answer, and sixteen are accepted with 204. Paths in dead hang on
// every request.
type receiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	n    map[string]int
	got  []received
	dead map[string]bool
	// ok makes every request succeed (for replay tests).
	ok map[string]bool
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{n: map[string]int{}, dead: map[string]bool{}, ok: map[string]bool{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) url(path string) string { return r.srv.URL + path }

func (r *receiver) setOK(path string, ok bool) {
	r.mu.Lock()
	r.ok[path] = ok
	r.mu.Unlock()
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body := make([]byte, 0, 1024)
	buf := make([]byte, 4096)
	for {
		n, err := req.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err != nil {
			break
		}
	}
	hang := func() {
		select {
		case <-req.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}
	r.mu.Lock()
	path := req.URL.Path
	turn := r.n[path] % 20
	r.n[path]++
	if r.dead[path] {
		r.mu.Unlock()
		hang()
		return
	}
	if r.ok[path] {
		turn = 0
	}
	record := func() {
		var p struct {
			Type string `json:"type"`
			Data struct {
				EventID   string `json:"eventId"`
				MessageID string `json:"messageId"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &p)
		r.got = append(r.got, received{path: path, id: req.Header.Get("webhook-id"), ts: req.Header.Get("webhook-timestamp"),
			sig: req.Header.Get("webhook-signature"), body: body, eventID: p.Data.EventID, messageID: p.Data.MessageID, eventType: p.Type, at: time.Now()})
	}
	switch turn {
	case 3:
		r.mu.Unlock()
		http.Error(w, "busy", http.StatusServiceUnavailable)
	case 8:
		r.mu.Unlock()
		hang()
	case 13:
		record()
		r.mu.Unlock()
		hang()
	case 18:
		r.mu.Unlock()
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
		http.Error(w, "reset", http.StatusBadGateway)
	default:
		record()
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}
}

func (r *receiver) snapshot() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// distinct counts the distinct event ids received on path.
func (r *receiver) distinct(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, g := range r.got {
		if g.path == path {
			seen[g.eventID] = true
		}
	}
	return len(seen)
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool, progress ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s %s", timeout, what, describe(progress))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func describe(progress []func() string) string {
	var out string
	for _, p := range progress {
		out += "; " + p()
	}
	return out
}

// hook is what the reference library verifies of a received webhook.
func (g received) hook(secrets ...string) testkit.ReceivedWebhook {
	return testkit.ReceivedWebhook{ID: g.id, Timestamp: g.ts, Signature: g.sig, Body: string(g.body), Secrets: secrets,
		ReceivedAt: float64(g.at.UnixNano()) / 1e9}
}

// requests returns how many requests each path got.
func (r *receiver) requests() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.n)
}
