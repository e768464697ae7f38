package plan

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// healthPlanner is a planner whose relay health is pkg/health on a real
// redis-server, with a clock the test moves.
func healthPlanner(t *testing.T, c *memConfig, now *time.Time) (*Planner, *limits.Limits) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { rdb.Close() })
	clock := func() time.Time { return *now }
	lim := limits.New(rdb, limits.WithClock(clock))
	return New(c, nil, health.New(rdb, lim, health.Options{}), Options{VERPKey: verpKey, Now: clock}), lim
}

func failThreeTimes(t *testing.T, lim *limits.Limits, tenant *mailbusv1.Tenant, relayID string) {
	t.Helper()
	for range limits.DefaultFailureThreshold {
		if _, _, err := lim.RecordFailure(context.Background(), tenant.GetId(), relayID, limits.Zone(tenant.GetTimeZone())); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPlanner_skipsARelayDisabledAfterThreeFailuresUntilTheTenantsNextMidnight(t *testing.T) {
	c := newConfig()
	tenant := c.tenants["acme"] // Europe/Berlin
	// 22:30 UTC on 10 March is 23:30 in Berlin.
	now := time.Date(2026, 3, 10, 22, 30, 0, 0, time.UTC)
	p, lim := healthPlanner(t, c, &now)
	failThreeTimes(t, lim, tenant, "acme-relay")

	d := plan(t, p, submission("alice@acme.example", "x@example.net")).Deliveries[0]
	if d.GetRoute().GetKind() != mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX {
		t.Errorf("route %v; a relay disabled today must be skipped for the default server", d.GetRoute())
	}
	// 23:10 UTC is already 11 March in Berlin (not yet in UTC).
	now = time.Date(2026, 3, 10, 23, 10, 0, 0, time.UTC)
	sub := submission("alice@acme.example", "x@example.net")
	sub.IdempotencyId = "next-day"
	d = plan(t, p, sub).Deliveries[0]
	if d.GetRoute().GetRelayId() != "acme-relay" {
		t.Errorf("route %v; after the tenant's midnight the relay is used again", d.GetRoute())
	}
}

func TestPlanner_notifiesTheTenantsAdministratorsOnceWhenARelayIsDisabled(t *testing.T) {
	c := newConfig()
	tenant := c.tenants["acme"]
	tenant.AdminEmails = []string{"it@acme.example", "boss@acme.example"}
	c.def.Mode = mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY
	// A relay serving every kind, system included, must still not carry the
	// notice.
	c.relays = append(c.relays, &mailbusv1.Relay{Id: "other", TenantId: "acme", Active: true, Priority: 1,
		Domains: []string{"acme.example", "fast.example", "mail.acme.example"}})
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	p, lim := healthPlanner(t, c, &now)
	first := plan(t, p, submission("bob@fast.example", "x@example.net")).Deliveries[0]
	failed := first.GetRoute().GetRelayId()

	// A failure that does not disable the relay sends no notice.
	if _, _, err := lim.RecordFailure(context.Background(), "acme", failed, limits.Zone(tenant.GetTimeZone())); err != nil {
		t.Fatal(err)
	}
	res, err := p.Reroute(context.Background(), cloneWithExcluded(first, failed))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deliveries) != 1 {
		t.Fatalf("reroute after one failure made %d deliveries, want just the rerouted one", len(res.Deliveries))
	}

	failThreeTimes(t, lim, tenant, failed)
	// The notice goes per recipient (the alias domain uses VERP).
	var rounds [][]*mailbusv1.Delivery
	for range 2 { // the fallback record, and its redelivery
		res, err := p.Reroute(context.Background(), cloneWithExcluded(first, failed))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Deliveries) != 3 {
			t.Fatalf("reroute after the relay was disabled made %d deliveries, want the rerouted one and the notice to 2 admins", len(res.Deliveries))
		}
		rounds = append(rounds, res.Deliveries[1:])
	}
	notices := rounds[0]
	n := notices[0]
	if n.GetDeliveryId() != rounds[1][0].GetDeliveryId() {
		t.Errorf("redelivered fallback record made notice %s, first %s: the notice must be idempotent", rounds[1][0].GetDeliveryId(), n.GetDeliveryId())
	}
	if n.GetIdempotencyId() != RelayDisabledIdempotencyID(failed, "2026-03-10") || n.GetKind() != mailbusv1.EmailKind_EMAIL_KIND_SYSTEM {
		t.Errorf("notice idempotency id %q kind %v", n.GetIdempotencyId(), n.GetKind())
	}
	if n.GetRoute().GetKind() != mailbusv1.RouteKind_ROUTE_KIND_DEFAULT_RELAY {
		t.Errorf("notice route %v, want the default server", n.GetRoute())
	}
	var to []string
	for _, d := range notices {
		to = append(to, d.GetEnvelope().GetRcptTo()...)
	}
	if len(to) != 2 || to[0] != "it@acme.example" || to[1] != "boss@acme.example" {
		t.Errorf("notice goes to %v, want the tenant's admin_emails", to)
	}
	from, err := mailHeaderFrom(n)
	if err != nil || from != "noreply@mail.acme.example" || n.GetRoute().GetFromRewritten() {
		t.Errorf("notice From %q (%v), rewritten %v; want noreply@mail.acme.example as is", from, err, n.GetRoute().GetFromRewritten())
	}
}
