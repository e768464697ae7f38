package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// t0 is the base of event times in these tests; at(n) is n seconds later.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

const (
	queued     = mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED
	sent       = mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT
	deferred   = mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED
	bounced    = mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
	failed     = mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED
	suppressed = mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED
	cancelled  = mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED
	complained = mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED
	none       = mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED
)

// backends opens a fresh, migrated store for each implementation: SQLite in
// a temporary file always, PostgreSQL in a fresh schema (skipped when it is
// not reachable, outside CI).
var backends = []struct {
	name string
	open func(t testing.TB) *sqlstore.DB
}{
	{"sqlite", func(t testing.TB) *sqlstore.DB {
		return openDB(t, filepath.Join(t.TempDir(), "tracker.db"))
	}},
	{"postgres", func(t testing.TB) *sqlstore.DB {
		return openDB(t, testkit.Postgres(t))
	}},
}

func openDB(t testing.TB, url string) *sqlstore.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := store.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	return db
}

// forEachBackend runs the contract suite's test body against every store.
func forEachBackend(t *testing.T, body func(t *testing.T, s *store.Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			db := b.open(t)
			body(t, store.New(db, store.WithClock(func() time.Time { return at(1000) })))
		})
	}
}

// ev builds an event; opts adjust it.
func ev(id, msg string, status mailbusv1.DeliveryStatus, sec int, rcpts ...string) *mailbusv1.DeliveryEvent {
	return &mailbusv1.DeliveryEvent{
		EventId:    id,
		TenantId:   "t1",
		UserId:     "u1",
		MessageId:  msg,
		Recipients: rcpts,
		Status:     status,
		Stage:      "sender",
		OccurTime:  timestamppb.New(at(sec)),
	}
}

func with(e *mailbusv1.DeliveryEvent, f func(e *mailbusv1.DeliveryEvent)) *mailbusv1.DeliveryEvent {
	f(e)
	return e
}

func summary(rcpts ...string) *mailbusv1.MessageSummary {
	return &mailbusv1.MessageSummary{From: "news@acme.example", Subject: "Hello", Recipients: rcpts,
		Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS}
}

func mustApply(t *testing.T, s *store.Store, evs ...*mailbusv1.DeliveryEvent) {
	t.Helper()
	for _, e := range evs {
		if _, err := s.Apply(context.Background(), e); err != nil {
			t.Fatalf("Apply(%s): %v", e.GetEventId(), err)
		}
	}
}

func mustMessage(t *testing.T, s *store.Store, id string) *mailbusv1.Message {
	t.Helper()
	m, err := s.Message(context.Background(), id)
	if err != nil {
		t.Fatalf("Message(%q): %v", id, err)
	}
	return m
}

func recipientOf(t *testing.T, m *mailbusv1.Message, addr string) *mailbusv1.RecipientState {
	t.Helper()
	for _, r := range m.GetRecipients() {
		if r.GetAddress() == addr {
			return r
		}
	}
	t.Fatalf("message %s has no recipient %s; has %v", m.GetId(), addr, m.GetRecipients())
	return nil
}

// clone copies an event, renaming it and its message so that the same
// scenario can run several times in one store.
func clone(e *mailbusv1.DeliveryEvent, prefix string) *mailbusv1.DeliveryEvent {
	c := proto.Clone(e).(*mailbusv1.DeliveryEvent)
	c.EventId = prefix + c.EventId
	c.MessageId = prefix + c.MessageId
	return c
}

