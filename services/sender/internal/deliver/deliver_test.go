package deliver_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/smtpclient"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/sender/internal/deliver"
)

// staticConfig is a configuration cache holding one tenant and its relay.
type staticConfig struct {
	tenant *mailbusv1.Tenant
	relay  *configclient.RelayWithSecrets
}

func (c staticConfig) Tenant(id string) (*mailbusv1.Tenant, bool) {
	return c.tenant, id == c.tenant.GetId()
}

func (c staticConfig) Relay(id string) (*configclient.RelayWithSecrets, bool) {
	return c.relay, id == c.relay.Relay.GetId()
}

func (staticConfig) DefaultServer() configclient.DefaultServer { return configclient.DefaultServer{} }

// clock is the deliverer's time, moved by the test.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// harness is a Deliverer on a real Redis and a pooled SMTP client that
// sends through a relay to srv.
type harness struct {
	d     *deliver.Deliverer
	clock *clock
	cfg   staticConfig
}

// setMaxConnections sets the relay's max_connections.
func (h *harness) setMaxConnections(n int32) { h.cfg.relay.Relay.MaxConnections = n }

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, srv *testkit.SMTPServer, lifetime time.Duration) *harness {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	pool := smtpclient.NewPool(smtpclient.PoolConfig{HeloName: "sender.test"})
	t.Cleanup(func() { _ = pool.Close() })
	cfg := staticConfig{
		tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relay: &configclient.RelayWithSecrets{Relay: &mailbusv1.Relay{Id: "r1", TenantId: "acme", Name: "test relay",
			Host: srv.Host(), Port: int32(srv.Port()), Security: mailbusv1.RelaySecurity_RELAY_SECURITY_NONE, Active: true}},
	}
	c := &clock{now: t0}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	shaping := health.Shaping{Default: health.Rule{ThrottlePause: 10 * time.Minute, RampStep: time.Minute}}
	d := deliver.New(cfg, pool, nil, limits.New(rdb), health.New(rdb, limits.New(rdb), health.Options{Now: c.Now}), nil,
		deliver.Options{MaxQueueLifetime: lifetime, HeloName: "sender.test", Now: c.Now, Shaping: &shaping}, log)
	return &harness{d: d, clock: c, cfg: cfg}
}

func delivery(rcpts ...string) *mailbusv1.Delivery {
	return &mailbusv1.Delivery{
		TenantId: "acme", MessageId: "m1", DeliveryId: "d1", Attempt: 1, QueueTime: timestamppb.New(t0),
		Envelope: &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: rcpts},
		Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, RelayId: "r1"},
		Message:  []byte("From: <alice@acme.example>\r\nTo: <bob@dest.example>\r\nSubject: hi\r\n\r\nhello\r\n"),
	}
}

// statuses maps each recipient to the status of its event.
func statuses(out deliver.Outcome) map[string]mailbusv1.DeliveryStatus {
	m := map[string]mailbusv1.DeliveryStatus{}
	for _, e := range out.Events {
		for _, r := range e.GetRecipients() {
			m[r] = e.GetStatus()
		}
	}
	return m
}

