package sender_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// The complaint rate's denominator is the tenant's delivered mass mail:
// each mass recipient a relay accepted, once, and nothing else.
func TestSender_countsDeliveredMassRecipientsOnceAndNotTransactionalOrRefusedOnes(t *testing.T) {
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyToRcpt("gone@dest.example",
		testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "no such user"})))
	tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Pacific/Auckland", Active: true}
	cfg := staticConfig{tenant: tenant, relays: map[string]*configclient.RelayWithSecrets{"r1": relayTo("r1", srv, 4)}}

	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	mk := func(id string, kind mailbusv1.EmailKind, rcpts ...string) *mailbusv1.Delivery {
		return &mailbusv1.Delivery{
			TenantId: "acme", MessageId: "m1", DeliveryId: id, Attempt: 1, Kind: kind, QueueTime: timestamppb.Now(),
			Envelope: &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: rcpts},
			Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, RelayId: "r1"},
			Message:  []byte("From: <news@acme.example>\r\nSubject: news\r\n\r\nhello\r\n"),
		}
	}
	mass := mailbusv1.EmailKind_EMAIL_KIND_MASS
	ds := []*mailbusv1.Delivery{
		mk("m1.0", mass, "a@dest.example"),
		mk("m1.1", mass, "b@dest.example", "c@dest.example"),
		mk("m1.2", mass, "d@dest.example", "gone@dest.example"),
		mk("m1.3", mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL, "e@dest.example"),
		// A copy of m1.0 (a redelivered record): skipped, not counted.
		mk("m1.0", mass, "a@dest.example"),
	}
	for _, d := range ds {
		if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	loc := limits.Zone(tenant.GetTimeZone())
	startDay := limits.DayKey(time.Now(), loc)
	reg := startSender(t, busCfg, rdb, cfg)

	// The count is written in the transaction that marks each attempt
	// done: once every attempt is marked and the copy skipped, it is final.
	ctx := context.Background()
	testkit.Eventually(t, time.Minute, func() bool {
		for _, id := range []string{"m1.0", "m1.1", "m1.2", "m1.3"} {
			if rdb.Exists(ctx, "mb:sent:{acme}:"+id+":1").Val() == 0 {
				return false
			}
		}
		return counterValue(t, reg, "mailbus_sender_attempts_already_made_total") == 1
	}, "every attempt to be made and the copy of m1.0 skipped")
	// Counted on Auckland's day; a test that runs across its midnight
	// finds the count split over two days.
	var delivered int64
	for _, day := range uniq(startDay, limits.DayKey(time.Now(), loc)) {
		n, _ := rdb.Get(ctx, complaints.DeliveredKey("acme", day)).Int64()
		delivered += n
	}
	if delivered != 4 {
		t.Errorf("delivered mass mail %d, want 4: a, b, c and d (not gone@, refused; not e@, transactional; not the copy)", delivered)
	}
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}
