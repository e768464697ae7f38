package tracker_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/tracker"
)

// TestTracker_countsRecipientOutcomesByStageStatusAndReasonOnce publishes
// events of several stages, one of them twice (a redelivery), and checks
// the outcome counts: recipients per stage, status and reason, the
// redelivered event once, a warning under its name, and a reason that is
// not a code under "other".
func TestTracker_countsRecipientOutcomesByStageStatusAndReasonOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testkit.BusConfig(testkit.StartBroker(t))
	db, err := sqlstore.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "messages.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := prometheus.NewRegistry()
	trk, err := tracker.New(ctx, tracker.Config{Bus: cfg}, tracker.Deps{Log: slog.New(slog.DiscardHandler), Metrics: reg, DB: db})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- trk.Run(ctx) }()
	defer func() { cancel(); <-done }()

	pub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ev := func(id, stage string, status mailbusv1.DeliveryStatus, reason string, rcpts ...string) *mailbusv1.DeliveryEvent {
		return &mailbusv1.DeliveryEvent{
			EventId: id, TenantId: "acme", MessageId: "m1", DeliveryId: "d1", Stage: stage,
			Status: status, Reason: reason, Recipients: rcpts,
		}
	}
	deferred := ev("e2", "sender", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "mailbox_full", "b@example.net", "c@example.net")
	warning := ev("e5", "sender", mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED, "relay_disabled")
	warning.Warning = "relay_disabled"
	// A warning about a domain, not a message: counted, not rejected.
	domainWarning := &mailbusv1.DeliveryEvent{EventId: "e6", TenantId: "acme", Stage: "config",
		Reason: "domain_dns_error", Warning: "domain_dns_error", Detail: "acme.example: dkim s1._domainkey.acme.example was right and is now wrong"}
	for _, e := range []*mailbusv1.DeliveryEvent{
		ev("e1", "sender", mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, "", "a@example.net"),
		deferred,
		deferred, // redelivered
		ev("e3", "quota", mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "tenant_daily_limit", "d@example.net"),
		ev("e4", "bounce", mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "Mailbox Unavailable!", "e@example.net"),
		warning,
		domainWarning,
	} {
		if err := bus.Publish(pub, bus.TopicEvents, e, nil); err != nil {
			t.Fatal(err)
		}
	}

	want := `
# HELP mailbus_tracker_recipient_outcomes_total Recipients of recorded events, by stage, status (sent, deferred, bounced, failed, ...) and reason.
# TYPE mailbus_tracker_recipient_outcomes_total counter
mailbus_tracker_recipient_outcomes_total{reason="",stage="sender",status="sent"} 1
mailbus_tracker_recipient_outcomes_total{reason="domain_dns_error",stage="config",status="warning"} 1
mailbus_tracker_recipient_outcomes_total{reason="mailbox_full",stage="sender",status="deferred"} 2
mailbus_tracker_recipient_outcomes_total{reason="other",stage="bounce",status="bounced"} 1
mailbus_tracker_recipient_outcomes_total{reason="relay_disabled",stage="sender",status="warning"} 1
mailbus_tracker_recipient_outcomes_total{reason="tenant_daily_limit",stage="quota",status="deferred"} 1
`
	// Wait until all seven records are handled (the duplicate included),
	// then compare.
	deadline := time.Now().Add(60 * time.Second)
	for {
		applied := eventsHandled(t, reg, "applied")
		dup := eventsHandled(t, reg, "duplicate")
		other := eventsHandled(t, reg, "not_a_message")
		if applied+dup+other >= 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tracker handled %v applied, %v duplicate and %v not-a-message events, want 7 in all", applied, dup, other)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "mailbus_tracker_recipient_outcomes_total"); err != nil {
		t.Fatal(err)
	}
	if n := eventsHandled(t, reg, "rejected"); n != 0 {
		t.Errorf("%v events rejected (poisoned), want none", n)
	}
}

// eventsHandled returns mailbus_tracker_events_total{result}, zero while
// it does not exist.
func eventsHandled(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mailbus_tracker_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
