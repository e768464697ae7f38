package limits

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// lose makes Redis lose everything at once, as a cache without persistence
// does when it restarts. The servers of forEachBackend are private.
func lose(t testing.TB, h *harness) {
	t.Helper()
	if err := h.rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatalf("flush redis: %v", err)
	}
}

// forEachLedgerBackend is forEachBackend for the backends with a ledger.
func forEachLedgerBackend(t *testing.T, fn func(t *testing.T, srv server)) {
	t.Helper()
	forEachBackendWhere(t, func(b backend) bool { return b.ledger }, fn)
}

// TestLedger_lossOfRedisNeverLetsACounterPassItsLimit admits more
// deliveries than the limit allows from several replicas at once (each
// with its own Redis client and ledger reader, as separate processes)
// while Redis loses all its data three times. No loss may let more than the
// limit through, and each may cost at most one ceiling step of capacity, or
// the admissions waiting for a ceiling at that moment.
func TestLedger_lossOfRedisNeverLetsACounterPassItsLimit(t *testing.T) {
	const (
		replicas   = 4
		workers    = 4 // per replica
		deliveries = 300
		losses     = 3
	)
	cases := []struct {
		name                    string
		relayLimit, tenantLimit int64
		binding                 int64
		wantDecision            Decision // for the rest
	}{
		{"relayLimit", 100, 0, 100, RelayExhausted},
		{"tenantLimit", 0, 70, 70, TenantExhausted},
	}
	forEachBackendWhere(t, func(b backend) bool { return b.ledger && concurrent(b) }, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				clk := newClock(utc("2026-06-01T12:00:00Z"))
				base := newHarness(t, srv, clk)
				var limitsOf [replicas]*Limits
				for i := range limitsOf {
					limitsOf[i] = srv.replica(t, base.prefix, WithClock(clk.Now))
				}
				var (
					mu      sync.Mutex
					decided = map[string]Decision{}
					wg      sync.WaitGroup
					retries atomic.Int64
				)
				jobs := make(chan int)
				for r := range replicas {
					for range workers {
						wg.Go(func() {
							for j := range jobs {
								id := fmt.Sprint("d", j)
								// A delivery whose admission fails is retried, as the
								// bus retries its record; it must end decided.
								deadline := time.Now().Add(60 * time.Second)
								for {
									res, err := limitsOf[r].Admit(context.Background(), req(id, "r1", 1, tc.relayLimit, tc.tenantLimit))
									if err == nil {
										mu.Lock()
										decided[id] = res.Decision
										mu.Unlock()
										break
									}
									retries.Add(1)
									if time.Now().After(deadline) {
										t.Errorf("delivery %s never decided: %v", id, err)
										break
									}
									time.Sleep(10 * time.Millisecond)
								}
							}
						})
					}
				}
				for j := range deliveries {
					// The loss comes while other workers are admitting.
					if j > 0 && j%(deliveries/(losses+1)) == 0 {
						lose(t, base)
					}
					jobs <- j
				}
				close(jobs)
				wg.Wait()
				if len(decided) != deliveries {
					t.Fatalf("%d of %d deliveries decided", len(decided), deliveries)
				}
				admitted := int64(0)
				for id, d := range decided {
					switch d {
					case Admitted:
						admitted++
					case tc.wantDecision:
					default:
						t.Fatalf("%s: unexpected %v", id, d)
					}
				}
				// The worst case of the package comment: per loss, a step of
				// capacity, or the admissions waiting for a ceiling when more
				// (at most a replica's workers, one recipient each).
				floor := tc.binding - losses*max(base.l.step(tc.binding), workers)
				t.Logf("admitted %d of a limit of %d across %d losses (floor %d); %d admissions retried", admitted, tc.binding, losses, floor, retries.Load())
				if admitted > tc.binding {
					t.Fatalf("admitted %d deliveries, more than the limit of %d", admitted, tc.binding)
				}
				if admitted < floor {
					t.Fatalf("admitted %d deliveries, fewer than %d: the losses cost more capacity than documented", admitted, floor)
				}
			})
		}
	})
}

func TestLedger_restoresCountersFromTheirCeilings(t *testing.T) {
	forEachLedgerBackend(t, func(t *testing.T, srv server) {
		day := "2026-06-01"
		h := newHarness(t, srv, newClock(utc(day+"T12:00:00Z")))
		// Relay limit 100 moves its ceiling in steps of 2, the tenant's 50 in
		// steps of 1.
		for i := 1; i <= 5; i++ {
			wantResult(t, h.admit(req(fmt.Sprint("d", i), "r1", 1, 100, 50)),
				Result{Decision: Admitted, Day: day, RelayCount: int64(i), TenantCount: int64(i)})
		}
		lose(t, h)
		// No more than the ceilings can have been admitted: 6 on the relay
		// (its ceilings went 2, 4, 6), 5 for the tenant, which is exact.
		h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 6, Tenant: 5})
		wantResult(t, h.admit(req("d6", "r1", 1, 100, 50)),
			Result{Decision: Admitted, Day: day, RelayCount: 7, TenantCount: 6})
		// A delivery admitted before the loss and redelivered after it is
		// decided again: its marker went with the rest, so it counts again
		// (the package comment's worst case), never less.
		wantResult(t, h.admit(req("d1", "r1", 1, 100, 50)),
			Result{Decision: Admitted, Day: day, RelayCount: 8, TenantCount: 7})
		// A tenant that never counted anything restores to zero.
		other := req("e1", "r1", 1, 100, 50)
		other.Tenant = "t2"
		wantResult(t, h.admit(other), Result{Decision: Admitted, Day: day, RelayCount: 1, TenantCount: 1})
	})
}

