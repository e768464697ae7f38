package quota_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/quota"
)

func massRelay(id string, dailyLimit int64) *mailbusv1.Relay {
	return &mailbusv1.Relay{Id: id, Name: id, TenantId: "acme", Active: true, DailyLimit: dailyLimit}
}

// count returns how many records on topic are about delivery id.
func (h *harness) count(topic, id string) int {
	n := 0
	for _, d := range h.deliveries(topic) {
		if d.GetDeliveryId() == id {
			n++
		}
	}
	return n
}

// waitEventsFor waits until delivery id has at least n events of status
// and returns them. Quota publishes an event after the delivery record it
// is about, and the test reads each topic with its own consumer, so a
// delivery that has come out says nothing about its event yet.
func (h *harness) waitEventsFor(id string, status mailbusv1.DeliveryStatus, n int) []*mailbusv1.DeliveryEvent {
	h.t.Helper()
	h.wait(fmt.Sprintf("%d %v event(s) of %s", n, status, id), func() bool { return len(h.eventsFor(id, status)) >= n })
	return h.eventsFor(id, status)
}

// distinctIDs returns the delivery ids of ds.
func distinctIDs(ds []*mailbusv1.Delivery) map[string]bool {
	ids := map[string]bool{}
	for _, d := range ds {
		ids[d.GetDeliveryId()] = true
	}
	return ids
}

func (h *harness) eventsFor(id string, status mailbusv1.DeliveryStatus) []*mailbusv1.DeliveryEvent {
	var out []*mailbusv1.DeliveryEvent
	for _, e := range h.events() {
		if e.GetDeliveryId() == id && e.GetStatus() == status {
			out = append(out, e)
		}
	}
	return out
}

func TestQuota_relayDailyLimitCountsRecipientsAndOverflowFallsBackWithoutDroppingOrCountingTwice(t *testing.T) {
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Europe/Berlin", DailyLimit: 100}
	h := newHarness(t, tenant, massRelay("mass", 5))
	h.startQuota(quota.Config{})

	d1, d2, d3 := delivery("acme", "m1.0", "mass", 3), delivery("acme", "m2.0", "mass", 2), delivery("acme", "m3.0", "mass", 1)
	for _, d := range []*mailbusv1.Delivery{d1, d2, d3} {
		h.publish(d)
		h.waitDecided(d)
	}
	if h.count(bus.TopicAdmitted, "m1.0") != 1 || h.count(bus.TopicAdmitted, "m2.0") != 1 {
		t.Fatalf("3 + 2 recipients fit a limit of 5 and should be admitted: %s", h.dump())
	}
	fb := h.deliveries(bus.TopicFallback)
	if len(fb) != 1 || fb[0].GetDeliveryId() != "m3.0" || len(fb[0].GetExcludedRelayIds()) != 1 || fb[0].GetExcludedRelayIds()[0] != "mass" {
		t.Fatalf("the sixth recipient should go to mail.fallback with relay mass excluded; got %s", h.dump())
	}
	if ev := h.waitEventsFor("m3.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, 1); len(ev) != 1 || ev[0].GetReason() != "relay_limit_reached" {
		t.Errorf("want one queued event with reason relay_limit_reached for m3.0, got %v", ev)
	}
	if u := h.usage(tenant, "mass"); u.Relay != 5 || u.Tenant != 5 {
		t.Errorf("usage %+v, want relay 5 and tenant 5 (the refused delivery counts nowhere)", u)
	}

	// The router sends it on through the default server: counted once, for
	// the tenant only.
	r1 := rerouted(fb[0])
	h.publish(r1)
	h.waitDecided(r1)
	if h.count(bus.TopicAdmitted, r1.GetDeliveryId()) != 1 {
		t.Fatalf("re-routed delivery not admitted on the default server: %s", h.dump())
	}
	if u := h.usage(tenant, "mass"); u.Relay != 5 || u.Tenant != 6 {
		t.Errorf("usage %+v, want relay 5, tenant 6", u)
	}

	// Every record redelivered (at least once): the same decisions, no
	// counter moves.
	for _, d := range []*mailbusv1.Delivery{d1, d3, r1} {
		h.publish(d)
	}
	h.wait("redelivered records to be decided again", func() bool {
		return h.count(bus.TopicAdmitted, "m1.0") == 2 && h.count(bus.TopicFallback, "m3.0") == 2 && h.count(bus.TopicAdmitted, r1.GetDeliveryId()) == 2
	})
	if u := h.usage(tenant, "mass"); u.Relay != 5 || u.Tenant != 6 {
		t.Errorf("after redelivery usage %+v, want relay 5, tenant 6 still", u)
	}
	if again := h.deliveries(bus.TopicFallback)[1]; len(again.GetExcludedRelayIds()) != 1 {
		t.Errorf("redelivered fallback excludes %v, want just [mass]", again.GetExcludedRelayIds())
	}
}

