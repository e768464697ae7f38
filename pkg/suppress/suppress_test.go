package suppress_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newStore(t *testing.T) (*suppress.Store, *clock) {
	t.Helper()
	addr := testkit.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	c := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	return suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(t, addr)), suppress.WithClock(c.now)), c
}

func TestStore_suppressedFindsAddressesInAnyCaseAndOnlyForTheirTenant(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if _, err := s.Add(ctx, "acme", suppress.Entry{Address: " Bob@Example.NET ", Reason: "userunknown", Source: suppress.SourceBounce}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		tenant string
		addrs  []string
		want   map[string]string
	}{
		{"same case", "acme", []string{"bob@example.net", "carol@example.net"}, map[string]string{"bob@example.net": "userunknown"}},
		{"other case keyed lower-case", "acme", []string{"BOB@example.net"}, map[string]string{"bob@example.net": "userunknown"}},
		{"other tenant", "globex", []string{"bob@example.net"}, nil},
		{"none listed", "acme", []string{"carol@example.net"}, nil},
		{"no addresses", "acme", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Suppressed(ctx, tc.tenant, tc.addrs)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("Suppressed = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStore_removeTakesTheAddressOffAndReportsWhetherItWasListed(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if _, err := s.Add(ctx, "acme", suppress.Entry{Address: "bob@example.net", Reason: "feedback", Source: suppress.SourceComplaint}); err != nil {
		t.Fatal(err)
	}
	e, ok, err := s.Get(ctx, "acme", "BOB@example.net")
	if err != nil || !ok || e.Reason != "feedback" || e.Source != suppress.SourceComplaint || e.Time.IsZero() {
		t.Fatalf("Get = %+v %v %v", e, ok, err)
	}
	for i, want := range []bool{true, false} {
		removed, err := s.Remove(ctx, "acme", "Bob@example.net")
		if err != nil || removed != want {
			t.Fatalf("Remove #%d = %v, %v; want %v", i+1, removed, err, want)
		}
	}
	if got, _ := s.Suppressed(ctx, "acme", []string{"bob@example.net"}); len(got) != 0 {
		t.Fatalf("still suppressed after Remove: %v", got)
	}
}

func TestStore_listPagesThroughEveryEntryOnce(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	const n = 1000 // past the size at which Redis stops using a listpack, so HSCAN really pages
	want := map[string]bool{}
	for i := range n {
		a := fmt.Sprintf("user%04d@example.net", i)
		want[a] = true
		if _, err := s.Add(ctx, "acme", suppress.Entry{Address: a, Reason: "userunknown", Source: suppress.SourceBounce}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	cursor, pages := "", 0
	for {
		entries, next, err := s.List(ctx, "acme", cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range entries {
			seen[e.Address]++
			if e.Reason != "userunknown" {
				t.Fatalf("entry %+v lost its reason", e)
			}
		}
		if next == "" {
			break
		}
		if len(entries) == 0 {
			t.Fatal("an empty page with a next token")
		}
		cursor = next
	}
	if pages < 2 {
		t.Errorf("listed %d entries in %d page; want several pages", n, pages)
	}
	var missing []string
	for a := range want {
		if seen[a] == 0 {
			missing = append(missing, a)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 || len(seen) != n {
		t.Fatalf("listed %d distinct entries, missing %v", len(seen), missing)
	}
	if _, _, err := s.List(ctx, "acme", "not-a-cursor", 10); !errors.Is(err, suppress.ErrInvalid) {
		t.Fatalf("bad page token: err = %v", err)
	}
}

func TestStore_softBouncesSuppressAtTheThresholdWithinTheWindowOnly(t *testing.T) {
	ctx := context.Background()
	day := 24 * time.Hour
	type bounce struct {
		id    string
		after time.Duration // clock moves forward by this before the bounce
	}
	tests := []struct {
		name    string
		rule    suppress.SoftRule
		bounces []bounce
		want    bool
		count   int
	}{
		{"defaults: three within a week", suppress.SoftRule{}, []bounce{{"d1", 0}, {"d2", day}, {"d3", day}}, true, 3},
		{"defaults: two are not enough", suppress.SoftRule{}, []bounce{{"d1", 0}, {"d2", day}}, false, 2},
		{"the same delivery counts once", suppress.SoftRule{}, []bounce{{"d1", 0}, {"d1", day}, {"d1", day}}, false, 1},
		{"old bounces fall out of the window", suppress.SoftRule{}, []bounce{{"d1", 0}, {"d2", 4 * day}, {"d3", 4 * day}}, false, 2},
		{"tenant threshold", suppress.SoftRule{Threshold: 2, WindowDays: 1}, []bounce{{"d1", 0}, {"d2", time.Hour}}, true, 2},
		{"tenant window", suppress.SoftRule{Threshold: 2, WindowDays: 1}, []bounce{{"d1", 0}, {"d2", 2 * day}}, false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, c := newStore(t)
			var count int
			var suppressed bool
			for _, b := range tc.bounces {
				c.t = c.t.Add(b.after)
				var err error
				count, suppressed, err = s.SoftBounce(ctx, "acme", "Bob@example.net", b.id, "mailboxfull", tc.rule, time.Time{})
				if err != nil {
					t.Fatal(err)
				}
			}
			if suppressed != tc.want || count != tc.count {
				t.Fatalf("after %d bounces: count %d suppressed %v; want %d %v", len(tc.bounces), count, suppressed, tc.count, tc.want)
			}
			e, ok, err := s.Get(ctx, "acme", "bob@example.net")
			if err != nil || ok != tc.want {
				t.Fatalf("Get = %+v %v %v", e, ok, err)
			}
			if ok && (e.Source != suppress.SourceSoft || e.Reason != "mailboxfull") {
				t.Fatalf("entry %+v", e)
			}
		})
	}
}

func TestStore_refusesArgumentsThatCanNeverWork(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	tests := []struct {
		name   string
		tenant string
		addr   string
	}{
		{"empty tenant", "", "bob@example.net"},
		{"brace in tenant breaks the hash tag", "a}b", "bob@example.net"},
		{"not an address", "acme", "bob"},
		{"empty address", "acme", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Add(ctx, tc.tenant, suppress.Entry{Address: tc.addr, Reason: "manual"}); !errors.Is(err, suppress.ErrInvalid) {
				t.Fatalf("Add err = %v", err)
			}
		})
	}
}

func BenchmarkStore_suppressedTenRecipients(b *testing.B) {
	ctx := context.Background()
	addr := testkit.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	s := suppress.New(rdb, suppress.WithKeyPrefix(testkit.RedisKeyPrefix(b, addr)))
	addrs := make([]string, 10)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("r%d@example.net", i)
		if i%3 == 0 {
			if _, err := s.Add(ctx, "acme", suppress.Entry{Address: addrs[i], Reason: "userunknown"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Suppressed(ctx, "acme", addrs); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStore_unsubscribeStopsMassMailOnlyAndNeverNarrowsAnEntryForAllMail(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if wrote, err := s.Unsubscribe(ctx, "acme", "Ann@example.net", "one-click"); err != nil || !wrote {
		t.Fatalf("Unsubscribe: wrote %v, err %v", wrote, err)
	}
	if got, _ := s.SuppressedFor(ctx, "acme", []string{"ann@example.net"}, true); got["ann@example.net"] != "unsubscribed" {
		t.Errorf("mass mail to an unsubscribed address: %v, want suppressed", got)
	}
	if got, _ := s.SuppressedFor(ctx, "acme", []string{"ann@example.net"}, false); len(got) != 0 {
		t.Errorf("transactional mail to an unsubscribed address is suppressed: %v", got)
	}
	// A hard bounce widens it to all mail; a later unsubscribe leaves it.
	if _, err := s.Add(ctx, "acme", suppress.Entry{Address: "ann@example.net", Reason: "userunknown", Source: suppress.SourceBounce}); err != nil {
		t.Fatal(err)
	}
	if wrote, err := s.Unsubscribe(ctx, "acme", "ann@example.net", "one-click"); err != nil || wrote {
		t.Errorf("Unsubscribe over a hard bounce: wrote %v, err %v; want the bounce kept", wrote, err)
	}
	if got, _ := s.SuppressedFor(ctx, "acme", []string{"ann@example.net"}, false); got["ann@example.net"] != "userunknown" {
		t.Errorf("after the bounce and a second unsubscribe, transactional mail: %v, want suppressed as userunknown", got)
	}
}
