package quota

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
)

// RelaySource lists the tenants and relays whose daily usage the quota stage
// reports as metrics. When Deps.Config is one too (the configuration cache,
// configclient.Client, is), New registers the usage gauges.
type RelaySource interface {
	Tenants() []*mailbusv1.Tenant
	Relays(tenantID string) []*mailbusv1.Relay
}

// usageTimeout bounds reading every tenant's counters for one scrape.
const usageTimeout = 5 * time.Second

// usageCollector reports, at scrape time, today's counts in Redis against
// the daily limits, and which relays are disabled after repeated failures.
// Reading Redis when Prometheus asks (one round trip per tenant) rather
// than remembering what this replica admitted makes every replica report
// the whole truth, which a new day resets on its own; dashboards take the
// max over replicas.
type usageCollector struct {
	src    RelaySource
	limits *limits.Limits
	log    *slog.Logger

	relayUsed, relayLimit, relayDisabled *prometheus.Desc
	tenantUsed, tenantLimit              *prometheus.Desc

	// collecting keeps scrapes from piling up on a slow Redis.
	collecting sync.Mutex
}

func newUsageCollector(src RelaySource, l *limits.Limits, log *slog.Logger) *usageCollector {
	relay := []string{"tenant", "relay"}
	tenant := []string{"tenant"}
	return &usageCollector{
		src: src, limits: l, log: log,
		relayUsed: prometheus.NewDesc("mailbus_quota_relay_used_recipients",
			"Recipients admitted through the relay today, in the tenant's time zone.", relay, nil),
		relayLimit: prometheus.NewDesc("mailbus_quota_relay_daily_limit_recipients",
			"The relay's daily limit in recipients; relays without a limit are not listed.", relay, nil),
		relayDisabled: prometheus.NewDesc("mailbus_quota_relay_disabled",
			"1 when the relay failed often enough in a row today to be left alone until the tenant's midnight, else 0.", relay, nil),
		tenantUsed: prometheus.NewDesc("mailbus_quota_tenant_used_recipients",
			"Recipients admitted for the tenant today over every route, in its time zone.", tenant, nil),
		tenantLimit: prometheus.NewDesc("mailbus_quota_tenant_daily_limit_recipients",
			"The tenant's daily limit in recipients; tenants without a limit are not listed.", tenant, nil),
	}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.relayUsed, c.relayLimit, c.relayDisabled, c.tenantUsed, c.tenantLimit} {
		ch <- d
	}
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.collecting.TryLock() {
		return
	}
	defer c.collecting.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), usageTimeout)
	defer cancel()
	var failed int
	var lastErr error
	for _, t := range c.src.Tenants() {
		if ctx.Err() != nil {
			lastErr = ctx.Err()
			failed++
			continue
		}
		relays := c.src.Relays(t.GetId())
		ids := make([]string, len(relays))
		for i, r := range relays {
			ids[i] = r.GetId()
		}
		st, err := c.limits.DayState(ctx, t.GetId(), ids, limits.Zone(t.GetTimeZone()))
		if err != nil {
			failed, lastErr = failed+1, err
			continue
		}
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		gauge(c.tenantUsed, float64(st.Tenant), t.GetId())
		if t.GetDailyLimit() > 0 {
			gauge(c.tenantLimit, float64(t.GetDailyLimit()), t.GetId())
		}
		for i, r := range relays {
			rs := st.Relays[i]
			gauge(c.relayUsed, float64(rs.Used), t.GetId(), r.GetId())
			if r.GetDailyLimit() > 0 {
				gauge(c.relayLimit, float64(r.GetDailyLimit()), t.GetId(), r.GetId())
			}
			disabled := 0.0
			if rs.Disabled {
				disabled = 1
			}
			gauge(c.relayDisabled, disabled, t.GetId(), r.GetId())
		}
	}
	if failed > 0 {
		c.log.Warn("relay usage metrics: cannot read some tenants' counters; they are left out of this scrape", "tenants", failed, "err", lastErr)
	}
}