func TestQuota_tenantDailyLimitCoversRelaysAndTheDefaultServerAndFollowsThePolicy(t *testing.T) {
	tests := []struct {
		name   string
		policy mailbusv1.OverLimitPolicy
	}{
		{name: "defer to the tenant's next midnight", policy: mailbusv1.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER},
		{name: "refuse", policy: mailbusv1.OverLimitPolicy_OVER_LIMIT_POLICY_REFUSE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "America/New_York", DailyLimit: 4, OverLimitPolicy: tt.policy}
			h := newHarness(t, tenant, massRelay("mass", 0))
			// 15:00 UTC is 11:00 EDT (New York moved to DST on 8 March).
			h.clock.Set(time.Date(2026, 3, 10, 15, 0, 0, 0, time.UTC))
			h.startQuota(quota.Config{})

			onRelay, onDefault := delivery("acme", "m1.0", "mass", 2), delivery("acme", "m2.0", "", 2)
			overDefault, overRelay := delivery("acme", "m3.0", "", 1), delivery("acme", "m4.0", "mass", 1)
			for _, d := range []*mailbusv1.Delivery{onRelay, onDefault} {
				h.publish(d)
				h.waitDecided(d)
			}
			if u := h.usage(tenant, "mass"); u.Tenant != 4 || u.Relay != 2 {
				t.Fatalf("usage %+v, want tenant 4 (relay and default together), relay 2", u)
			}
			h.publish(overDefault, overRelay)
			over := []string{"m3.0", "m4.0"}
			switch tt.policy {
			case mailbusv1.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER:
				h.wait("two deferrals", func() bool { return len(h.retried()) >= 2 })
				wantNB := time.Date(2026, 3, 11, 4, 0, 0, 0, time.UTC) // midnight EDT
				for _, d := range h.retried() {
					if want := d.GetMessageId() + ".0.d20260311"; d.GetDeliveryId() != want {
						t.Errorf("deferred delivery id %s, want %s", d.GetDeliveryId(), want)
					}
					if !d.GetNotBefore().AsTime().Equal(wantNB) || d.GetRetryTopic() != bus.TopicRouted {
						t.Errorf("deferred %s not_before %v to %s; want %v to %s", d.GetDeliveryId(), d.GetNotBefore().AsTime(), d.GetRetryTopic(), wantNB, bus.TopicRouted)
					}
				}
				if n := len(h.retried()); n != 2 {
					t.Errorf("%d deliveries on retry topics, want 2", n)
				}
				for _, id := range over {
					ev := h.waitEventsFor(id, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, 1)
					if len(ev) != 1 || ev[0].GetReason() != "tenant_daily_limit" {
						t.Errorf("want one deferred event with reason tenant_daily_limit for %s, got %v", id, ev)
					}
				}
			default:
				h.wait("refusals", func() bool {
					return len(h.eventsFor("m3.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED))+
						len(h.eventsFor("m4.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED)) == 2
				})
				for _, id := range over {
					ev := h.eventsFor(id, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED)
					if len(ev) != 1 || ev[0].GetReason() != "tenant_daily_limit" || !ev[0].GetPermanent() {
						t.Errorf("want one permanent failed event with reason tenant_daily_limit for %s, got %v", id, ev)
					}
				}
				if n := len(h.retried()) + h.count(bus.TopicAdmitted, "m3.0") + h.count(bus.TopicAdmitted, "m4.0"); n != 0 {
					t.Errorf("refused deliveries went on: %s", h.dump())
				}
			}
			if u := h.usage(tenant, "mass"); u.Tenant != 4 || u.Relay != 2 {
				t.Errorf("usage %+v after refusals, want tenant 4, relay 2", u)
			}
		})
	}
}

func TestQuota_dayBeginsAtTheTenantsMidnightAcrossADSTChange(t *testing.T) {
	// Europe/Berlin: CET (UTC+1) until 29 March 2026 02:00, then CEST (UTC+2),
	// so 29 March is 23 hours long.
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Europe/Berlin", DailyLimit: 3}
	h := newHarness(t, tenant, massRelay("mass", 2))
	h.startQuota(quota.Config{})
	step := func(at time.Time, d *mailbusv1.Delivery) {
		t.Helper()
		h.clock.Set(at)
		h.publish(d)
		h.waitDecided(d)
	}
	admittedOn := func(id string) string {
		for _, d := range h.deliveries(bus.TopicAdmitted) {
			if d.GetDeliveryId() == id {
				return d.GetQuotaDay()
			}
		}
		return "not admitted"
	}

	// 23:30 in Berlin on 28 March: the relay's two recipients are used up.
	lateOn28 := time.Date(2026, 3, 28, 22, 30, 0, 0, time.UTC)
	step(lateOn28, delivery("acme", "a1.0", "mass", 1))
	step(lateOn28, delivery("acme", "a2.0", "mass", 1))
	step(lateOn28, delivery("acme", "a3.0", "mass", 1))
	if h.count(bus.TopicFallback, "a3.0") != 1 || admittedOn("a1.0") != "2026-03-28" {
		t.Fatalf("on 28 March the third recipient should fall back: %s", h.dump())
	}
	// 00:05 in Berlin is still 28 March in UTC, and already a new day for
	// the tenant.
	step(time.Date(2026, 3, 28, 23, 5, 0, 0, time.UTC), delivery("acme", "b1.0", "mass", 1))
	if got := admittedOn("b1.0"); got != "2026-03-29" {
		t.Fatalf("just after the tenant's midnight the relay should count from zero on 2026-03-29, got %s: %s", got, h.dump())
	}
	// 03:00 CEST, after the clocks jumped: one more on the relay and one on
	// the default server use up the tenant's 3; the next is deferred to
	// midnight CEST, 23 hours after the day began.
	afterJump := time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)
	step(afterJump, delivery("acme", "b2.0", "mass", 1))
	step(afterJump, delivery("acme", "b3.0", "", 1))
	h.publish(delivery("acme", "b4.0", "", 1))
	h.wait("b4.0 to be deferred", func() bool { return len(h.retried()) > 0 })
	retried := h.retried()
	if len(retried) != 1 || retried[0].GetDeliveryId() != "b4.0.d20260330" {
		t.Fatalf("want b4.0 deferred as b4.0.d20260330, got %s", h.dump())
	}
	if nb, want := retried[0].GetNotBefore().AsTime(), time.Date(2026, 3, 29, 22, 0, 0, 0, time.UTC); !nb.Equal(want) {
		t.Errorf("deferred to %v, want %v (midnight CEST)", nb, want)
	}
	// At that instant the next day has begun: the deferred delivery, back
	// from its retry topic, is admitted on 30 March.
	released := retried[0]
	released.NotBefore, released.RetryTopic = nil, ""
	h.clock.Set(time.Date(2026, 3, 29, 22, 0, 0, 0, time.UTC))
	h.publish(released)
	h.wait("the released delivery to be decided", func() bool {
		return h.count(bus.TopicAdmitted, released.GetDeliveryId())+len(h.retried()) > 1
	})
	if got := admittedOn("b4.0.d20260330"); got != "2026-03-30" {
		t.Errorf("deferred delivery admitted on %s, want 2026-03-30: %s", got, h.dump())
	}
}

func TestQuota_parallelReplicasReachTheRelayLimitExactly(t *testing.T) {
	const limit, total = 25, 40
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Asia/Tokyo"}
	h := newHarness(t, tenant, massRelay("mass", limit))
	h.startQuota(quota.Config{})
	h.startQuota(quota.Config{})
	var ds []*mailbusv1.Delivery
	for i := range total {
		ds = append(ds, delivery("acme", fmt.Sprintf("p%02d.0", i), "mass", 1))
	}
	h.publish(ds...)
	h.waitDecided(ds...)
	// Two replicas joining one group rebalance, and a record handled before
	// the rebalance may be handled again after it: count deliveries, and
	// check that none was decided both ways.
	admitted, fell := distinctIDs(h.deliveries(bus.TopicAdmitted)), distinctIDs(h.deliveries(bus.TopicFallback))
	if len(admitted) != limit || len(fell) != total-limit {
		t.Errorf("%d admitted and %d fell back, want exactly %d and %d", len(admitted), len(fell), limit, total-limit)
	}
	for id := range admitted {
		if fell[id] {
			t.Errorf("delivery %s both admitted and sent back", id)
		}
	}
	if u := h.usage(tenant, "mass"); u.Relay != limit {
		t.Errorf("relay counted %d, want exactly %d", u.Relay, limit)
	}
}

func TestQuota_relayRatePacesOnARetryTopicWithoutHoldingThePartition(t *testing.T) {
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC"}
	slow := massRelay("slow", 0)
	slow.RatePerSecond = 0.01 // one message per 100 s
	h := newHarness(t, tenant, slow, massRelay("fast", 0))
	h.startQuota(quota.Config{MaxRateWait: 50 * time.Millisecond})

	// All on one message id: one partition, in order.
	var ds []*mailbusv1.Delivery
	for i := range 3 {
		d := delivery("acme", fmt.Sprintf("m1.%d", i), "slow", 1)
		ds = append(ds, d)
	}
	after := delivery("acme", "m1.9", "fast", 1)
	h.publish(append(ds, after)...)
	h.waitDecided(append(ds, after)...)

	if h.count(bus.TopicAdmitted, "m1.0") != 1 || h.count(bus.TopicAdmitted, "m1.9") != 1 {
		t.Fatalf("the first delivery and the other relay's should pass at once: %s", h.dump())
	}
	retried := h.retried()
	if len(retried) != 2 {
		t.Fatalf("want 2 deliveries paced onto a retry topic, got %s", h.dump())
	}
	for _, d := range retried {
		// Back through quota, so the rate is checked again when it is due:
		// straight to mail.admitted would let every paced delivery out in
		// one burst.
		if d.GetRetryTopic() != bus.TopicRouted || d.GetNotBefore() == nil {
			t.Errorf("paced delivery %s goes to %q not before %v; want mail.routed at a set time", d.GetDeliveryId(), d.GetRetryTopic(), d.GetNotBefore())
		}
	}
	if u := h.usage(tenant, "slow"); u.Relay != 3 {
		t.Errorf("relay counted %d recipients, want 3: pacing must not count or refund", u.Relay)
	}

	// Released from the retry topic before its slot, a paced delivery is
	// paced again, and its daily count does not move.
	again := retried[0]
	again.NotBefore, again.RetryTopic = nil, ""
	h.publish(again)
	h.wait("the released delivery to be paced again", func() bool { return h.count(bus.TopicRetry1m, again.GetDeliveryId()) == 2 })
	if u := h.usage(tenant, "slow"); u.Relay != 3 {
		t.Errorf("relay counted %d recipients after a re-check, want 3", u.Relay)
	}
}
