package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/webhook/internal/store"
)

// The outbox contract, on SQLite and on PostgreSQL.
func TestStore(t *testing.T) {
	for name, url := range map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "webhook.db") },
		"postgres": func(t *testing.T) string { return testkit.Postgres(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			db, err := sqlstore.Open(ctx, url(t))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := store.Migrate(ctx, db); err != nil {
				t.Fatal(err)
			}
			if err := store.Migrate(ctx, db); err != nil {
				t.Fatalf("second migration: %v", err)
			}
			s := store.New(db)
			now := time.Unix(1_800_000_000, 0)
			for _, id := range []string{"ep1", "ep2"} {
				if err := s.CreateEndpoint(ctx, store.Endpoint{ID: id, TenantID: "acme", URL: "https://x.example/" + id,
					EventTypes: []string{"message.sent", "message.bounced"}, Active: true, SealedSecret: []byte("sealed"),
					Created: now, Updated: now}); err != nil {
					t.Fatal(err)
				}
			}
			t.Run("endpointsRoundTrip", func(t *testing.T) {
				e, err := s.GetEndpoint(ctx, "ep1")
				if err != nil || e.URL != "https://x.example/ep1" || len(e.EventTypes) != 2 || !e.Active || string(e.SealedSecret) != "sealed" {
					t.Fatalf("get: %+v, %v", e, err)
				}
				if _, err := s.GetEndpoint(ctx, "nope"); err != store.ErrNotFound {
					t.Fatalf("get a missing endpoint: %v", err)
				}
				if err := s.RotateSecret(ctx, "ep1", []byte("new"), []byte("sealed"), now.Add(time.Hour), now); err != nil {
					t.Fatal(err)
				}
				e, _ = s.GetEndpoint(ctx, "ep1")
				if string(e.SealedSecret) != "new" || string(e.SealedPrevious) != "sealed" || !e.PreviousExpire.Equal(now.Add(time.Hour)) {
					t.Fatalf("after rotation: %+v", e)
				}
			})

			row := func(ep, msg string, k int) store.Row {
				return store.Row{WebhookID: fmt.Sprintf("evt_%s_%d", msg, k), EndpointID: ep, TenantID: "acme", MessageID: msg,
					Event: []byte("ev"), Body: []byte(fmt.Sprintf(`{"k":%d}`, k))}
			}
			t.Run("enqueueIsIdempotentOnTheWebhookID", func(t *testing.T) {
				rows := []store.Row{row("ep1", "m1", 1), row("ep1", "m1", 2), row("ep1", "m2", 1), row("ep2", "m1", 1)}
				if n, err := s.Enqueue(ctx, rows, now); err != nil || n != 4 {
					t.Fatalf("enqueue: %d, %v", n, err)
				}
				if n, err := s.Enqueue(ctx, rows, now); err != nil || n != 0 {
					t.Fatalf("enqueue again: %d new, %v", n, err)
				}
			})
			t.Run("aMessagesNextEventWaitsForTheOneBefore", func(t *testing.T) {
				c, err := s.Claim(ctx, "ep1", now, time.Minute, 10)
				if err != nil {
					t.Fatal(err)
				}
				// m1's second event waits behind its first.
				if len(c) != 2 || c[0].WebhookID != "evt_m1_1" || c[1].WebhookID != "evt_m2_1" {
					t.Fatalf("claimed %+v", c)
				}
				// Leased: a second claim (another replica) gets nothing.
				if again, _ := s.Claim(ctx, "ep1", now, time.Minute, 10); len(again) != 0 {
					t.Fatalf("claimed leased rows: %+v", again)
				}
				// m1's first fails and is retried later: m1's second still waits.
				if err := s.Finish(ctx, []store.Result{{Claimed: c[0], Err: "HTTP 503", Next: now.Add(time.Second)}, {Claimed: c[1], Delivered: true}}, now); err != nil {
					t.Fatal(err)
				}
				if got, _ := s.Claim(ctx, "ep1", now, time.Minute, 10); len(got) != 0 {
					t.Fatalf("claimed before the retry is due: %+v", got)
				}
				c, _ = s.Claim(ctx, "ep1", now.Add(time.Second), time.Minute, 10)
				if len(c) != 1 || c[0].WebhookID != "evt_m1_1" || c[0].Attempts != 1 {
					t.Fatalf("retry claim %+v", c)
				}
				if err := s.Finish(ctx, []store.Result{{Claimed: c[0], Delivered: true}}, now); err != nil {
					t.Fatal(err)
				}
				c, _ = s.Claim(ctx, "ep1", now.Add(time.Second), time.Minute, 10)
				if len(c) != 1 || c[0].WebhookID != "evt_m1_2" {
					t.Fatalf("after the first was delivered, claimed %+v", c)
				}
				// Released (a shutdown): due again at once, no attempt counted.
				if err := s.Finish(ctx, []store.Result{{Claimed: c[0], Release: true}}, now); err != nil {
					t.Fatal(err)
				}
				c, _ = s.Claim(ctx, "ep1", now.Add(time.Second), time.Minute, 10)
				if len(c) != 1 || c[0].Attempts != 0 {
					t.Fatalf("after release, claimed %+v", c)
				}
				if err := s.Finish(ctx, []store.Result{{Claimed: c[0], Dead: true, Err: "HTTP 500"}}, now); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("unblockReadiesARowWhosePredecessorFinishedUnseen", func(t *testing.T) {
				// What a PostgreSQL race leaves: m3's second event was
				// enqueued not ready while its first was finished by a
				// transaction that did not see it.
				if _, err := s.Enqueue(ctx, []store.Row{row("ep1", "m3", 1), row("ep1", "m3", 2)}, now); err != nil {
					t.Fatal(err)
				}
				if _, err := db.ExecContext(ctx, `UPDATE webhook_deliveries SET state = 1 WHERE webhook_id = 'evt_m3_1'`); err != nil {
					t.Fatal(err)
				}
				if c, _ := s.Claim(ctx, "ep1", now, time.Minute, 10); len(c) != 0 {
					t.Fatalf("claimed %+v", c)
				}
				if n, err := s.Unblock(ctx, "ep1"); err != nil || n != 1 {
					t.Fatalf("unblock: %d, %v", n, err)
				}
				c, _ := s.Claim(ctx, "ep1", now, time.Minute, 10)
				if len(c) != 1 || c[0].WebhookID != "evt_m3_2" {
					t.Fatalf("claimed after unblock %+v", c)
				}
				if err := s.Finish(ctx, []store.Result{{Claimed: c[0], Delivered: true}}, now); err != nil {
					t.Fatal(err)
				}
				if n, _ := s.Unblock(ctx, "ep1"); n != 0 {
					t.Fatalf("unblocked %d rows that an earlier due row holds back", n)
				}
			})
			t.Run("deadLettersAreListedAndReplayed", func(t *testing.T) {
				dl, err := s.ListDead(ctx, "acme", "", 0, 10)
				if err != nil || len(dl) != 1 || dl[0].WebhookID != "evt_m1_2" || dl[0].Error != "HTTP 500" || dl[0].Attempts != 1 {
					t.Fatalf("dead letters %+v, %v", dl, err)
				}
				if other, _ := s.ListDead(ctx, "other", "", 0, 10); len(other) != 0 {
					t.Fatalf("another tenant's dead letters: %+v", other)
				}
				if n, err := s.Replay(ctx, "acme", "ep1", []string{"evt_m1_2"}, now.Add(time.Hour)); err != nil || n != 1 {
					t.Fatalf("replay: %d, %v", n, err)
				}
				c, _ := s.Claim(ctx, "ep1", now.Add(time.Hour), time.Minute, 10)
				if len(c) != 1 || c[0].WebhookID != "evt_m1_2" || !c[0].Schedule.Equal(now.Add(time.Hour)) {
					t.Fatalf("replayed claim %+v", c)
				}
				due, dead, err := s.Counts(ctx)
				if err != nil || due != 2 || dead != 0 {
					t.Fatalf("counts: due %d dead %d, %v", due, dead, err)
				}
			})
			t.Run("deletingAnEndpointDeletesItsRows", func(t *testing.T) {
				if err := s.DeleteEndpoint(ctx, "ep2"); err != nil {
					t.Fatal(err)
				}
				if c, _ := s.Claim(ctx, "ep2", now.Add(time.Hour), time.Minute, 10); len(c) != 0 {
					t.Fatalf("claimed a deleted endpoint's rows: %+v", c)
				}
				if eps, _ := s.ListEndpoints(ctx, "acme"); len(eps) != 1 {
					t.Fatalf("endpoints after delete: %+v", eps)
				}
			})
			t.Run("pruneDeletesOldDeliveredRows", func(t *testing.T) {
				n, err := s.Prune(ctx, now.Add(time.Minute))
				if err != nil || n != 4 {
					t.Fatalf("prune: %d, %v", n, err)
				}
			})
		})
	}
}
