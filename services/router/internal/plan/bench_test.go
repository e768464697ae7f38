package plan

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// BenchmarkPlanner_transactional10KB is the router's CPU and allocations
// per message of make bench's shape (one recipient, a 10 KB text body):
// planning and encoding what it publishes. Run with -benchmem.
func BenchmarkPlanner_transactional10KB(b *testing.B) {
	p := newPlanner(newConfig())
	body := strings.Repeat("The quick brown fox jumps over the lazy dog. 0123456789 mailbus bench.\r\n", 142)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for i := 0; b.Loop(); i++ {
		sub := submission("alice@acme.example", "r"+strconv.Itoa(i)+"@example.net")
		sub.Kind = mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL
		sub.TextBody = body
		res, err := p.Plan(ctx, sub, "bench/0/"+strconv.Itoa(i))
		if err != nil || len(res.Deliveries) != 1 {
			b.Fatalf("Plan: %v, %d deliveries", err, len(res.Deliveries))
		}
		for _, d := range res.Deliveries {
			if _, err := proto.Marshal(d); err != nil {
				b.Fatal(err)
			}
		}
	}
}