func TestStore_statusPrecedence(t *testing.T) {
	hard := func(e *mailbusv1.DeliveryEvent) { e.Permanent = true; e.Stage = "bounce"; e.Reason = "userunknown" }
	soft := func(e *mailbusv1.DeliveryEvent) {
		e.Permanent = false
		e.Stage = "bounce"
		e.Reason = "mailbox_full"
		e.Detail = "over quota"
	}
	retry := func(e *mailbusv1.DeliveryEvent) { e.Stage = store.StageTracker; e.Reason = store.ReasonRetryRequested }
	tests := []struct {
		name       string
		events     []*mailbusv1.DeliveryEvent // in arrival order
		want       mailbusv1.DeliveryStatus
		wantReason string
		wantDetail string
	}{
		{"sent before queued stays sent", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 2, "a"), ev("q", "m", queued, 1),
		}, sent, "", ""},
		{"deferred never overrides sent", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 2, "a"), ev("d", "m", deferred, 3, "a"),
		}, sent, "", ""},
		{"sent overrides deferred", []*mailbusv1.DeliveryEvent{
			ev("d", "m", deferred, 1, "a"), ev("s", "m", sent, 2, "a"),
		}, sent, "", ""},
		{"later transient wins between transients", []*mailbusv1.DeliveryEvent{
			ev("d", "m", deferred, 1, "a"), ev("q", "m", queued, 2, "a"),
		}, queued, "", ""},
		{"hard bounce after sent becomes bounced", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 1, "a"), with(ev("b", "m", bounced, 2, "a"), hard),
		}, bounced, "userunknown", ""},
		{"sent never overrides a bounce even when stamped later", []*mailbusv1.DeliveryEvent{
			with(ev("b", "m", bounced, 2, "a"), hard), ev("s", "m", sent, 3, "a"),
		}, bounced, "userunknown", ""},
		{"soft bounce after sent keeps sent with a note", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 1, "a"), with(ev("b", "m", bounced, 2, "a"), soft),
		}, sent, "mailbox_full", "soft bounce after delivery: over quota"},
		{"soft bounce without sent is deferred", []*mailbusv1.DeliveryEvent{
			ev("q", "m", queued, 1), with(ev("b", "m", bounced, 2, "a"), soft),
		}, deferred, "mailbox_full", "over quota"},
		{"complaint after bounce: later final wins", []*mailbusv1.DeliveryEvent{
			with(ev("b", "m", bounced, 2, "a"), hard), ev("c", "m", complained, 3, "a"),
		}, complained, "", ""},
		{"two final states: later occur_time wins", []*mailbusv1.DeliveryEvent{
			ev("f", "m", failed, 1, "a"), ev("x", "m", suppressed, 2, "a"),
		}, suppressed, "", ""},
		{"same occur_time: larger event_id wins", []*mailbusv1.DeliveryEvent{
			ev("y", "m", failed, 1, "a"), ev("x", "m", suppressed, 1, "a"),
		}, failed, "", ""},
		{"cancel never overrides a final state", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 1, "a"), ev("c", "m", cancelled, 2, "a"),
		}, sent, "", ""},
		{"cancel overrides queued", []*mailbusv1.DeliveryEvent{
			ev("q", "m", queued, 1, "a"), ev("c", "m", cancelled, 2, "a"),
		}, cancelled, "", ""},
		{"sent after cancel wins: it really left", []*mailbusv1.DeliveryEvent{
			ev("q", "m", queued, 1, "a"), ev("c", "m", cancelled, 2, "a"), ev("s", "m", sent, 3, "a"),
		}, sent, "", ""},
		{"retry puts failed back to queued", []*mailbusv1.DeliveryEvent{
			ev("f", "m", failed, 1, "a"), with(ev("r", "m", queued, 2, "a"), retry),
		}, queued, store.ReasonRetryRequested, ""},
		{"retry puts deferred back to queued", []*mailbusv1.DeliveryEvent{
			ev("d", "m", deferred, 1, "a"), with(ev("r", "m", queued, 2, "a"), retry),
		}, queued, store.ReasonRetryRequested, ""},
		{"retry leaves sent alone", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 1, "a"), with(ev("r", "m", queued, 2, "a"), retry),
		}, sent, "", ""},
		{"retry then sent", []*mailbusv1.DeliveryEvent{
			ev("f", "m", failed, 1, "a"), with(ev("r", "m", queued, 2, "a"), retry), ev("s", "m", sent, 3, "a"),
		}, sent, "", ""},
		{"failure from before the retry arriving late keeps the retry", []*mailbusv1.DeliveryEvent{
			ev("d", "m", deferred, 1, "a"), with(ev("r", "m", queued, 3, "a"), retry), ev("f", "m", failed, 2, "a"),
		}, queued, store.ReasonRetryRequested, ""},
		{"a non-tracker queued does not reset a failure", []*mailbusv1.DeliveryEvent{
			ev("f", "m", failed, 1, "a"), ev("q", "m", queued, 2, "a"),
		}, failed, "", ""},
		{"warnings change nothing", []*mailbusv1.DeliveryEvent{
			ev("s", "m", sent, 1, "a"), with(ev("w", "m", none, 2, "a"), func(e *mailbusv1.DeliveryEvent) { e.Warning = "relay_disabled" }),
		}, sent, "", ""},
	}
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		for i, tt := range tests {
			for _, order := range []string{"arrival", "reversed"} {
				t.Run(tt.name+"/"+order, func(t *testing.T) {
					prefix := fmt.Sprintf("prec%02d-%s-", i, order)
					evs := slices.Clone(tt.events)
					if order == "reversed" {
						slices.Reverse(evs)
					}
					for _, e := range evs {
						mustApply(t, s, clone(e, prefix))
					}
					r := recipientOf(t, mustMessage(t, s, prefix+"m"), "a")
					if r.GetStatus() != tt.want || r.GetReason() != tt.wantReason || r.GetDetail() != tt.wantDetail {
						t.Errorf("recipient a = %v reason %q detail %q; want %v reason %q detail %q",
							r.GetStatus(), r.GetReason(), r.GetDetail(), tt.want, tt.wantReason, tt.wantDetail)
					}
				})
			}
		}
	})
}

