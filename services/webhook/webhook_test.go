package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/webhook"
)

// statuses are the five events of every test message, in order.
var statuses = []mailbusv1.DeliveryStatus{
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
}

func events(tenant string, messages int) []*mailbusv1.DeliveryEvent {
	var evs []*mailbusv1.DeliveryEvent
	base := time.Now().Add(-time.Hour)
	for m := range messages {
		for k, st := range statuses {
			evs = append(evs, &mailbusv1.DeliveryEvent{
				EventId: fmt.Sprintf("%s-m%05d-e%d", tenant, m, k), TenantId: tenant,
				MessageId: fmt.Sprintf("%s-m%05d", tenant, m), DeliveryId: fmt.Sprintf("%s-d%05d", tenant, m),
				Recipients: []string{fmt.Sprintf("rcpt%d@example.net", m)}, Status: st, Stage: "sender",
				Reason: "test", Detail: "smtp said \"hello\" <ok> & ünïcode", Attempt: int32(k + 1),
				OccurTime: timestamppb.New(base.Add(time.Duration(m*10+k) * time.Millisecond)),
			})
		}
	}
	return evs
}

// Ten thousand events to an endpoint whose receiver fails, times out,
// answers 5xx and resets connections in turns, while a final-only endpoint
// of the same tenant takes the same events, another tenant's endpoint
// never answers, a switched-off endpoint waits, and the service is
// restarted a third of the way: every
// event arrives, exactly as it was published, signed so that the Standard
// Webhooks reference library (Python) verifies it, each message's events
// in order, and the dead endpoint holds nobody up.
func TestWebhook_deliversEveryEventSignedAndInOrderThroughAFailingReceiver(t *testing.T) {
	messages := 2000 // five events each: 10,000 events
	if n, err := strconv.Atoi(os.Getenv("MAILBUS_WEBHOOK_TEST_MESSAGES")); err == nil {
		messages = n
	}
	rcv := newReceiver(t)
	rcv.dead["/dead"] = true
	h := newHarnessOn(t, webhook.Config{
		RequestTimeout: 250 * time.Millisecond, RetryInitial: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		Concurrency: 64, PollInterval: 25 * time.Millisecond, RefreshInterval: 500 * time.Millisecond, MaxBatchWait: 5 * time.Millisecond,
	}, postgresOrSQLite(t))
	_, allSecret := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/all")})
	_, finalSecret := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/final"), FinalOnly: true})
	h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "stuck", Url: rcv.url("/dead")})
	// An endpoint that is switched off.
	off, _ := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/off")})
	off.Active = false
	if _, err := h.client(acmeToken).UpdateWebhookEndpoint(context.Background(), &mailbusv1.UpdateWebhookEndpointRequest{Endpoint: off}); err != nil {
		t.Fatal(err)
	}

	acme := events("acme", messages)
	began := time.Now()
	stuck := events("stuck", 10)
	h.publish(stuck)
	h.publish(acme[:len(acme)/2])
	progress := func() string {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return fmt.Sprintf("requests %v", maps.Clone(rcv.n))
	}
	waitFor(t, 5*time.Minute, "a third of the events", func() bool { return rcv.distinct("/all") >= len(acme)/3 }, progress)
	h.restart()
	// Half of the events again: redelivered records enqueue nothing new.
	h.publish(acme)

	waitFor(t, 10*time.Minute, "every event at every endpoint", func() bool {
		return rcv.distinct("/all") == len(acme) && rcv.distinct("/final") == 2*messages
	}, progress)
	got := rcv.snapshot()
	took := time.Since(began)

	published := map[string]*mailbusv1.DeliveryEvent{}
	for _, ev := range acme {
		published[ev.GetEventId()] = ev
	}
	secrets := map[string]string{"/all": allSecret, "/final": finalSecret}
	var hooks []testkit.ReceivedWebhook
	firstSeen := map[string][]string{} // path+message -> event ids in order of first receipt
	seen := map[string]bool{}
	ids := map[string]string{} // event id -> webhook id
	dups := map[string]int{}
	for _, g := range got {
		if g.path == "/off" || g.path == "/dead" {
			t.Fatalf("%s received a webhook", g.path)
		}
		ev, ok := published[g.eventID]
		if !ok {
			t.Fatalf("%s received an event that was never published: %s", g.path, g.body)
		}
		// The body carries the event exactly as published.
		var p struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(g.body, &p); err != nil {
			t.Fatalf("body %s: %v", g.body, err)
		}
		back := &mailbusv1.DeliveryEvent{}
		if err := protojson.Unmarshal(p.Data, back); err != nil {
			t.Fatalf("data %s: %v", p.Data, err)
		}
		if !proto.Equal(back, ev) {
			t.Fatalf("received %v, published %v", back, ev)
		}
		if p.Type != webhook.EventType(ev) {
			t.Fatalf("type %q for a %v event", p.Type, ev.GetStatus())
		}
		switch g.path {
		case "/final":
			if !webhook.Final(ev) {
				t.Fatalf("final-only endpoint received a %v event", ev.GetStatus())
			}
		}
		// One webhook id per event, on every attempt and endpoint.
		if prev, ok := ids[g.eventID]; ok && prev != g.id {
			t.Fatalf("event %s came with webhook ids %s and %s", g.eventID, prev, g.id)
		}
		ids[g.eventID] = g.id
		hooks = append(hooks, g.hook(secrets[g.path]))
		key := g.path + " " + g.eventID
		if seen[key] {
			dups[g.path]++
			continue
		}
		seen[key] = true
		firstSeen[g.path+" "+g.messageID] = append(firstSeen[g.path+" "+g.messageID], g.eventID)
	}
	// Each message's events arrived in the order they were published.
	for k, got := range firstSeen {
		if !slices.IsSorted(got) {
			t.Fatalf("%s: events arrived in the order %v", k, got)
		}
	}

	v := testkit.VerifyStandardWebhooks(t, hooks)
	if v.Checked != len(hooks) || v.Verified != len(hooks) {
		t.Fatalf("standardwebhooks verified %d of %d webhooks: %v", v.Verified, len(hooks), v.Failures)
	}
	t.Logf("%d events on %s in %s: %d webhooks received and verified by standardwebhooks (Python), 0 lost, order per message kept; duplicates (same webhook-id again) %v; requests per path %v",
		len(acme), strings.SplitN(h.dbURL, ":", 2)[0], took.Round(time.Second), len(hooks), dups, rcv.requests())

	// The dead endpoint's events are still due, not lost: nothing gave up.
	dl, err := h.client(adminToken).ListDeadLetters(context.Background(), &mailbusv1.ListDeadLettersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dl.GetDeadLetters()) != 0 {
		t.Fatalf("dead letters: %v", dl.GetDeadLetters())
	}
}