func TestLedger_disabledRelayStaysDisabledAfterALoss(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	ctx := context.Background()
	forEachLedgerBackend(t, func(t *testing.T, srv server) {
		clk := newClock(utc("2026-03-28T21:00:00Z")) // 22:00 in Berlin
		h := newHarness(t, srv, clk)
		fail := func(l *Limits, relay string) (int, bool) {
			t.Helper()
			n, now, err := l.RecordFailure(ctx, tenant, relay, berlin)
			if err != nil {
				t.Fatal(err)
			}
			return n, now
		}
		disabled := func(l *Limits, relay string) bool {
			t.Helper()
			off, err := l.IsDisabled(ctx, tenant, relay, berlin)
			if err != nil {
				t.Fatal(err)
			}
			return off
		}
		for i := 1; i <= 3; i++ {
			if n, now := fail(h.l, "r1"); n != i || now != (i == 3) {
				t.Fatalf("failure %d of r1: (%d, %v)", i, n, now)
			}
		}
		fail(h.l, "r2")
		fail(h.l, "r2")
		lose(t, h)

		// Another process (the router) finds r1 disabled still.
		router := srv.replica(t, h.prefix, WithClock(clk.Now))
		if !disabled(router, "r1") {
			t.Fatal("relay r1, disabled before Redis lost its data, is enabled after")
		}
		if err := router.RecordSuccess(ctx, tenant, "r1", berlin); err != nil {
			t.Fatal(err)
		}
		if !disabled(h.l, "r1") {
			t.Fatal("a success re-enabled r1 after the loss")
		}
		// r2's two failures were not disabling it and are not kept: it needs
		// three fresh ones (the package comment's worst case).
		if disabled(router, "r2") {
			t.Fatal("relay r2 disabled after two failures")
		}
		if n, _ := fail(router, "r2"); n != 1 {
			t.Fatalf("r2's first failure after the loss counts %d, want 1", n)
		}
		// Berlin's midnight: a new day, every relay usable again.
		clk.Set(utc("2026-03-28T23:00:00Z"))
		if disabled(router, "r1") {
			t.Fatal("r1 still disabled on the next day")
		}
	})
}

// TestKafkaLedger_entriesSeeEveryAppendBeforeTheCall checks the Ledger
// contract against the embedded broker: another process's appends are seen,
// the highest value per counter wins whatever order replicas wrote in, and
// spaces and tenants are kept apart.
func TestKafkaLedger_entriesSeeEveryAppendBeforeTheCall(t *testing.T) {
	cfg := testkit.BusConfig(testkit.StartBroker(t))
	writer, reader := NewKafkaLedger(cfg, nil), NewKafkaLedger(cfg, nil)
	t.Cleanup(func() { _ = writer.Close(); _ = reader.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	appendAll := func(es ...LedgerEntry) {
		t.Helper()
		for _, e := range es {
			if err := writer.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries := func(space, tenant string) []string {
		t.Helper()
		es, err := reader.Entries(ctx, space, tenant)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, fmt.Sprintf("%s %s %d", e.Day, e.Counter, e.Value))
		}
		sort.Strings(out)
		return out
	}
	e := func(space, tenant, day, counter string, v int64) LedgerEntry {
		return LedgerEntry{Space: space, Tenant: tenant, Day: day, Counter: counter, Value: v}
	}
	if got := entries("mb:q:", "t1"); len(got) != 0 {
		t.Fatalf("empty ledger has entries %v", got)
	}
	appendAll(
		e("mb:q:", "t1", "2026-06-01", "relay:r1", 5),
		e("mb:q:", "t1", "2026-06-01", "relay:r1", 9),
		e("mb:q:", "t1", "2026-06-01", "relay:r1", 7), // a slower replica's
		e("mb:q:", "t1", "2026-06-01", "tenant", 3),
		e("mb:q:", "t1", "2026-06-01", "disabled:r2", 3),
		e("mb:q:", "t2", "2026-06-01", "tenant", 40),
		e("test:", "t1", "2026-06-01", "tenant", 50),
	)
	want := []string{"2026-06-01 disabled:r2 3", "2026-06-01 relay:r1 9", "2026-06-01 tenant 3"}
	if got := entries("mb:q:", "t1"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	// The reader keeps following: what is appended later is seen too.
	appendAll(e("mb:q:", "t1", "2026-06-01", "tenant", 4))
	want[2] = "2026-06-01 tenant 4"
	if got := entries("mb:q:", "t1"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("entries after another append %v, want %v", got, want)
	}
	if got := entries("test:", "t1"); fmt.Sprint(got) != "[2026-06-01 tenant 50]" {
		t.Fatalf("entries of another space %v", got)
	}
}