// scenario is a message with three recipients whose events, in any order,
// must end in: a bounced, b queued, c sent with a soft-bounce note.
func scenario() []*mailbusv1.DeliveryEvent {
	return []*mailbusv1.DeliveryEvent{
		with(ev("q", "m", queued, 1), func(e *mailbusv1.DeliveryEvent) {
			e.Stage = "router"
			e.Summary = summary("a@x.example", "B@X.example", "c@x.example")
		}),
		with(ev("sa", "m", sent, 3, "a@x.example"), func(e *mailbusv1.DeliveryEvent) {
			e.RelayId, e.DeliveryId, e.Attempt = "relay1", "d1", 1
			e.Reply = &mailbusv1.SmtpReply{Code: 250, EnhancedCode: "2.0.0", Text: "queued as 42"}
		}),
		with(ev("ba", "m", bounced, 5, "A@x.example"), func(e *mailbusv1.DeliveryEvent) {
			e.Stage, e.Permanent, e.Reason = "bounce", true, "userunknown"
			e.Reply = &mailbusv1.SmtpReply{Code: 550, EnhancedCode: "5.1.1", Text: "no such user"}
		}),
		with(ev("sc", "m", sent, 4, "c@x.example"), func(e *mailbusv1.DeliveryEvent) {
			e.RelayId, e.DeliveryId, e.Attempt = "relay2", "d2", 2
		}),
		with(ev("bc", "m", bounced, 6, "c@x.example"), func(e *mailbusv1.DeliveryEvent) {
			e.Stage, e.Reason, e.Detail = "bounce", "mailbox_full", "try later"
		}),
	}
}

