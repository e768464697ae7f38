package cancelled_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/cancelled"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestMark_isSeenByEveryDeliveryOfTheMessageOfTheTenantOnly(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	defer rdb.Close()
	d := func(tenant, msg, id string) *mailbusv1.Delivery {
		return &mailbusv1.Delivery{TenantId: tenant, MessageId: msg, DeliveryId: id,
			Envelope: &mailbusv1.Envelope{RcptTo: []string{"a@x.example"}}}
	}
	if err := cancelled.Mark(ctx, rdb, "acme", "m1", 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		d    *mailbusv1.Delivery
		want bool
	}{
		{d("acme", "m1", "m1.0"), true},
		{d("acme", "m1", "m1.t1.0.r1"), true},
		{d("acme", "m2", "m2.0"), false},
		{d("globex", "m1", "m1.0"), false},
	} {
		got, err := cancelled.Is(ctx, rdb, c.d)
		if err != nil || got != c.want {
			t.Errorf("Is(%s/%s) = %v, %v; want %v", c.d.GetTenantId(), c.d.GetDeliveryId(), got, err, c.want)
		}
	}
	if ttl := rdb.TTL(ctx, cancelled.Key("acme", "m1")).Val(); ttl <= 6*24*time.Hour || ttl > cancelled.TTL {
		t.Errorf("marker TTL %v, want the default %v", ttl, cancelled.TTL)
	}
	e := cancelled.Event(d("acme", "m1", "m1.0"), "quota", time.Now())
	if e.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED || e.GetReason() != cancelled.Reason ||
		e.GetEventId() == "" || e.GetDeliveryId() != "m1.0" || len(e.GetRecipients()) != 1 {
		t.Errorf("event %v", e)
	}
}
