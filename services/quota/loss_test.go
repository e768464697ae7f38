package quota_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/quota"
)

// TestQuota_dailyLimitsAndDisabledRelaysSurviveRedisRestartingEmpty is
// issue 9's day: redis-server restarted empty (no persistence) in the
// middle of the day. The relay and the tenant must still stop at their
// limits, exactly (the limits are under 100, where a ceiling step is one
// recipient), a relay disabled before the restart stays disabled, and no
// delivery is lost on the way.
func TestQuota_dailyLimitsAndDisabledRelaysSurviveRedisRestartingEmpty(t *testing.T) {
	const relayLimit, tenantLimit = 10, 14
	srv := testkit.StartRestartableRedis(t)
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Europe/Berlin", DailyLimit: tenantLimit, OverLimitPolicy: mailbusv1.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER}
	h := newHarnessOn(t, srv.Addr, tenant, massRelay("mass", relayLimit), massRelay("flaky", 0))
	h.startQuota(quota.Config{})
	berlin := limits.Zone(tenant.GetTimeZone())
	ctx := context.Background()

	// processLimits are the limits another stage's process keeps, with its
	// own Redis client and ledger reader: the sender's, the router's.
	processLimits := func() *limits.Limits {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		lg := limits.NewKafkaLedger(h.bus, testLog(t))
		t.Cleanup(func() { _ = lg.Close(); _ = rdb.Close() })
		return limits.New(rdb, limits.WithClock(h.clock.Now), limits.WithLedger(lg))
	}

	var all []*mailbusv1.Delivery
	send := func(ds ...*mailbusv1.Delivery) {
		t.Helper()
		all = append(all, ds...)
		h.publish(ds...)
		h.waitDecided(ds...)
	}
	// Before the restart, all of one message, so one partition: quota
	// admits them one at a time, and the ceilings lead the counts by one
	// step (one recipient under a limit of 100), which makes the limits
	// exact after the restart. Admissions waiting side by side for a
	// ceiling may leave it further ahead (the package comment's worst case).
	var before []*mailbusv1.Delivery
	for i := range 6 {
		before = append(before, delivery("acme", fmt.Sprintf("a.%d", i), "mass", 1))
	}
	before = append(before, delivery("acme", "a.6", "", 1), delivery("acme", "a.7", "", 1))
	send(before...)
	// The sender sees relay flaky fail three times in a row.
	sender := processLimits()
	for i := 1; i <= 3; i++ {
		if _, _, err := sender.RecordFailure(ctx, tenant.GetId(), "flaky", berlin); err != nil {
			t.Fatal(err)
		}
	}
	if u := h.usage(tenant, "mass"); u.Relay != 6 || u.Tenant != 8 {
		t.Fatalf("before the restart usage %+v, want relay 6, tenant 8", u)
	}

	srv.Restart()

	// After the restart: 8 more for the relay, which has room for 4; the
	// router sends the other 4 on to the default server, where the tenant
	// has room for 2 and defers the rest to its next midnight.
	var after []*mailbusv1.Delivery
	for i := range 8 {
		after = append(after, delivery("acme", fmt.Sprintf("c%d.0", i), "mass", 1))
	}
	send(after...)
	var again []*mailbusv1.Delivery
	for _, d := range h.deliveries(bus.TopicFallback) {
		again = append(again, rerouted(d))
	}
	if len(again) > 0 {
		all = append(all, again...)
		h.publish(again...)
		h.wait("the re-routed deliveries to be admitted or deferred", func() bool {
			n := 0
			for _, d := range again {
				if h.count(bus.TopicAdmitted, d.GetDeliveryId()) > 0 || len(h.eventsFor(d.GetDeliveryId(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)) > 0 {
					n++
				}
			}
			return n == len(again)
		})
	}

	onRelay, total := 0, 0
	for id := range distinctIDs(h.deliveries(bus.TopicAdmitted)) {
		total++
		for _, d := range all {
			if d.GetDeliveryId() == id && d.GetRoute().GetRelayId() == "mass" {
				onRelay++
			}
		}
	}
	t.Logf("admitted %d recipients on relay mass (limit %d), %d for the tenant (limit %d)", onRelay, relayLimit, total, tenantLimit)
	if onRelay != relayLimit {
		t.Errorf("relay mass carried %d recipients that day, want exactly its limit of %d: %s", onRelay, relayLimit, h.dump())
	}
	if total != tenantLimit {
		t.Errorf("tenant acme sent %d recipients that day, want exactly its limit of %d: %s", total, tenantLimit, h.dump())
	}
	// Nothing lost: every delivery was admitted, sent back to the router
	// (and re-routed above), or deferred.
	for _, d := range all {
		id := d.GetDeliveryId()
		if h.count(bus.TopicAdmitted, id) == 0 && h.count(bus.TopicFallback, id) == 0 &&
			len(h.eventsFor(id, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)) == 0 {
			t.Errorf("delivery %s neither admitted, nor sent back, nor deferred: %s", id, h.dump())
		}
	}
	if got := len(h.deliveries(bus.TopicPoison)); got != 0 {
		t.Errorf("%d records went to the poison topic", got)
	}
	if u := h.usage(tenant, "mass"); u.Relay != relayLimit || u.Tenant != tenantLimit {
		t.Errorf("after the restart usage %+v, want relay %d, tenant %d", u, relayLimit, tenantLimit)
	}
	// The router, asking after the restart, finds flaky still disabled.
	if off, err := processLimits().IsDisabled(ctx, tenant.GetId(), "flaky", berlin); err != nil || !off {
		t.Errorf("relay flaky, disabled before the restart, reads disabled=%v after it (err %v)", off, err)
	}
}
