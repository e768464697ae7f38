package complaints_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestPolicy_overTakesTheRateOverAtLeastTheMinimumVolume(t *testing.T) {
	tests := []struct {
		name   string
		policy complaints.Policy
		stats  complaints.Stats
		over   bool
	}{
		{"no complaint", complaints.Policy{}, complaints.Stats{Delivered: 5000}, false},
		{"exactly at the limit is not over", complaints.Policy{}, complaints.Stats{Complaints: 15, Delivered: 5000}, false},
		{"just over the limit", complaints.Policy{}, complaints.Stats{Complaints: 16, Delivered: 5000}, true},
		{"0.42% of a big day", complaints.Policy{}, complaints.Stats{Complaints: 21, Delivered: 5000}, true},
		{"one complaint on ten messages of a new tenant", complaints.Policy{}, complaints.Stats{Complaints: 1, Delivered: 10}, false},
		{"three complaints on a small day", complaints.Policy{}, complaints.Stats{Complaints: 3, Delivered: 10}, false},
		{"the fourth complaint on a small day", complaints.Policy{}, complaints.Stats{Complaints: 4, Delivered: 10}, true},
		{"complaints before any mass mail today", complaints.Policy{}, complaints.Stats{Complaints: 4}, true},
		{"a tenant's own limit", complaints.Policy{Limit: 0.01}, complaints.Stats{Complaints: 21, Delivered: 5000}, false},
		{"a smaller minimum volume", complaints.Policy{MinVolume: 100}, complaints.Stats{Complaints: 1, Delivered: 10}, true},
		{"off", complaints.Policy{Off: true}, complaints.Stats{Complaints: 500, Delivered: 1000}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.policy.Over(tt.stats); got != tt.over {
				t.Errorf("Over(%+v) = %v, want %v", tt.stats, got, tt.over)
			}
		})
	}
}

func TestPolicy_describeSaysTheRateTheCountsAndTheLimit(t *testing.T) {
	got := complaints.Policy{}.Describe("acme", complaints.Stats{Day: "2026-03-10", Complaints: 21, Delivered: 5000})
	want := "tenant acme's complaint rate on 2026-03-10 is 0.42% (21 complaints / 5,000 delivered mass messages), over the 0.30% limit"
	if got != want {
		t.Errorf("Describe:\n got %q\nwant %q", got, want)
	}
	small := complaints.Policy{}.Describe("acme", complaints.Stats{Day: "2026-03-10", Complaints: 4, Delivered: 10})
	if !strings.Contains(small, "taken over at least 1,000 messages") {
		t.Errorf("Describe of a small day should say the minimum volume it was taken over: %q", small)
	}
}

func TestPolicyFromEnv(t *testing.T) {
	tests := []struct {
		env     map[string]string
		want    complaints.Policy
		wantErr bool
	}{
		{env: nil, want: complaints.Policy{}},
		{env: map[string]string{"MAILBUS_COMPLAINT_RATE_LIMIT": "0.001"}, want: complaints.Policy{Limit: 0.001}},
		{env: map[string]string{"MAILBUS_COMPLAINT_RATE_LIMIT": "0.5%"}, want: complaints.Policy{Limit: 0.005}},
		{env: map[string]string{"MAILBUS_COMPLAINT_RATE_LIMIT": "off"}, want: complaints.Policy{Off: true}},
		{env: map[string]string{"MAILBUS_COMPLAINT_MIN_VOLUME": "5000"}, want: complaints.Policy{MinVolume: 5000}},
		{env: map[string]string{"MAILBUS_COMPLAINT_RATE_LIMIT": "3"}, wantErr: true},
		{env: map[string]string{"MAILBUS_COMPLAINT_RATE_LIMIT": "lots"}, wantErr: true},
		{env: map[string]string{"MAILBUS_COMPLAINT_MIN_VOLUME": "-1"}, wantErr: true},
	}
	for _, tt := range tests {
		got, err := complaints.PolicyFromEnv(func(k string) string { return tt.env[k] })
		if (err != nil) != tt.wantErr {
			t.Errorf("PolicyFromEnv(%v) error %v, want error %v", tt.env, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("PolicyFromEnv(%v) = %+v, want %+v", tt.env, got, tt.want)
		}
	}
}

func TestCounters_aComplaintCountsOncePerMessageAndRecipientOnTheTenantsDay(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { rdb.Close() })
	loc := limits.Zone("America/New_York")
	// 03:30 UTC on the 11th is still the 10th in New York.
	at := time.Date(2026, 3, 11, 3, 30, 0, 0, time.UTC)

	for i, id := range []string{"m1/bob@example.net", "m1/bob@example.net", "m2/bob@example.net", "m1/carol@example.net"} {
		added, err := complaints.AddComplaint(ctx, rdb, "acme", loc, id, at)
		if err != nil {
			t.Fatal(err)
		}
		if want := i != 1; added != want {
			t.Errorf("complaint %d (%s): added %v, want %v", i, id, added, want)
		}
	}
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		complaints.CountDelivered(ctx, p, "acme", loc, 700, at)
		complaints.CountDelivered(ctx, p, "acme", loc, 300, at)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s, err := complaints.Today(ctx, rdb, "acme", loc, at)
	if err != nil {
		t.Fatal(err)
	}
	if want := (complaints.Stats{Day: "2026-03-10", Complaints: 3, Delivered: 1000}); s != want {
		t.Errorf("Today = %+v, want %+v", s, want)
	}
	// The next day in New York starts from zero, and another tenant never
	// had any.
	if s, err := complaints.Today(ctx, rdb, "acme", loc, at.Add(24*time.Hour)); err != nil || s.Complaints != 0 || s.Delivered != 0 {
		t.Errorf("next day: %+v, %v; want zero counters", s, err)
	}
	if s, err := complaints.Today(ctx, rdb, "globex", loc, at); err != nil || s.Complaints != 0 || s.Delivered != 0 {
		t.Errorf("other tenant: %+v, %v; want zero counters", s, err)
	}
	for _, k := range []string{complaints.ComplaintsKey("acme", "2026-03-10"), complaints.DeliveredKey("acme", "2026-03-10")} {
		if ttl := rdb.TTL(ctx, k).Val(); ttl <= 0 || ttl > 3*24*time.Hour {
			t.Errorf("key %s expires in %v, want within the day and two more", k, ttl)
		}
	}

	if w, err := complaints.Warned(ctx, rdb, "acme", "2026-03-10"); err != nil || w {
		t.Fatalf("Warned before any warning: %v, %v", w, err)
	}
	if err := complaints.MarkWarned(ctx, rdb, "acme", loc, at); err != nil {
		t.Fatal(err)
	}
	if w, err := complaints.Warned(ctx, rdb, "acme", "2026-03-10"); err != nil || !w {
		t.Fatalf("Warned after MarkWarned: %v, %v", w, err)
	}
}
