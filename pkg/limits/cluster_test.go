package limits

import (
	"context"
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/redis/go-redis/v9"
)

// TestLimits_workOnRedisCluster runs every script through a cluster client
// against a cluster-mode server, which refuses keys of different slots
// (CROSSSLOT): the {tenant} hash tag must keep each call in one slot, also the
// re-route and refund paths that declare the keys of an older charge.
func TestLimits_workOnRedisCluster(t *testing.T) {
	addr := testkit.StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	clk := newClock(utc("2026-06-01T12:00:00Z"))
	l := New(rdb, WithClock(clk.Now))
	ctx := context.Background()
	steps := []struct {
		name string
		run  func() error
	}{
		{"admitOnARelay", func() error { _, err := l.Admit(ctx, req("d1", "r1", 1, 5, 5)); return err }},
		{"reRouteReleasesTheOldCharge", func() error { _, err := l.Admit(ctx, req("d1", "r2", 1, 5, 5)); return err }},
		{"reRouteToTheDefaultServer", func() error {
			_, err := l.AdmitDefault(ctx, Request{Tenant: tenant, DeliveryID: "d1", Recipients: 1, TenantLimit: 5})
			return err
		}},
		{"refund", func() error { _, err := l.Refund(ctx, tenant, "d1"); return err }},
		{"usage", func() error { _, err := l.Usage(ctx, tenant, "r1", nil); return err }},
		{"rate", func() error { _, err := l.AllowRate(ctx, tenant, "r1", 10, 10); return err }},
		{"recordFailure", func() error { _, _, err := l.RecordFailure(ctx, tenant, "r1", nil); return err }},
		{"recordSuccess", func() error { return l.RecordSuccess(ctx, tenant, "r1", nil) }},
		{"isDisabled", func() error { _, err := l.IsDisabled(ctx, tenant, "r1", nil); return err }},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := s.run(); err != nil {
				t.Fatal(err)
			}
		})
	}
	u, err := l.Usage(ctx, tenant, "r2", nil)
	if err != nil || u.Tenant != 0 || u.Relay != 0 {
		t.Fatalf("usage after refund = %+v, %v; want nothing counted", u, err)
	}
}
