package quota_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/services/quota"
)

// listingConfig is memConfig that also lists tenants and relays, as the
// configuration cache does (quota.RelaySource).
type listingConfig struct{ *memConfig }

func (c listingConfig) Tenants() []*mailbusv1.Tenant {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*mailbusv1.Tenant
	for _, t := range c.tenants {
		out = append(out, t)
	}
	return out
}

func (c listingConfig) Relays(tenantID string) []*mailbusv1.Relay {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*mailbusv1.Relay
	for _, id := range []string{"mass", "spare"} { // a stable order
		if r, ok := c.relays[id]; ok && r.GetTenantId() == tenantID {
			out = append(out, r)
		}
	}
	return out
}

// TestQuota_reportsRelayUsageAgainstDailyLimitsAndDisabledRelays scrapes the
// usage gauges: what quota counted today per relay and tenant against their
// limits, and a relay that the sender's failures disabled.
func TestQuota_reportsRelayUsageAgainstDailyLimitsAndDisabledRelays(t *testing.T) {
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Europe/Berlin", DailyLimit: 100}
	h := newHarness(t, tenant, massRelay("mass", 10), massRelay("spare", 0))
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	svc := quota.New(quota.Config{Bus: h.bus}, quota.Deps{
		Log: testLog(t), Metrics: reg, Config: listingConfig{h.conf}, Redis: h.rdb, Now: h.clock.Now,
	})
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	d1, d2 := delivery("acme", "m1.0", "mass", 3), delivery("acme", "m2.0", "", 2)
	h.publish(d1, d2)
	h.waitDecided(d1, d2)
	for range limits.DefaultFailureThreshold {
		if _, _, err := h.limits.RecordFailure(context.Background(), "acme", "spare", limits.Zone("Europe/Berlin")); err != nil {
			t.Fatal(err)
		}
	}

	want := `
# HELP mailbus_quota_relay_daily_limit_recipients The relay's daily limit in recipients; relays without a limit are not listed.
# TYPE mailbus_quota_relay_daily_limit_recipients gauge
mailbus_quota_relay_daily_limit_recipients{relay="mass",tenant="acme"} 10
# HELP mailbus_quota_relay_disabled 1 when the relay failed often enough in a row today to be left alone until the tenant's midnight, else 0.
# TYPE mailbus_quota_relay_disabled gauge
mailbus_quota_relay_disabled{relay="mass",tenant="acme"} 0
mailbus_quota_relay_disabled{relay="spare",tenant="acme"} 1
# HELP mailbus_quota_relay_used_recipients Recipients admitted through the relay today, in the tenant's time zone.
# TYPE mailbus_quota_relay_used_recipients gauge
mailbus_quota_relay_used_recipients{relay="mass",tenant="acme"} 3
mailbus_quota_relay_used_recipients{relay="spare",tenant="acme"} 0
# HELP mailbus_quota_tenant_daily_limit_recipients The tenant's daily limit in recipients; tenants without a limit are not listed.
# TYPE mailbus_quota_tenant_daily_limit_recipients gauge
mailbus_quota_tenant_daily_limit_recipients{tenant="acme"} 100
# HELP mailbus_quota_tenant_used_recipients Recipients admitted for the tenant today over every route, in its time zone.
# TYPE mailbus_quota_tenant_used_recipients gauge
mailbus_quota_tenant_used_recipients{tenant="acme"} 5
`
	names := []string{
		"mailbus_quota_relay_daily_limit_recipients", "mailbus_quota_relay_disabled", "mailbus_quota_relay_used_recipients",
		"mailbus_quota_tenant_daily_limit_recipients", "mailbus_quota_tenant_used_recipients",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}