func TestStore_outOfOrderEventsEndInTheSameState(t *testing.T) {
	var perms [][]int
	var permute func(prefix, rest []int)
	permute = func(prefix, rest []int) {
		if len(rest) == 0 {
			perms = append(perms, slices.Clone(prefix))
			return
		}
		for i := range rest {
			next := slices.Concat(rest[:i:i], rest[i+1:])
			permute(append(prefix, rest[i]), next)
		}
	}
	permute(nil, []int{0, 1, 2, 3, 4})

	forEachBackend(t, func(t *testing.T, s *store.Store) {
		base := scenario()
		for n, perm := range perms {
			prefix := fmt.Sprintf("perm%03d-", n)
			for _, i := range perm {
				mustApply(t, s, clone(base[i], prefix))
			}
			m := mustMessage(t, s, prefix+"m")
			if m.GetStatus() != queued {
				t.Fatalf("order %v: message status %v, want queued (b is still queued)", perm, m.GetStatus())
			}
			if m.GetSummary().GetSubject() != "Hello" || len(m.GetHistory()) != 5 {
				t.Fatalf("order %v: summary %v, %d history events", perm, m.GetSummary(), len(m.GetHistory()))
			}
			a, b, c := recipientOf(t, m, "a@x.example"), recipientOf(t, m, "b@x.example"), recipientOf(t, m, "c@x.example")
			if a.GetStatus() != bounced || a.GetReason() != "userunknown" || a.GetReply().GetEnhancedCode() != "5.1.1" ||
				a.GetRelayId() != "relay1" || a.GetDeliveryId() != "d1" || a.GetAttempts() != 1 ||
				!a.GetUpdateTime().AsTime().Equal(at(5)) {
				t.Fatalf("order %v: a = %v", perm, a)
			}
			if b.GetStatus() != queued || !b.GetUpdateTime().AsTime().Equal(at(1)) {
				t.Fatalf("order %v: b = %v", perm, b)
			}
			if c.GetStatus() != sent || c.GetReason() != "mailbox_full" || c.GetDetail() != "soft bounce after delivery: try later" ||
				c.GetRelayId() != "relay2" || c.GetAttempts() != 2 {
				t.Fatalf("order %v: c = %v", perm, c)
			}
			if !m.GetCreateTime().AsTime().Equal(at(1)) || !m.GetUpdateTime().AsTime().Equal(at(6)) {
				t.Fatalf("order %v: create %v update %v", perm, m.GetCreateTime().AsTime(), m.GetUpdateTime().AsTime())
			}
		}
	})
}

func TestStore_duplicateEventsChangeNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		evs := scenario()
		mustApply(t, s, evs...)
		before := mustMessage(t, s, "m")

		for _, e := range evs {
			out, err := s.Apply(ctx, proto.Clone(e).(*mailbusv1.DeliveryEvent))
			if err != nil || out != store.Duplicate {
				t.Fatalf("re-Apply(%s) = %v, %v; want duplicate", e.GetEventId(), out, err)
			}
		}
		// A redelivered event with different content is still the same event.
		changed := clone(evs[1], "")
		changed.Status = failed
		if out, err := s.Apply(ctx, changed); err != nil || out != store.Duplicate {
			t.Fatalf("Apply(changed redelivery) = %v, %v", out, err)
		}
		res, err := s.ApplyBatch(ctx, []*mailbusv1.DeliveryEvent{evs[0], evs[2], evs[2]})
		if err != nil || res.Applied != 0 || res.Duplicates != 3 {
			t.Fatalf("ApplyBatch(duplicates) = %+v, %v", res, err)
		}
		after := mustMessage(t, s, "m")
		if !proto.Equal(before, after) {
			t.Errorf("message changed:\nbefore %v\nafter  %v", before, after)
		}
	})
}

func TestStore_eventWithoutRecipientsAppliesToAllIncludingLaterOnes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		// The cancel for the whole message arrives before the summary that
		// names the recipients, and one recipient was already sent.
		mustApply(t, s,
			ev("c", "m", cancelled, 5),
			ev("s", "m", sent, 3, "a"),
			with(ev("q", "m", queued, 1), func(e *mailbusv1.DeliveryEvent) { e.Summary = summary("a", "b", "c") }),
		)
		m := mustMessage(t, s, "m")
		want := map[string]mailbusv1.DeliveryStatus{"a": sent, "b": cancelled, "c": cancelled}
		for addr, st := range want {
			if got := recipientOf(t, m, addr).GetStatus(); got != st {
				t.Errorf("%s = %v, want %v", addr, got, st)
			}
		}
		if m.GetStatus() != sent {
			t.Errorf("message status %v, want sent (the least final of sent, cancelled)", m.GetStatus())
		}
		// A recipient first named after the fact also gets the message-wide events.
		mustApply(t, s, ev("late", "m", none, 6, "d"),
			with(ev("x", "m", deferred, 7, "e"), func(e *mailbusv1.DeliveryEvent) { e.Reason = "greylisted" }))
		m = mustMessage(t, s, "m")
		if got := recipientOf(t, m, "e").GetStatus(); got != cancelled {
			t.Errorf("e = %v, want cancelled (deferred never overrides the earlier cancel)", got)
		}
		if len(m.GetRecipients()) != 4 {
			t.Errorf("recipients %v: a warning naming d must not create it", m.GetRecipients())
		}
	})
}

