package quota_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/complaints"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/services/quota"
)

// submissions collects what quota publishes to mail.submit (its notices).
type submissions struct {
	mu   sync.Mutex
	subs []*mailbusv1.Submission
	seen map[string]bool
}

func (s *submissions) all() []*mailbusv1.Submission {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*mailbusv1.Submission(nil), s.subs...)
}

// watchSubmissions reads mail.submit from its start.
func (h *harness) watchSubmissions() *submissions {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	sub, err := bus.NewSubscriber(h.bus, "test."+bus.TopicSubmit, testLog(h.t))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { sub.Close() })
	ch, err := sub.Subscribe(ctx, bus.TopicSubmit)
	if err != nil {
		h.t.Fatal(err)
	}
	out := &submissions{seen: map[string]bool{}}
	go func() {
		for m := range ch {
			s := &mailbusv1.Submission{}
			err := bus.Decode(m, s)
			m.Ack()
			if err != nil {
				h.t.Errorf("decode a record of %s: %v", bus.TopicSubmit, err)
				continue
			}
			out.mu.Lock()
			if !out.seen[m.UUID] {
				out.seen[m.UUID] = true
				out.subs = append(out.subs, s)
			}
			out.mu.Unlock()
		}
	}()
	return out
}

// setComplaints puts a tenant's counters of today (by the harness's clock)
// where a test wants them, as the bounce stage and the sender would have.
func (h *harness) setComplaints(tenant *mailbusv1.Tenant, reports, delivered int) {
	h.t.Helper()
	ctx := context.Background()
	loc := limits.Zone(tenant.GetTimeZone())
	for i := range reports {
		if _, err := complaints.AddComplaint(ctx, h.rdb, tenant.GetId(), loc, fmt.Sprintf("m%d/r@example.net", i), h.clock.Now()); err != nil {
			h.t.Fatal(err)
		}
	}
	if _, err := h.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		complaints.CountDelivered(ctx, p, tenant.GetId(), loc, delivered, h.clock.Now())
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
}

func kindOf(d *mailbusv1.Delivery, kind mailbusv1.EmailKind) *mailbusv1.Delivery {
	d.Kind = kind
	return d
}

func complaintTenant() *mailbusv1.Tenant {
	return &mailbusv1.Tenant{
		Id: "acme", Name: "Acme", TimeZone: "Europe/Berlin", DailyLimit: 100,
		AdminEmails: []string{"ops@acme.example", "boss@acme.example"}, DefaultFrom: "noreply", DomainAlias: "acme.example",
	}
}

