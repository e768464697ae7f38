package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// eventStream makes the events of the pipeline's typical traffic: every
// message gets a queued event with its summary from the router and a sent
// from the sender; every other message also a deferred before the sent
// (2.5 events per message). Recipients: one per message, and every tenth
// message a small list of five.
func eventStream(n int) []*mailbusv1.DeliveryEvent {
	out := make([]*mailbusv1.DeliveryEvent, 0, n)
	for i := 0; len(out) < n; i++ {
		msg := fmt.Sprintf("bench-%08d", i)
		rcpts := []string{fmt.Sprintf("user%d@example.com", i)}
		if i%10 == 0 {
			for j := range 4 {
				rcpts = append(rcpts, fmt.Sprintf("user%d-%d@example.com", i, j))
			}
		}
		base := t0.Add(time.Duration(i) * time.Millisecond)
		mk := func(kind string, status mailbusv1.DeliveryStatus, d time.Duration, r []string) *mailbusv1.DeliveryEvent {
			return &mailbusv1.DeliveryEvent{
				EventId: msg + "-" + kind, TenantId: fmt.Sprintf("tenant%d", i%20), UserId: fmt.Sprintf("user%d", i%300),
				MessageId: msg, DeliveryId: msg + "-d", Recipients: r, Status: status, Stage: "sender",
				RelayId: "relay-1", OccurTime: timestamppb.New(base.Add(d)), Attempt: 1,
				Reply: &mailbusv1.SmtpReply{Code: 250, EnhancedCode: "2.0.0", Text: "OK queued as ABC123"},
			}
		}
		q := mk("q", queued, 0, nil)
		q.Stage, q.Reply = "router", nil
		q.Summary = &mailbusv1.MessageSummary{From: "news@acme.example", Subject: "Your invoice " + msg,
			Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL, Recipients: rcpts, HeaderMessageId: "<" + msg + "@acme.example>"}
		out = append(out, q)
		if i%2 == 1 {
			d := mk("d", deferred, 50*time.Millisecond, rcpts)
			d.Reply = &mailbusv1.SmtpReply{Code: 451, EnhancedCode: "4.7.1", Text: "greylisted"}
			out = append(out, d)
		}
		out = append(out, mk("s", sent, 100*time.Millisecond, rcpts))
	}
	return out[:n]
}

// benchmarkApply applies b.N events of eventStream in batches of size
// (size 0: Apply, one transaction per event) and reports events/s.
// shuffle moves events between batches so that many arrive out of order.
func benchmarkApply(b *testing.B, s *store.Store, size int, shuffle bool) {
	ctx := context.Background()
	evs := eventStream(b.N)
	if shuffle {
		// Swap within windows of four batches: sent often lands before
		// its queued, as with events on different partitions.
		rng := rand.New(rand.NewPCG(1, 2))
		window := 4 * max(size, 1)
		for lo := 0; lo < len(evs); lo += window {
			hi := min(lo+window, len(evs))
			rng.Shuffle(hi-lo, func(i, j int) { evs[lo+i], evs[lo+j] = evs[lo+j], evs[lo+i] })
		}
	}
	b.ResetTimer()
	start := time.Now()
	if size == 0 {
		for _, e := range evs {
			if _, err := s.Apply(ctx, e); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		for lo := 0; lo < len(evs); lo += size {
			res, err := s.ApplyBatch(ctx, evs[lo:min(lo+size, len(evs))])
			if err != nil {
				b.Fatal(err)
			}
			if len(res.Rejected) > 0 {
				b.Fatal(res.Rejected[0].Err)
			}
		}
	}
	b.ReportMetric(float64(len(evs))/time.Since(start).Seconds(), "events/s")
}

// BenchmarkApplyBatch_SQLite measures the consumer's hot path on SQLite in
// a file (WAL, synchronous=NORMAL, as sqlstore opens it).
func BenchmarkApplyBatch_SQLite(b *testing.B) {
	for _, bc := range []struct {
		name    string
		size    int
		shuffle bool
	}{
		{"one-tx-per-event", 0, false},
		{"batch-100", 100, false},
		{"batch-500", 500, false},
		{"batch-500-out-of-order", 500, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			db := openDB(b, filepath.Join(b.TempDir(), "bench.db"))
			benchmarkApply(b, store.New(db), bc.size, bc.shuffle)
		})
	}
}

// BenchmarkApplyBatch_Postgres is the same on PostgreSQL (skipped when it
// is not reachable).
func BenchmarkApplyBatch_Postgres(b *testing.B) {
	db := openDB(b, testkit.Postgres(b))
	benchmarkApply(b, store.New(db), 500, false)
}

// BenchmarkKeepSubmissions_SQLite stores b.N transactional submissions of
// about 5 KB (text and HTML bodies), one transaction each and in batches
// as the tracker's keeper makes them, and reports submissions/s and the
// stored size.
func BenchmarkKeepSubmissions_SQLite(b *testing.B) {
	body := ""
	for i := range 40 {
		body += fmt.Sprintf("Line %d of your invoice: item %d, quantity %d, price %d.%02d EUR\n", i, i*7, i%5+1, i*3, i%100)
	}
	for _, size := range []int{1, 16, 100} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			ctx := context.Background()
			s := store.New(openDB(b, filepath.Join(b.TempDir(), "tracker.db")))
			b.ResetTimer()
			for i := 0; i < b.N; i += size {
				var ks []store.Kept
				for j := i; j < min(i+size, b.N); j++ {
					ks = append(ks, store.Kept{MessageID: fmt.Sprintf("m%d", j), KeepUntil: t0.Add(time.Hour), Submission: &mailbusv1.Submission{
						IdempotencyId: fmt.Sprintf("invoice-%d", j), TenantId: "acme", UserId: "u1", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
						From: &mailbusv1.Address{Email: "billing@acme.example"}, To: []*mailbusv1.Address{{Email: fmt.Sprintf("c%d@example.com", j)}},
						Subject: fmt.Sprintf("Invoice %d", j), TextBody: body, HtmlBody: "<html><body><pre>" + body + "</pre></body></html>",
					}})
				}
				if err := s.KeepSubmissions(ctx, ks); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submissions/s")
			if n, raw, stored, err := s.SubmissionStats(ctx); err == nil && n > 0 {
				b.ReportMetric(float64(raw)/float64(n), "raw-B/op")
				b.ReportMetric(float64(stored)/float64(n), "stored-B/op")
			}
		})
	}
}