func TestStore_overallStatusIsTheLeastFinal(t *testing.T) {
	tests := []struct {
		statuses []mailbusv1.DeliveryStatus
		want     mailbusv1.DeliveryStatus
	}{
		{nil, none},
		{[]mailbusv1.DeliveryStatus{none}, none},
		{[]mailbusv1.DeliveryStatus{sent, queued}, queued},
		{[]mailbusv1.DeliveryStatus{sent, deferred, bounced}, deferred},
		{[]mailbusv1.DeliveryStatus{bounced, sent}, sent},
		{[]mailbusv1.DeliveryStatus{complained, bounced}, bounced},
		{[]mailbusv1.DeliveryStatus{failed, cancelled, suppressed}, suppressed},
		{[]mailbusv1.DeliveryStatus{complained}, complained},
	}
	for _, tt := range tests {
		if got := store.OverallStatus(tt.statuses...); got != tt.want {
			t.Errorf("OverallStatus(%v) = %v, want %v", tt.statuses, got, tt.want)
		}
	}
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		steps := []struct {
			e    *mailbusv1.DeliveryEvent
			want mailbusv1.DeliveryStatus
		}{
			{with(ev("q", "m", queued, 1), func(e *mailbusv1.DeliveryEvent) { e.Summary = summary("a", "b") }), queued},
			{ev("sa", "m", sent, 2, "a"), queued},
			{ev("fb", "m", failed, 3, "b"), sent},
			{with(ev("ba", "m", bounced, 4, "a"), func(e *mailbusv1.DeliveryEvent) { e.Permanent = true }), failed},
			{with(ev("r", "m", queued, 5, "b"), func(e *mailbusv1.DeliveryEvent) {
				e.Stage, e.Reason = store.StageTracker, store.ReasonRetryRequested
			}), queued},
		}
		for _, st := range steps {
			mustApply(t, s, st.e)
			if got := mustMessage(t, s, "m").GetStatus(); got != st.want {
				t.Fatalf("after %s: status %v, want %v", st.e.GetEventId(), got, st.want)
			}
		}
		page, err := s.List(context.Background(), store.ListQuery{Status: queued})
		if err != nil || len(page.Messages) != 1 {
			t.Fatalf("List(queued) = %d messages, %v", len(page.Messages), err)
		}
	})
}

func TestStore_applyBatchRejectsInvalidEventsAndAppliesTheRest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		res, err := s.ApplyBatch(ctx, []*mailbusv1.DeliveryEvent{
			ev("e1", "m1", queued, 1, "a"),
			ev("", "m1", sent, 2, "a"),
			ev("e2", "", sent, 2, "a"),
			ev("e3", "m2", sent, 2, "b"),
			ev("e4", "m1", sent, 2, "a"),
			ev("e4", "m1", sent, 2, "a"),
			nil,
		})
		if err != nil {
			t.Fatal(err)
		}
		var rejected []int
		for _, r := range res.Rejected {
			if !errors.Is(r.Err, store.ErrInvalidEvent) {
				t.Errorf("rejection %d: %v does not wrap ErrInvalidEvent", r.Index, r.Err)
			}
			rejected = append(rejected, r.Index)
		}
		if res.Applied != 3 || res.Duplicates != 1 || !slices.Equal(rejected, []int{1, 2, 6}) {
			t.Errorf("ApplyBatch = %+v, rejected %v", res, rejected)
		}
		if got := recipientOf(t, mustMessage(t, s, "m1"), "a").GetStatus(); got != sent {
			t.Errorf("m1/a = %v", got)
		}
		if _, err := s.Apply(ctx, ev("", "m1", sent, 2, "a")); !errors.Is(err, store.ErrInvalidEvent) {
			t.Errorf("Apply(no event id) = %v, want ErrInvalidEvent", err)
		}
		if _, err := s.Message(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Message(nope) = %v, want ErrNotFound", err)
		}
	})
}