// Deliveries that fail past the retry schedule become dead letters that
// the tenant can list and replay; the receiver then gets each of them once
// more with the same webhook-id.
func TestWebhook_deadLettersAreListedAndReplayed(t *testing.T) {
	rcv := newReceiver(t)
	rcv.dead["/down"] = true
	h := newHarness(t, webhook.Config{
		RequestTimeout: 200 * time.Millisecond, RetryInitial: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		RetryFor: 300 * time.Millisecond, PollInterval: 25 * time.Millisecond,
	})
	ep, secret := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/down")})
	evs := events("acme", 4)
	h.publish(evs)
	ctx := context.Background()
	acme := h.client(acmeToken)
	var dead []*mailbusv1.WebhookDeadLetter
	waitFor(t, time.Minute, "20 dead letters", func() bool {
		dead = nil
		tok := ""
		for {
			resp, err := acme.ListDeadLetters(ctx, &mailbusv1.ListDeadLettersRequest{PageSize: 7, PageToken: tok})
			if err != nil {
				t.Fatal(err)
			}
			dead = append(dead, resp.GetDeadLetters()...)
			if tok = resp.GetNextPageToken(); tok == "" {
				return len(dead) == len(evs)
			}
		}
	})
	for _, d := range dead {
		if d.GetEndpointId() != ep.GetId() || d.GetAttempts() < 1 || !strings.Contains(d.GetLastError(), "no answer within") || d.GetEvent().GetEventId() == "" {
			t.Fatalf("dead letter %v", d)
		}
	}
	// Another tenant sees none of them and may not replay them.
	other := h.client(otherToken)
	if resp, err := other.ListDeadLetters(ctx, &mailbusv1.ListDeadLettersRequest{}); err != nil || len(resp.GetDeadLetters()) != 0 {
		t.Fatalf("other tenant's list: %v, %v", resp, err)
	}
	if _, err := other.ReplayDeadLetters(ctx, &mailbusv1.ReplayDeadLettersRequest{TenantId: "acme"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other tenant's replay: %v", err)
	}

	rcv.mu.Lock()
	rcv.dead["/down"] = false
	rcv.mu.Unlock()
	rcv.setOK("/down", true)
	// One first, by id, then the rest.
	resp, err := acme.ReplayDeadLetters(ctx, &mailbusv1.ReplayDeadLettersRequest{WebhookIds: []string{dead[0].GetWebhookId()}})
	if err != nil || resp.GetReplayed() != 1 {
		t.Fatalf("replay one: %v, %v", resp, err)
	}
	waitFor(t, time.Minute, "the replayed webhook", func() bool { return rcv.distinct("/down") == 1 })
	resp, err = acme.ReplayDeadLetters(ctx, &mailbusv1.ReplayDeadLettersRequest{EndpointId: ep.GetId()})
	if err != nil || resp.GetReplayed() != int64(len(evs)-1) {
		t.Fatalf("replay the rest: %v, %v", resp, err)
	}
	waitFor(t, time.Minute, "every replayed webhook", func() bool { return rcv.distinct("/down") == len(evs) })

	var hooks []testkit.ReceivedWebhook
	wantIDs := map[string]bool{}
	for _, d := range dead {
		wantIDs[d.GetWebhookId()] = true
	}
	for _, g := range rcv.snapshot() {
		if !wantIDs[g.id] {
			t.Fatalf("replayed webhook id %s is not a dead letter's", g.id)
		}
		hooks = append(hooks, g.hook(secret))
	}
	if v := testkit.VerifyStandardWebhooks(t, hooks); v.Verified != len(hooks) {
		t.Fatalf("standardwebhooks verified %d of %d: %v", v.Verified, len(hooks), v.Failures)
	}
	if resp, err := acme.ListDeadLetters(ctx, &mailbusv1.ListDeadLettersRequest{}); err != nil || len(resp.GetDeadLetters()) != 0 {
		t.Fatalf("dead letters after replay: %v, %v", resp, err)
	}
}

// After a rotation, webhooks carry two signatures until the overlap ends,
// and the reference library accepts them with either secret alone; an
// endpoint that asked for bounces gets only those.
func TestWebhook_rotatedSecretSignsWithBothSecretsDuringTheOverlap(t *testing.T) {
	rcv := newReceiver(t)
	rcv.setOK("/r", true)
	h := newHarness(t, webhook.Config{PollInterval: 25 * time.Millisecond})
	ep, oldSecret := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/r")})
	rot, err := h.client(acmeToken).RotateWebhookSecret(context.Background(), &mailbusv1.RotateWebhookSecretRequest{Id: ep.GetId(), OverlapSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	newSecret := rot.GetSecret()
	if newSecret == oldSecret || !strings.HasPrefix(newSecret, "whsec_") || rot.GetEndpoint().GetPreviousSecretExpireTime() == nil {
		t.Fatalf("rotation: %v", rot)
	}
	// An endpoint that wants only bounces, signed with one secret.
	rcv.setOK("/bounces", true)
	_, bounceSecret := h.createEndpoint(&mailbusv1.WebhookEndpoint{TenantId: "acme", Url: rcv.url("/bounces"), EventTypes: []string{"message.bounced"}})
	h.publish(events("acme", 2))
	waitFor(t, time.Minute, "12 webhooks", func() bool { return rcv.distinct("/r") == 10 && rcv.distinct("/bounces") == 2 })
	var hooks []testkit.ReceivedWebhook
	for _, g := range rcv.snapshot() {
		if g.path == "/bounces" {
			if g.eventType != "message.bounced" || len(strings.Fields(g.sig)) != 1 {
				t.Fatalf("bounces-only endpoint got %s signed %q", g.eventType, g.sig)
			}
			if v := testkit.VerifyStandardWebhooks(t, []testkit.ReceivedWebhook{g.hook(bounceSecret)}); v.Verified != 1 {
				t.Fatalf("standardwebhooks: %+v", v)
			}
			continue
		}
		if n := len(strings.Fields(g.sig)); n != 2 {
			t.Fatalf("%d signatures during the overlap: %q", n, g.sig)
		}
		hooks = append(hooks, g.hook(oldSecret, newSecret))
	}
	if v := testkit.VerifyStandardWebhooks(t, hooks); v.Verified != 2*len(hooks) {
		t.Fatalf("standardwebhooks verified %d of %d: %v", v.Verified, 2*len(hooks), v.Failures)
	}
	// A wrong secret must not verify: the verifier really checks.
	bad := hooks[:1]
	bad[0].Secrets = []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
	if v := testkit.VerifyStandardWebhooks(t, bad); v.Verified != 0 || v.Checked != 1 {
		t.Fatalf("a wrong secret verified: %+v", v)
	}
}

// Secrets come back only from create and rotate; endpoints are the
// tenant's own; URLs must be https outside development.
func TestWebhookService_authorisesByTenantAndNeverReturnsSecrets(t *testing.T) {
	h := newHarness(t, webhook.Config{})
	ctx := context.Background()
	acme, other := h.client(acmeToken), h.client(otherToken)
	created, err := acme.CreateWebhookEndpoint(ctx, &mailbusv1.CreateWebhookEndpointRequest{Endpoint: &mailbusv1.WebhookEndpoint{
		TenantId: "acme", Url: "https://hooks.acme.example/mailbus", Active: true, EventTypes: []string{"message.bounced"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetEndpoint().GetId()
	if !strings.HasPrefix(created.GetSecret(), "whsec_") {
		t.Fatalf("secret %q", created.GetSecret())
	}
	for name, call := range map[string]func() error{
		"create for another tenant": func() error {
			_, err := other.CreateWebhookEndpoint(ctx, &mailbusv1.CreateWebhookEndpointRequest{Endpoint: &mailbusv1.WebhookEndpoint{TenantId: "acme", Url: "https://x.example/"}})
			return err
		},
		"get another tenant's": func() error {
			_, err := other.GetWebhookEndpoint(ctx, &mailbusv1.GetWebhookEndpointRequest{Id: id})
			return err
		},
		"rotate another tenant's": func() error {
			_, err := other.RotateWebhookSecret(ctx, &mailbusv1.RotateWebhookSecretRequest{Id: id})
			return err
		},
		"delete another tenant's": func() error {
			_, err := other.DeleteWebhookEndpoint(ctx, &mailbusv1.DeleteWebhookEndpointRequest{Id: id})
			return err
		},
		"list another tenant's": func() error {
			_, err := other.ListWebhookEndpoints(ctx, &mailbusv1.ListWebhookEndpointsRequest{TenantId: "acme"})
			return err
		},
	} {
		if c := status.Code(call()); c != codes.PermissionDenied && c != codes.NotFound {
			t.Errorf("%s: %v, want PermissionDenied or NotFound", name, c)
		}
	}
	if _, err := h.client("mbk_wrong_token_000000001").ListWebhookEndpoints(ctx, &mailbusv1.ListWebhookEndpointsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unknown token: %v", err)
	}
	got, err := acme.GetWebhookEndpoint(ctx, &mailbusv1.GetWebhookEndpointRequest{Id: id})
	if err != nil || got.GetEndpoint().GetUrl() != "https://hooks.acme.example/mailbus" {
		t.Fatalf("get: %v, %v", got, err)
	}
	// No read answer carries the secret, in any field.
	list, err := acme.ListWebhookEndpoints(ctx, &mailbusv1.ListWebhookEndpointsRequest{})
	if err != nil || len(list.GetEndpoints()) != 1 {
		t.Fatalf("list: %v, %v", list, err)
	}
	for _, m := range []proto.Message{got, list} {
		if b, _ := protojson.Marshal(m); strings.Contains(string(b), "whsec_") || strings.Contains(string(b), strings.TrimPrefix(created.GetSecret(), "whsec_")) {
			t.Fatalf("a read returned the secret: %s", b)
		}
	}
	for _, bad := range []*mailbusv1.WebhookEndpoint{
		{TenantId: "acme", Url: "ftp://x.example/"},
		{TenantId: "acme", Url: "https://user:pw@x.example/"},
		{TenantId: "acme", Url: "https://x.example/", EventTypes: []string{"message.opened"}},
		{Url: "https://x.example/"},
	} {
		if _, err := h.client(adminToken).CreateWebhookEndpoint(ctx, &mailbusv1.CreateWebhookEndpointRequest{Endpoint: bad}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("create %v: %v, want InvalidArgument", bad, err)
		}
	}
	if _, err := acme.DeleteWebhookEndpoint(ctx, &mailbusv1.DeleteWebhookEndpointRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.GetWebhookEndpoint(ctx, &mailbusv1.GetWebhookEndpointRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestValidURL_requiresHTTPSOutsideDevelopment(t *testing.T) {
	if err := webhook.ValidURL("http://hooks.example/", false); err == nil {
		t.Fatal("http accepted outside development")
	}
	if err := webhook.ValidURL("http://127.0.0.1:8080/", true); err != nil {
		t.Fatalf("http refused in development: %v", err)
	}
	if err := webhook.ValidURL("https://hooks.example/x", false); err != nil {
		t.Fatal(err)
	}
}

func TestBackoff_growsToItsCapWithJitter(t *testing.T) {
	for n, want := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second} {
		d := webhook.Backoff(5*time.Second, time.Hour, n)
		if d < want/2 || d > want {
			t.Errorf("attempt %d: %s, want between %s and %s", n, d, want/2, want)
		}
	}
	if d := webhook.Backoff(5*time.Second, time.Hour, 40); d < 30*time.Minute || d > time.Hour {
		t.Errorf("capped backoff %s", d)
	}
	// The default schedule retries for 72 hours: count the attempts.
	var total time.Duration
	n := 0
	for ; total < 72*time.Hour; n++ {
		total += webhook.Backoff(5*time.Second, time.Hour, n)
	}
	if n < 72 {
		t.Errorf("only %d retries in 72 hours", n)
	}
}
