package limits

import (
	"context"
	"fmt"
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
	brokers := testkit.StartBroker(t)
	for _, withLedger := range []bool{false, true} {
		t.Run(fmt.Sprintf("ledger=%v", withLedger), func(t *testing.T) {
			clk := newClock(utc("2026-06-01T12:00:00Z"))
			// Each run has its own prefix: the server is shared.
			opts := []Option{WithClock(clk.Now), WithKeyPrefix(fmt.Sprintf("mb:q:%v:", withLedger))}
			if withLedger {
				lg := NewKafkaLedger(testkit.BusConfig(brokers), nil)
				t.Cleanup(func() { _ = lg.Close() })
				opts = append(opts, WithLedger(lg))
			}
			l := New(rdb, opts...)
			clusterSteps(t, l, rdb, withLedger)
		})
	}
}

func clusterSteps(t *testing.T, l *Limits, rdb *redis.ClusterClient, withLedger bool) {
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
	if !withLedger {
		return
	}
	// The restore declares every counter, ceiling and disabled relay of
	// the tenant in one script.
	t.Run("restoreAfterALoss", func(t *testing.T) {
		for range 3 {
			if _, _, err := l.RecordFailure(ctx, tenant, "r3", nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.Admit(ctx, req("d2", "r1", 2, 5, 5)); err != nil {
			t.Fatal(err)
		}
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if u, err := l.Usage(ctx, tenant, "r1", nil); err != nil || u.Relay != 2 || u.Tenant != 2 {
			t.Fatalf("usage after the loss = %+v, %v; want 2 and 2 restored", u, err)
		}
		if off, err := l.IsDisabled(ctx, tenant, "r3", nil); err != nil || !off {
			t.Fatalf("r3 after the loss: disabled %v, %v", off, err)
		}
	})
}