func TestStore_eventWithoutOccurTimeGetsTheClock(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		e := ev("e", "m", queued, 0, "a")
		e.OccurTime = nil
		mustApply(t, s, e)
		m := mustMessage(t, s, "m")
		if !m.GetHistory()[0].GetOccurTime().AsTime().Equal(at(1000)) || !m.GetCreateTime().AsTime().Equal(at(1000)) {
			t.Errorf("history %v, create %v; want the store clock", m.GetHistory(), m.GetCreateTime())
		}
	})
}

func TestStore_intentsAreIdempotent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustApply(t, s,
			with(ev("q", "m", queued, 1), func(e *mailbusv1.DeliveryEvent) { e.Summary = summary("a", "b", "c", "d", "e") }),
			ev("fa", "m", failed, 2, "a"),
			ev("db", "m", deferred, 2, "b"),
			ev("sc", "m", sent, 2, "c"),
			with(ev("be", "m", bounced, 2, "e"), func(e *mailbusv1.DeliveryEvent) { e.Permanent = true }),
		)
		m := mustMessage(t, s, "m")
		// Failed and hard-bounced recipients are retried; the deferred one
		// is still the pipeline's, on a retry topic.
		retry, targets := store.RetryEvent(m, at(10), "ops")
		again, _ := store.RetryEvent(m, at(11), "someone else")
		if retry == nil || again.GetEventId() != retry.GetEventId() || !slices.Equal(targets, []string{"a", "e"}) {
			t.Fatalf("RetryEvent = %v %v; again %v", retry, targets, again)
		}
		for range 2 {
			if _, err := s.Apply(ctx, proto.Clone(retry).(*mailbusv1.DeliveryEvent)); err != nil {
				t.Fatal(err)
			}
		}
		m = mustMessage(t, s, "m")
		for addr, want := range map[string]mailbusv1.DeliveryStatus{"a": queued, "b": deferred, "c": sent, "d": queued, "e": queued} {
			if got := recipientOf(t, m, addr).GetStatus(); got != want {
				t.Errorf("after retry %s = %v, want %v", addr, got, want)
			}
		}
		if e, _ := store.RetryEvent(m, at(12), "ops"); e != nil {
			t.Errorf("a second retry found work: %v", e)
		}
		if n := store.RetryCount(m); n != 1 {
			t.Errorf("RetryCount = %d, want 1", n)
		}

		cancel, targets := store.CancelEvent(m, at(13), "ops")
		if !slices.Equal(targets, []string{"a", "b", "d", "e"}) {
			t.Fatalf("CancelEvent targets %v", targets)
		}
		mustApply(t, s, cancel)
		m = mustMessage(t, s, "m")
		if m.GetStatus() != sent {
			t.Errorf("after cancel, status %v, want sent (c sent, others cancelled)", m.GetStatus())
		}
		if store.Cancelled(m) == nil {
			t.Error("Cancelled does not find the cancellation")
		}
		if e, _ := store.CancelEvent(m, at(14), "ops"); e != nil {
			t.Errorf("a second cancel found work: %v", e)
		}
	})
}

// seedMessages makes n messages spread over two tenants and three users;
// message i is created at second i/2 (two per second, to exercise ties),
// and every third is sent, the others queued.
func seedMessages(t *testing.T, s *store.Store, n int) {
	t.Helper()
	var evs []*mailbusv1.DeliveryEvent
	for i := range n {
		msg := fmt.Sprintf("msg%03d", i)
		q := ev(msg+"-q", msg, queued, i/2)
		q.TenantId = []string{"t1", "t2"}[i%2]
		q.UserId = []string{"u1", "u2", "u3"}[i%3]
		q.Summary = summary("a@x.example")
		evs = append(evs, q)
		if i%3 == 0 {
			evs = append(evs, ev(msg+"-s", msg, sent, i/2+100, "a@x.example"))
		}
	}
	res, err := s.ApplyBatch(context.Background(), evs)
	if err != nil || res.Applied != len(evs) {
		t.Fatalf("seeding: %+v, %v", res, err)
	}
}