func TestDeliverer_retriesA4xxOnTheScheduleUntilTheQueueLifetimeExpires(t *testing.T) {
	greylisted := testkit.SMTPReply{Code: 451, Enhanced: "4.7.1", Text: "Greylisted, please try again later"}
	tests := []struct {
		name     string
		lifetime time.Duration // 0: the default, 5 days
		// want are the waits before each retry; the attempt after the last
		// fails "expired".
		want []time.Duration
	}{
		{name: "default lifetime of 5 days", want: append(
			[]time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour},
			// 6h retries from 2h36m until 116h36m, then the last attempt
			// at exactly 120h instead of 122h36m.
			append(slices.Repeat([]time.Duration{6 * time.Hour}, 19), 3*time.Hour+24*time.Minute)...)},
		{name: "configured lifetime of 3 hours", lifetime: 3 * time.Hour,
			want: []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 24 * time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyAt(testkit.SMTPStepRcpt, greylisted)))
			h := newHarness(t, srv, tt.lifetime)
			ctx := context.Background()
			dl := delivery("bob@dest.example")
			var got []time.Duration
			for attempt := 1; ; attempt++ {
				if attempt > 100 {
					t.Fatal("never expired")
				}
				out, err := h.d.Deliver(ctx, dl)
				if err != nil {
					t.Fatal(err)
				}
				if out.Retry == nil {
					// The attempt after the last retry: the recipient
					// fails for good, with the server's last words.
					lifetime := cmp(tt.lifetime, 5*24*time.Hour)
					if h.clock.now.Sub(t0) != lifetime {
						t.Errorf("expired at +%s, want at the lifetime +%s", h.clock.now.Sub(t0), lifetime)
					}
					if len(out.Events) != 1 {
						t.Fatalf("events = %v", out.Events)
					}
					e := out.Events[0]
					if e.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED || e.GetReason() != "expired" || !e.GetPermanent() {
						t.Errorf("last event = %s %q permanent=%v, want FAILED expired permanent", e.GetStatus(), e.GetReason(), e.GetPermanent())
					}
					if e.GetReply().GetCode() != 451 || e.GetReply().GetText() != greylisted.Text {
						t.Errorf("last reply = %v, want the server's 451", e.GetReply())
					}
					break
				}
				if s := statuses(out)["bob@dest.example"]; s != mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED {
					t.Fatalf("attempt %d: status %s, want DEFERRED", attempt, s)
				}
				if out.Retry.GetAttempt() != int32(attempt+1) {
					t.Errorf("attempt %d: retry is attempt %d", attempt, out.Retry.GetAttempt())
				}
				got = append(got, out.RetryAt.Sub(h.clock.now))
				h.clock.now, dl = out.RetryAt, out.Retry
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("waits between attempts:\n got %v\nwant %v", got, tt.want)
			}
			if n := srv.Received(); n != 0 {
				t.Errorf("server received %d messages, want none", n)
			}
		})
	}
}

func cmp(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func TestDeliverer_retriesOnlyTheRecipientsThatGot4xx(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(
		testkit.SMTPReplyOnce(testkit.SMTPReplyToRcpt("full@dest.example", testkit.SMTPReply{Code: 452, Enhanced: "4.2.2", Text: "Mailbox full"})),
		testkit.SMTPReplyToRcpt("busy@dest.example", testkit.SMTPReply{Code: 450, Enhanced: "4.2.1", Text: "Try later"}),
		testkit.SMTPReplyToRcpt("gone@dest.example", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}),
	))
	h := newHarness(t, srv, 0)
	ctx := context.Background()

	out, err := h.d.Deliver(ctx, delivery("ok@dest.example", "full@dest.example", "gone@dest.example", "busy@dest.example"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]mailbusv1.DeliveryStatus{
		"ok@dest.example":   mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
		"gone@dest.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		"full@dest.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
		"busy@dest.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	}
	if got := statuses(out); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("first attempt:\n got %v\nwant %v", got, want)
	}
	if out.Retry == nil || !slices.Equal(out.Retry.GetEnvelope().GetRcptTo(), []string{"full@dest.example", "busy@dest.example"}) {
		t.Fatalf("retry = %v, want only the deferred recipients", out.Retry.GetEnvelope())
	}
	if out.RetryAt != t0.Add(time.Minute) {
		t.Errorf("retry at +%s, want +1m", out.RetryAt.Sub(t0))
	}
	if m := srv.WaitMessages(t, 1)[0]; !slices.Equal(m.To, []string{"ok@dest.example"}) {
		t.Errorf("first message went to %v", m.To)
	}

	// The retry carries only the two deferred recipients: the mailbox
	// has room now, the other server is still busy.
	h.clock.now = out.RetryAt
	out, err = h.d.Deliver(ctx, out.Retry)
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]mailbusv1.DeliveryStatus{
		"full@dest.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
		"busy@dest.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	}
	if got := statuses(out); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("second attempt:\n got %v\nwant %v", got, want)
	}
	if out.Retry == nil || !slices.Equal(out.Retry.GetEnvelope().GetRcptTo(), []string{"busy@dest.example"}) || out.RetryAt != t0.Add(6*time.Minute) {
		t.Errorf("second retry = %v at +%s, want busy@ at +6m", out.Retry.GetEnvelope(), out.RetryAt.Sub(t0))
	}
	if m := srv.WaitMessages(t, 2)[1]; !slices.Equal(m.To, []string{"full@dest.example"}) {
		t.Errorf("second message went to %v, want only full@dest.example", m.To)
	}
}
