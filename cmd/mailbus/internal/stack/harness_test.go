package stack_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// pipeline is the whole of mailbus in the test process, on a real
// redis-server, the embedded broker on a real port, SQLite, and the
// project's SMTP test server as the tenant's relay.
type pipeline struct {
	*stack.Stack
	smtp     *testkit.SMTPServer
	cfg      mailbusv1.ConfigServiceClient
	messages mailbusv1.MessageServiceClient
}

const seedTemplate = `tenants:
  - id: acme
    name: ACME
    time_zone: Europe/Berlin
    default_from: noreply
    domain_alias: acme.example
    bounce_domain: bounce.acme.example
    domains:
      - id: acme-example
        name: acme.example
        return_path: verp
        dkim_keys:
          - selector: r2026
            algorithm: rsa
            generate: true
          - selector: e2026
            algorithm: ed25519
            generate: true
      - id: fast-example
        name: fast.example
        return_path: from
        dkim_keys:
          - selector: e2026
            algorithm: ed25519
            generate: true
    relays:
      - id: acme-relay
        name: relay
        host: 127.0.0.1
        port: %d
        security: none
        auth:
          mechanism: none
        priority: 10
        domains: [acme.example, fast.example]
default_server:
  mode: relay
  relay:
    id: system-relay
    name: system
    host: 127.0.0.1
    port: %d
    security: none
`

func startPipeline(t *testing.T, smtpOpts []testkit.SMTPOption, tune func(*stack.Options)) *pipeline {
	t.Helper()
	srv := testkit.StartSMTP(t, smtpOpts...)
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(fmt.Sprintf(seedTemplate, srv.Port(), srv.Port())), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := stack.Options{
		DataDir: dir, SeedFile: seed, KafkaAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NoCatcher: true,
		RedisAddr: testkit.StartRedis(t), Partitions: 4,
		TuneBus: func(c *bus.Config) {
			tk := testkit.BusConfig(c.Brokers)
			tk.ClientID = c.ClientID
			*c = tk
		},
		Log: testLogger(t),
	}
	if tune != nil {
		tune(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := stack.Start(ctx, opts)
	if err != nil {
		cancel()
		t.Fatalf("start pipeline: %v", err)
	}
	t.Cleanup(func() { cancel(); st.Close() })
	conn, err := grpc.NewClient(st.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: st.AdminToken, AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &pipeline{Stack: st, smtp: srv, cfg: mailbusv1.NewConfigServiceClient(conn), messages: mailbusv1.NewMessageServiceClient(conn)}
}

// testLogger shows the pipeline's warnings in the test output, where they
// explain a failure.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitMessage polls the message log until the message satisfies done.
func (p *pipeline) waitMessage(t *testing.T, id string, done func(*mailbusv1.Message) bool) *mailbusv1.Message {
	t.Helper()
	return p.waitMessageWithin(t, id, done, stack.WaitTimeout)
}

// waitMessageWithin is waitMessage with another deadline, for messages
// that take long (tens of megabytes under the race detector).
func (p *pipeline) waitMessageWithin(t *testing.T, id string, done func(*mailbusv1.Message) bool, wait time.Duration) *mailbusv1.Message {
	t.Helper()
	deadline := time.Now().Add(wait)
	var last *mailbusv1.Message
	for time.Now().Before(deadline) {
		resp, err := p.messages.GetMessage(context.Background(), &mailbusv1.GetMessageRequest{Id: id})
		if err == nil {
			last = resp.GetMessage()
			if done(last) {
				return last
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("pipeline failed: %v", p.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("message %s did not reach the expected state in %s; last seen: %v", id, wait, last)
	return nil
}

// dkimRecords are the DNS TXT records ConfigService says to publish for
// the domain's DKIM keys, by record name.
func (p *pipeline) dkimRecords(t *testing.T, domainID string) map[string]string {
	t.Helper()
	dom, err := p.cfg.GetDomain(context.Background(), &mailbusv1.GetDomainRequest{Id: domainID})
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]string{}
	for _, k := range dom.GetDomain().GetDkimKeys() {
		records[k.GetDnsName()] = k.GetDnsTxtValue()
	}
	return records
}

func hasStatus(s mailbusv1.DeliveryStatus) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool { return m.GetStatus() == s }
}