// listAll pages through a listing and returns the ids in page order.
func listAll(t *testing.T, s *store.Store, q store.ListQuery) []string {
	t.Helper()
	var ids []string
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("listing does not end")
		}
		page, err := s.List(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) > q.PageSize && q.PageSize > 0 {
			t.Fatalf("page of %d > page size %d", len(page.Messages), q.PageSize)
		}
		for _, m := range page.Messages {
			ids = append(ids, m.GetId())
			if len(m.GetHistory()) != 0 || len(m.GetRecipients()) != 1 {
				t.Fatalf("listed message %s has %d history events, %d recipients", m.GetId(), len(m.GetHistory()), len(m.GetRecipients()))
			}
		}
		if page.NextPageToken == "" {
			return ids
		}
		q.PageToken = page.NextPageToken
	}
}

func TestStore_listPagesWithoutDuplicatesOrGaps(t *testing.T) {
	const n = 47
	// want returns the ids that match, newest first as List orders them.
	want := func(match func(i int) bool) []string {
		var ids []string
		for i := n - 1; i >= 0; i-- {
			if match(i) {
				ids = append(ids, fmt.Sprintf("msg%03d", i))
			}
		}
		return ids
	}
	tests := []struct {
		name  string
		q     store.ListQuery
		match func(i int) bool
	}{
		{"all, pages of 5", store.ListQuery{PageSize: 5}, func(int) bool { return true }},
		{"all, one page", store.ListQuery{PageSize: 500}, func(int) bool { return true }},
		{"default page size", store.ListQuery{}, func(int) bool { return true }},
		{"tenant", store.ListQuery{TenantID: "t2", PageSize: 4}, func(i int) bool { return i%2 == 1 }},
		{"tenant and user", store.ListQuery{TenantID: "t1", UserID: "u2", PageSize: 2}, func(i int) bool { return i%2 == 0 && i%3 == 1 }},
		{"status sent", store.ListQuery{Status: sent, PageSize: 3}, func(i int) bool { return i%3 == 0 }},
		{"tenant and status queued", store.ListQuery{TenantID: "t1", Status: queued, PageSize: 3}, func(i int) bool { return i%2 == 0 && i%3 != 0 }},
		{"time range is [start, end)", store.ListQuery{Start: at(5), End: at(12), PageSize: 4}, func(i int) bool { return i/2 >= 5 && i/2 < 12 }},
		{"only a start", store.ListQuery{Start: at(20), PageSize: 3}, func(i int) bool { return i/2 >= 20 }},
		{"only an end", store.ListQuery{End: at(3), PageSize: 1}, func(i int) bool { return i/2 < 3 }},
		{"nothing matches", store.ListQuery{TenantID: "t3"}, func(int) bool { return false }},
	}
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		seedMessages(t, s, n)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got := listAll(t, s, tt.q)
				if w := want(tt.match); !slices.Equal(got, w) {
					t.Errorf("got  %v\nwant %v", got, w)
				}
			})
		}
		t.Run("a token is refused with other filters or when forged", func(t *testing.T) {
			ctx := context.Background()
			page, err := s.List(ctx, store.ListQuery{TenantID: "t1", PageSize: 2})
			if err != nil || page.NextPageToken == "" {
				t.Fatalf("List = %v, %v", page, err)
			}
			for _, q := range []store.ListQuery{
				{TenantID: "t2", PageSize: 2, PageToken: page.NextPageToken},
				{PageToken: "not a token"},
				{PageToken: "e30"}, // "{}"
			} {
				if _, err := s.List(ctx, q); !errors.Is(err, store.ErrInvalidPageToken) {
					t.Errorf("List(%+v) = %v, want ErrInvalidPageToken", q, err)
				}
			}
		})
		t.Run("messages created while paging are neither repeated nor skipped", func(t *testing.T) {
			ctx := context.Background()
			q := store.ListQuery{TenantID: "t1", PageSize: 5}
			page, err := s.List(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			ids := []string{}
			for _, m := range page.Messages {
				ids = append(ids, m.GetId())
			}
			// Newer than everything listed: must not appear on later pages.
			mustApply(t, s, with(ev("new-q", "new", queued, 10000), func(e *mailbusv1.DeliveryEvent) { e.Summary = summary("a@x.example") }))
			q.PageToken = page.NextPageToken
			ids = append(ids, listAll(t, s, q)...)
			if w := want(func(i int) bool { return i%2 == 0 }); !slices.Equal(ids, w) {
				t.Errorf("got  %v\nwant %v", ids, w)
			}
		})
	})
}

