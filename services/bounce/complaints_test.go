package bounce

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/complaints"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestService_aComplaintCountsOnceTowardsItsTenantsComplaintRateOfTheDay(t *testing.T) {
	ctx := context.Background()
	addr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	tenant := &mailbusv1.Tenant{Id: "acme", BounceDomain: "bounce.acme.example", TimeZone: "Asia/Tokyo"}
	tenants := staticTenants{"acme": tenant}
	// 16:30 UTC on 10 March is 01:30 on 11 March in Tokyo.
	now := time.Date(2026, 3, 10, 16, 30, 0, 0, time.UTC)
	s := New(Config{VERPKeys: [][]byte{testKey}, FeedbackAddresses: map[string]string{"fbl@acme.example": "acme"}},
		Deps{Directory: tenants, Tenants: tenants, Suppressions: suppress.New(rdb), Redis: rdb, Publisher: &recorder{},
			Now: func() time.Time { return now }})

	report := func(rcpt string) []byte {
		verp, err := mail.VERPEncode(testKey, "acme", "m0000000000000000000000001.0", rcpt, "bounce.acme.example")
		if err != nil {
			t.Fatal(err)
		}
		return []byte(complaint(rcpt, verp, "m0000000000000000000000001"))
	}
	fbl := []target{{tenant: tenant}}
	// The same report twice (an MTA retrying after a 4xx), then another
	// recipient's complaint about the same message.
	for _, raw := range [][]byte{report("dave@example.net"), report("dave@example.net"), report("erin@example.net")} {
		res, err := s.Process(ctx, fbl, raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Events) != 1 || res.Events[0].GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED {
			t.Fatalf("want one complaint event per report, got %+v", res)
		}
	}
	st, err := complaints.Today(ctx, rdb, "acme", limits.Zone("Asia/Tokyo"), now)
	if err != nil {
		t.Fatal(err)
	}
	if st.Day != "2026-03-11" || st.Complaints != 2 {
		t.Errorf("counters %+v, want 2 complaints on 2026-03-11 (Tokyo's day): dave's report once, erin's once", st)
	}
	// A hard bounce is not a complaint.
	bounced := []target{{tenant: tenant, deliveryID: "m0000000000000000000000002.0", rcptHash: mail.RecipientHash("frank@example.net")}}
	if res, err := s.Process(ctx, bounced, []byte(hardBounce("frank@example.net"))); err != nil || len(res.Events) != 1 {
		t.Fatalf("hard bounce: %+v, %v; want one event", res, err)
	}
	if st, _ := complaints.Today(ctx, rdb, "acme", limits.Zone("Asia/Tokyo"), now); st.Complaints != 2 {
		t.Errorf("after a hard bounce: %d complaints, want 2", st.Complaints)
	}
}