func TestQuota_complaintRateOverTheLimitDefersMassMailToMidnightWarnsAdminsOnceAndLetsTransactionalMailThrough(t *testing.T) {
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			tenant := complaintTenant()
			h := newHarness(t, tenant, massRelay("mass", 0))
			subs := h.watchSubmissions()
			// 21 complaints on 5,000 delivered mass messages: 0.42%.
			h.setComplaints(tenant, 21, 5000)
			for range replicas {
				h.startQuota(quota.Config{})
			}

			mass1, mass2 := delivery("acme", "m1.0", "mass", 2), delivery("acme", "m2.0", "", 1)
			txn := kindOf(delivery("acme", "m3.0", "mass", 1), mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL)
			h.publish(mass1, mass2, txn)
			// Paused deliveries come out under the next day's ids: wait
			// for their events below.
			h.waitDecided(txn)
			if h.count(bus.TopicAdmitted, "m3.0") != 1 {
				t.Fatalf("transactional mail should be admitted while mass mail is paused: %s", h.dump())
			}
			// Berlin's next midnight after 10:00 on 10 March.
			midnight := time.Date(2026, 3, 11, 0, 0, 0, 0, limits.Zone("Europe/Berlin"))
			for _, d := range []*mailbusv1.Delivery{mass1, mass2} {
				if h.count(bus.TopicAdmitted, d.GetDeliveryId()) != 0 {
					t.Errorf("mass delivery %s admitted although the tenant is over the complaint rate: %s", d.GetDeliveryId(), h.dump())
				}
				ev := h.waitEventsFor(d.GetDeliveryId(), mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, 1)
				if ev[0].GetReason() != complaints.Reason {
					t.Errorf("deferred event of %s has reason %q, want %q", d.GetDeliveryId(), ev[0].GetReason(), complaints.Reason)
				}
				for _, want := range []string{
					"tenant acme's complaint rate on 2026-03-10 is 0.42% (21 complaints / 5,000 delivered mass messages), over the 0.30% limit",
					"mass mail is paused until " + midnight.Format(time.RFC3339),
					"transactional mail still flows",
					"deferred as delivery " + d.GetDeliveryId() + ".d20260311",
				} {
					if !strings.Contains(ev[0].GetDetail(), want) {
						t.Errorf("deferred event detail %q lacks %q", ev[0].GetDetail(), want)
					}
				}
			}
			retried := distinctIDs(h.retried())
			if !retried["m1.0.d20260311"] || !retried["m2.0.d20260311"] {
				t.Errorf("paused mass mail should wait on a retry topic as the next day's deliveries; retried %v", retried)
			}
			// The paused deliveries count against no limit; the
			// transactional one does.
			if u := h.usage(tenant, "mass"); u.Tenant != 1 || u.Relay != 1 {
				t.Errorf("usage %+v, want tenant 1 and relay 1: only the transactional recipient", u)
			}

			// One notice, however many replicas and paused deliveries: every
			// copy has the same idempotency id, so the router makes one
			// message of them.
			notices := subs.all()
			if len(notices) == 0 {
				// The notice is published before the deferred events the
				// test has seen, but read by another consumer.
				h.wait("the administrators' notice", func() bool { return len(subs.all()) > 0 })
				notices = subs.all()
			}
			for _, n := range notices {
				if n.GetIdempotencyId() != "complaint-rate/acme/2026-03-10" {
					t.Errorf("notice idempotency id %q, want complaint-rate/acme/2026-03-10", n.GetIdempotencyId())
				}
			}
			n := notices[0]
			if n.GetKind() != mailbusv1.EmailKind_EMAIL_KIND_SYSTEM || n.GetMetadata()["mailbus_notice"] != complaints.Reason ||
				len(n.GetTo()) != 2 || n.GetTo()[0].GetEmail() != "ops@acme.example" || n.GetFrom().GetEmail() != "noreply@acme.example" {
				t.Errorf("notice: kind %v, metadata %v, to %v, from %v; want a system notice from noreply@acme.example to both administrators",
					n.GetKind(), n.GetMetadata(), n.GetTo(), n.GetFrom())
			}
			if !strings.Contains(n.GetSubject(), "paused") || !strings.Contains(n.GetTextBody(), "0.42% (21 complaints / 5,000 delivered mass messages)") ||
				!strings.Contains(n.GetTextBody(), "Transactional mail still flows") {
				t.Errorf("notice does not say what happened: %q\n%s", n.GetSubject(), n.GetTextBody())
			}

			// The administrators were warned today: another paused
			// delivery submits no notice.
			before := len(subs.all())
			mass3 := delivery("acme", "m4.0", "mass", 1)
			h.publish(mass3)
			h.waitEventsFor("m4.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, 1)
			if after := len(subs.all()); after != before {
				t.Errorf("a delivery paused after the warning submitted %d more notices, want none", after-before)
			}

			// The next day starts from zero: mass mail flows again.
			h.clock.Set(midnight.Add(time.Minute))
			next := delivery("acme", "m5.0", "mass", 1)
			h.publish(next)
			h.waitDecided(next)
			if h.count(bus.TopicAdmitted, "m5.0") != 1 {
				t.Errorf("mass mail of a new day should be admitted: %s", h.dump())
			}
		})
	}
}

func TestQuota_massMailUnderTheComplaintLimitOrBelowTheMinimumVolumeIsAdmitted(t *testing.T) {
	tests := []struct {
		name               string
		policy             complaints.Policy
		reports, delivered int
		wantAdmitted       bool
	}{
		{name: "0.3% exactly is not over", reports: 15, delivered: 5000, wantAdmitted: true},
		{name: "three complaints on ten messages is below the minimum volume", reports: 3, delivered: 10, wantAdmitted: true},
		{name: "the guardrail off", policy: complaints.Policy{Off: true}, reports: 500, delivered: 1000, wantAdmitted: true},
		{name: "a lower minimum volume counts ten messages", policy: complaints.Policy{MinVolume: 10}, reports: 3, delivered: 10, wantAdmitted: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant := complaintTenant()
			h := newHarness(t, tenant)
			h.setComplaints(tenant, tt.reports, tt.delivered)
			h.startQuota(quota.Config{Complaints: tt.policy})
			d := delivery("acme", "m1.0", "", 1)
			h.publish(d)
			h.wait("m1.0 to be admitted or deferred", func() bool {
				return h.count(bus.TopicAdmitted, "m1.0") > 0 || len(h.eventsFor("m1.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)) > 0
			})
			if got := h.count(bus.TopicAdmitted, "m1.0") == 1; got != tt.wantAdmitted {
				t.Errorf("admitted %v, want %v: %s", got, tt.wantAdmitted, h.dump())
			}
		})
	}
}

// A record redelivered after quota admitted it (a crash before the offset
// commit) is on its way to SMTP already: the tenant crossing the rate in
// between must not defer a second copy of it.
func TestQuota_aMassDeliveryAdmittedBeforeThePauseIsAdmittedAgainWhenRedelivered(t *testing.T) {
	tenant := complaintTenant()
	h := newHarness(t, tenant)
	h.startQuota(quota.Config{})
	d := delivery("acme", "m1.0", "", 1)
	h.publish(d)
	h.waitDecided(d)
	h.setComplaints(tenant, 21, 5000)
	h.publish(d)
	h.wait("the redelivered record to be admitted again", func() bool { return h.count(bus.TopicAdmitted, "m1.0") == 2 })
	if ev := h.eventsFor("m1.0", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED); len(ev) != 0 {
		t.Errorf("redelivered admitted record deferred: %v", ev)
	}
}