func TestStore_concurrentBatchesOnTheSameMessagesConverge(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		const messages, workers = 20, 4
		var all []*mailbusv1.DeliveryEvent
		for i := range messages {
			for _, e := range scenario() {
				all = append(all, clone(e, fmt.Sprintf("c%02d-", i)))
			}
		}
		// Each worker applies every event, in its own order and batches, so
		// that the same events race across transactions.
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				evs := make([]*mailbusv1.DeliveryEvent, len(all))
				for i := range all {
					evs[i] = proto.Clone(all[i]).(*mailbusv1.DeliveryEvent)
				}
				rand.New(rand.NewPCG(uint64(w), 1)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
				for len(evs) > 0 {
					n := min(len(evs), 7+w)
					if _, err := s.ApplyBatch(context.Background(), evs[:n]); err != nil {
						errs <- err
						return
					}
					evs = evs[n:]
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i := range messages {
			m := mustMessage(t, s, fmt.Sprintf("c%02d-m", i))
			got := []mailbusv1.DeliveryStatus{
				recipientOf(t, m, "a@x.example").GetStatus(),
				recipientOf(t, m, "b@x.example").GetStatus(),
				recipientOf(t, m, "c@x.example").GetStatus(),
			}
			if !slices.Equal(got, []mailbusv1.DeliveryStatus{bounced, queued, sent}) || len(m.GetHistory()) != 5 || m.GetStatus() != queued {
				t.Errorf("message %d: recipients %v, %d events, status %v", i, got, len(m.GetHistory()), m.GetStatus())
			}
		}
	})
}

func TestStore_relayFollowsTheRouteButNotBounceReports(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		const a = "a@example.net"
		onRelay := with(ev("e1", "mr", mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, 1, a), func(e *mailbusv1.DeliveryEvent) {
			e.Summary, e.DeliveryId, e.RelayId, e.Stage = summary(a), "mr.0", "relay-1", "router"
		})
		// The relay failed; the router sent the recipient on to the
		// default server, whose events carry no relay id.
		onDefault := with(ev("e2", "mr", mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, 2, a), func(e *mailbusv1.DeliveryEvent) {
			e.DeliveryId, e.RelayId, e.Stage = "mr.0.r1", "", "sender"
		})
		mustApply(t, s, onRelay, onDefault)
		if got := recipientOf(t, mustMessage(t, s, "mr"), a); got.GetRelayId() != "" || got.GetDeliveryId() != "mr.0.r1" {
			t.Fatalf("re-routed recipient names relay %q delivery %q; want the default server's route", got.GetRelayId(), got.GetDeliveryId())
		}

		sent := with(ev("e3", "mb", mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, 1, a), func(e *mailbusv1.DeliveryEvent) {
			e.Summary, e.DeliveryId, e.RelayId, e.Stage = summary(a), "mb.0", "relay-1", "sender"
		})
		bounced := with(ev("e4", "mb", mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, 2, a), func(e *mailbusv1.DeliveryEvent) {
			e.DeliveryId, e.Stage, e.Permanent, e.Reason = "mb.0", "bounce", true, "userunknown"
		})
		mustApply(t, s, sent, bounced)
		if got := recipientOf(t, mustMessage(t, s, "mb"), a); got.GetRelayId() != "relay-1" || got.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED {
			t.Fatalf("bounced recipient: relay %q status %v; want relay-1 kept and bounced", got.GetRelayId(), got.GetStatus())
		}
	})
}
