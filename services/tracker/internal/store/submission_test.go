package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/protobuf/proto"
)

// forEachBackendAt is forEachBackend with a clock the test moves.
func forEachBackendAt(t *testing.T, body func(t *testing.T, s *store.Store, now *time.Time)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			db := b.open(t)
			now := at(0)
			body(t, store.New(db, store.WithClock(func() time.Time { return now })), &now)
		})
	}
}

func bigSubmission(id string) *mailbusv1.Submission {
	return &mailbusv1.Submission{
		IdempotencyId: id, TenantId: "t1", UserId: "u1", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
		From:     &mailbusv1.Address{Email: "news@acme.example"},
		To:       []*mailbusv1.Address{{Email: "a@x.example"}, {Email: "b@x.example"}},
		Subject:  "Hello",
		HtmlBody: strings.Repeat("<p>The same newsletter paragraph, as newsletters have.</p>\n", 4000),
		Metadata: map[string]string{"campaign": "spring"},
	}
}

func TestStore_keepsSubmissionsCompressedUntilTheirRetentionEnds(t *testing.T) {
	forEachBackendAt(t, func(t *testing.T, s *store.Store, now *time.Time) {
		ctx := context.Background()
		sub := bigSubmission("order-1")
		if err := s.KeepSubmission(ctx, "m1", sub, at(100)); err != nil {
			t.Fatal(err)
		}
		// A redelivered record, or the same idempotency id published
		// again with other content: the first stays.
		other := bigSubmission("order-1")
		other.Subject = "Changed"
		if err := s.KeepSubmission(ctx, "m1", other, at(500)); err != nil {
			t.Fatal(err)
		}
		got, err := s.Submission(ctx, "m1")
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, sub) {
			t.Errorf("stored submission differs: subject %q", got.GetSubject())
		}
		n, raw, stored, err := s.SubmissionStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 || raw != int64(proto.Size(sub)) || stored*10 > raw {
			t.Errorf("stats = %d submissions, %d bytes raw, %d stored; want 1, %d, under a tenth", n, raw, stored, proto.Size(sub))
		}
		t.Logf("a %d-byte submission is stored in %d bytes", raw, stored)

		// A batch that holds a redelivered record twice keeps it once.
		dup := bigSubmission("order-3")
		if err := s.KeepSubmissions(ctx, []store.Kept{
			{MessageID: "m3", Submission: dup, KeepUntil: at(300)}, {MessageID: "m3", Submission: dup, KeepUntil: at(300)},
		}); err != nil {
			t.Fatalf("a batch with a repeat: %v", err)
		}
		if got, err := s.Submission(ctx, "m3"); err != nil || !proto.Equal(got, dup) {
			t.Errorf("m3 = %v, %v", got.GetIdempotencyId(), err)
		}
		if _, err := s.Submission(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("unknown message: %v, want ErrNotFound", err)
		}

		// At the end of the retention the submission is refused before it
		// is purged, and gone after.
		*now = at(100)
		_, err = s.Submission(ctx, "m1")
		var re *store.RetentionError
		if !errors.As(err, &re) || !errors.Is(err, store.ErrRetentionEnded) || !re.KeptUntil.Equal(at(100)) {
			t.Fatalf("after the retention: %v, want a RetentionError at %v", err, at(100))
		}
		if err := s.KeepSubmission(ctx, "m2", bigSubmission("order-2"), at(200)); err != nil {
			t.Fatal(err)
		}
		purged, err := s.PurgeSubmissions(ctx, 10)
		if err != nil || purged != 1 {
			t.Fatalf("purged %d, %v; want 1", purged, err)
		}
		if _, err := s.Submission(ctx, "m1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after the purge: %v, want ErrNotFound", err)
		}
		if _, err := s.Submission(ctx, "m2"); err != nil {
			t.Errorf("a submission within its retention was purged: %v", err)
		}
	})
}

func TestStore_listsByCampaignAndRelay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mk := func(id, campaign, relay string, sec int) []*mailbusv1.DeliveryEvent {
			q := ev(id+"-q", id, queued, sec, "a@x.example")
			q.Summary = summary("a@x.example")
			q.Summary.CampaignId = campaign
			q.DeliveryId, q.RelayId, q.Stage = id+".0", relay, "router"
			b := ev(id+"-b", id, bounced, sec+1, "a@x.example")
			b.DeliveryId, b.RelayId, b.Permanent = id+".0", relay, true
			return []*mailbusv1.DeliveryEvent{q, b}
		}
		var evs []*mailbusv1.DeliveryEvent
		evs = append(evs, mk("m1", "spring", "relay-a", 1)...)
		evs = append(evs, mk("m2", "spring", "relay-b", 2)...)
		evs = append(evs, mk("m3", "autumn", "relay-a", 3)...)
		mustApply(t, s, evs...)
		for _, c := range []struct {
			q    store.ListQuery
			want []string
		}{
			{store.ListQuery{CampaignID: "spring"}, []string{"m2", "m1"}},
			{store.ListQuery{RelayID: "relay-a"}, []string{"m3", "m1"}},
			{store.ListQuery{TenantID: "t1", CampaignID: "spring", RelayID: "relay-a", Status: bounced}, []string{"m1"}},
			{store.ListQuery{CampaignID: "none"}, nil},
		} {
			page, err := s.List(ctx, c.q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range page.Messages {
				got = append(got, m.GetId())
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("List(%+v) = %v, want %v", c.q, got, c.want)
			}
		}
		// A page token is for its own filter.
		page, err := s.List(ctx, store.ListQuery{CampaignID: "spring", PageSize: 1})
		if err != nil || page.NextPageToken == "" {
			t.Fatalf("first page: %v, %v", page, err)
		}
		if _, err := s.List(ctx, store.ListQuery{CampaignID: "autumn", PageToken: page.NextPageToken}); !errors.Is(err, store.ErrInvalidPageToken) {
			t.Errorf("token of another campaign: %v, want ErrInvalidPageToken", err)
		}
	})
}
