package tracker

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/cancelled"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
)

// TestTracker_restoresCancelMarkersARedisLost cancels a message, loses
// Redis's data, and checks that the marker comes back from the log for
// what is left of its TTL, while a message cancelled longer ago than the
// TTL gets none.
func TestTracker_restoresCancelMarkersARedisLost(t *testing.T) {
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "messages.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	defer rdb.Close()
	s, err := New(ctx, Config{}, Deps{DB: db, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		id  string
		age time.Duration
	}{{"m-recent", 2 * 24 * time.Hour}, {"m-old", 8 * 24 * time.Hour}} {
		q := &mailbusv1.DeliveryEvent{EventId: c.id + "-q", MessageId: c.id, TenantId: "acme", Stage: "router",
			Status: mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, Recipients: []string{"a@x.example"},
			OccurTime: timestamppb.New(now.Add(-c.age))}
		if _, err := s.store.Apply(ctx, q); err != nil {
			t.Fatal(err)
		}
		m, err := s.store.Message(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		ev, _ := store.CancelEvent(m, now.Add(-c.age+time.Minute), "ops")
		if _, err := s.store.Apply(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := s.RestoreCancelMarks(ctx)
	if err != nil || n != 1 {
		t.Fatalf("RestoreCancelMarks = %d, %v; want 1", n, err)
	}
	ttl, err := rdb.TTL(ctx, cancelled.Key("acme", "m-recent")).Result()
	if err != nil || ttl < 4*24*time.Hour || ttl > 5*24*time.Hour {
		t.Errorf("restored marker TTL %v, %v; want what is left of 7 days after 2", ttl, err)
	}
	if n, _ := rdb.Exists(ctx, cancelled.Key("acme", "m-old")).Result(); n != 0 {
		t.Error("a message cancelled longer ago than the TTL got a marker")
	}
}
