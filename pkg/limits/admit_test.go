package limits

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

const tenant = "t1"

// req builds a request for tenant t1 in UTC unless changed.
func req(delivery, relay string, n int, relayLimit, tenantLimit int64) Request {
	return Request{Tenant: tenant, DeliveryID: delivery, RelayID: relay, Recipients: n, RelayLimit: relayLimit, TenantLimit: tenantLimit}
}

func TestAdmit(t *testing.T) {
	day := "2026-06-01"
	noon := utc(day + "T12:00:00Z")
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"admitsUpToTheRelayLimitExactlyAndRefusesTheNext", func(t *testing.T, h *harness) {
			for i := 1; i <= 3; i++ {
				wantResult(t, h.admit(req(fmt.Sprint("d", i), "r1", 1, 3, 0)),
					Result{Decision: Admitted, Day: day, RelayCount: int64(i), TenantCount: int64(i)})
			}
			wantResult(t, h.admit(req("d4", "r1", 1, 3, 0)),
				Result{Decision: RelayExhausted, Day: day, RelayCount: 3, TenantCount: 3})
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 3, Tenant: 3})
		}},
		{"countsRecipientsNotMessages", func(t *testing.T, h *harness) {
			wantResult(t, h.admit(req("d1", "r1", 2, 3, 0)), Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2})
			// 2 + 2 would pass 3: refused whole, nothing counted.
			wantResult(t, h.admit(req("d2", "r1", 2, 3, 0)), Result{Decision: RelayExhausted, Day: day, RelayCount: 2, TenantCount: 2})
			// 2 + 1 reaches 3 exactly.
			wantResult(t, h.admit(req("d3", "r1", 1, 3, 0)), Result{Decision: Admitted, Day: day, RelayCount: 3, TenantCount: 3})
		}},
		{"zeroLimitsAreUnlimited", func(t *testing.T, h *harness) {
			for i := range 20 {
				if got := h.admit(req(fmt.Sprint("d", i), "r1", 50, 0, 0)); got.Decision != Admitted {
					t.Fatalf("delivery %d: %v", i, got.Decision)
				}
			}
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 1000, Tenant: 1000})
		}},
		{"tenantLimitRefusesWithoutCountingOnTheRelay", func(t *testing.T, h *harness) {
			wantResult(t, h.admit(req("d1", "r1", 2, 0, 2)), Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2})
			wantResult(t, h.admit(req("d2", "r2", 1, 10, 2)), Result{Decision: TenantExhausted, Day: day, RelayCount: 0, TenantCount: 2})
			h.wantUsage(tenant, "r2", nil, Usage{Day: day, Relay: 0, Tenant: 2})
		}},
		{"relayExhaustedDoesNotConsumeTenantQuota", func(t *testing.T, h *harness) {
			wantResult(t, h.admit(req("d1", "r1", 1, 1, 2)), Result{Decision: Admitted, Day: day, RelayCount: 1, TenantCount: 1})
			wantResult(t, h.admit(req("d2", "r1", 1, 1, 2)), Result{Decision: RelayExhausted, Day: day, RelayCount: 1, TenantCount: 1})
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 1, Tenant: 1})
			// The tenant's second recipient is still there for the fallback route.
			wantResult(t, h.admitDefault(Request{Tenant: tenant, DeliveryID: "d2", Recipients: 1, TenantLimit: 2}),
				Result{Decision: Admitted, Day: day, TenantCount: 2})
		}},
		{"defaultServerAppliesOnlyTheTenantLimit", func(t *testing.T, h *harness) {
			wantResult(t, h.admitDefault(Request{Tenant: tenant, DeliveryID: "d1", Recipients: 2, TenantLimit: 3}),
				Result{Decision: Admitted, Day: day, TenantCount: 2})
			wantResult(t, h.admitDefault(Request{Tenant: tenant, DeliveryID: "d2", Recipients: 2, TenantLimit: 3}),
				Result{Decision: TenantExhausted, Day: day, TenantCount: 2})
			// Relay counters are untouched by default-server mail.
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 0, Tenant: 2})
		}},
		{"redeliveryReturnsTheFirstDecisionAndDoesNotDoubleCount", func(t *testing.T, h *harness) {
			first := h.admit(req("d1", "r1", 2, 3, 0))
			wantResult(t, first, Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2})
			for range 3 {
				again := first
				again.Replayed = true
				wantResult(t, h.admit(req("d1", "r1", 2, 3, 0)), again)
			}
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 2, Tenant: 2})
		}},
		{"redeliveredRefusalStaysRefusedAfterRoomFreesUp", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 1, 1, 0))
			refused := h.admit(req("d2", "r1", 1, 1, 0))
			wantResult(t, refused, Result{Decision: RelayExhausted, Day: day, RelayCount: 1, TenantCount: 1})
			h.refund(tenant, "d1")
			refused.Replayed = true
			// d2 already went to mail.fallback; a redelivery must not also
			// send it through r1.
			wantResult(t, h.admit(req("d2", "r1", 1, 1, 0)), refused)
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 0, Tenant: 0})
		}},
		{"refundReleasesTheCountOnce", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 2, 0, 0))
			h.admit(req("d2", "r1", 1, 0, 0))
			if !h.refund(tenant, "d1") {
				t.Fatal("first refund released nothing")
			}
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 1, Tenant: 1})
			if h.refund(tenant, "d1") {
				t.Fatal("second refund released again")
			}
			if h.refund(tenant, "never-admitted") {
				t.Fatal("refund of an unknown delivery released something")
			}
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 1, Tenant: 1})
		}},
		{"refundedDeliveryIsDecidedAfreshOnItsNextAttempt", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 2, 0, 0))
			h.refund(tenant, "d1")
			wantResult(t, h.admit(req("d1", "r1", 2, 0, 0)), Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2})
		}},
		{"refundOfARefusedDeliveryReleasesNothing", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 1, 1, 0))
			h.admit(req("d2", "r1", 1, 1, 0))
			if h.refund(tenant, "d2") {
				t.Fatal("refund of a refused delivery released something")
			}
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 1, Tenant: 1})
		}},
		{"reRoutedDeliveryMovesItsCountInsteadOfCountingTwice", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 2, 0, 5))
			// r1 failed before sending; the router re-routes d1 to r2.
			wantResult(t, h.admit(req("d1", "r2", 2, 0, 5)), Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2})
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 0, Tenant: 2})
			// ... and then to the default server.
			wantResult(t, h.admitDefault(Request{Tenant: tenant, DeliveryID: "d1", Recipients: 2, TenantLimit: 5}),
				Result{Decision: Admitted, Day: day, TenantCount: 2})
			h.wantUsage(tenant, "r2", nil, Usage{Day: day, Relay: 0, Tenant: 2})
			// A stale redelivery of the first route replays, counting nothing.
			wantResult(t, h.admit(req("d1", "r1", 2, 0, 5)), Result{Decision: Admitted, Day: day, RelayCount: 2, TenantCount: 2, Replayed: true})
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 0, Tenant: 2})
			if !h.refund(tenant, "d1") {
				t.Fatal("refund after re-routes released nothing")
			}
			h.wantUsage(tenant, "", nil, Usage{Day: day, Tenant: 0})
		}},
		{"reRouteOnTheNextDayReleasesTheFirstDaysCount", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 1, 0, 0))
			h.clock.Set(noon.Add(24 * time.Hour))
			wantResult(t, h.admitDefault(Request{Tenant: tenant, DeliveryID: "d1", Recipients: 1}),
				Result{Decision: Admitted, Day: "2026-06-02", TenantCount: 1})
			h.clock.Set(noon)
			h.wantUsage(tenant, "r1", nil, Usage{Day: day, Relay: 0, Tenant: 0})
		}},
		{"tenantsDoNotShareCounters", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 1, 1, 1))
			other := req("d1", "r1", 1, 1, 1)
			other.Tenant = "t2"
			wantResult(t, h.admit(other), Result{Decision: Admitted, Day: day, RelayCount: 1, TenantCount: 1})
		}},
		{"countersExpireAfterTheRetentionFollowingTheirDay", func(t *testing.T, h *harness) {
			h.admit(req("d1", "r1", 1, 0, 0))
			// From noon: 12h left of the day plus 48h of retention.
			want := 60 * time.Hour
			for _, key := range []string{h.l.relayDayKey(tenant, "r1", day), h.l.tenantDayKey(tenant, day), h.l.seenKey(tenant, "d1")} {
				ttl, err := h.rdb.TTL(context.Background(), key).Result()
				if err != nil {
					t.Fatal(err)
				}
				if ttl <= want-time.Minute || ttl > want {
					t.Fatalf("TTL of %s = %s, want about %s", key, ttl, want)
				}
			}
		}},
	}
	forEachBackend(t, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tc.run(t, newHarness(t, srv, newClock(noon)))
			})
		}
	})
}

func TestAdmit_dayBoundaryFollowsTheTenantsZone(t *testing.T) {
	cases := []struct {
		name string
		zone string
		// first admits the only allowed recipient; sameDay is the last
		// instant of that local day, refused; nextDay is the next local
		// midnight, admitted again.
		first, sameDay, nextDay string
		firstDay, nextDayKey    string
	}{
		{"berlin ordinary winter midnight", "Europe/Berlin",
			"2026-03-28T00:00:00Z", "2026-03-28T22:59:59Z", "2026-03-28T23:00:00Z", "2026-03-28", "2026-03-29"},
		{"berlin 23-hour spring-forward day", "Europe/Berlin",
			"2026-03-28T23:00:00Z", "2026-03-29T21:59:59Z", "2026-03-29T22:00:00Z", "2026-03-29", "2026-03-30"},
		{"berlin 25-hour fall-back day", "Europe/Berlin",
			"2026-10-24T22:00:00Z", "2026-10-25T22:59:59Z", "2026-10-25T23:00:00Z", "2026-10-25", "2026-10-26"},
		{"new york spring-forward day", "America/New_York",
			"2026-03-08T05:00:00Z", "2026-03-09T03:59:59Z", "2026-03-09T04:00:00Z", "2026-03-08", "2026-03-09"},
		{"new york fall-back day", "America/New_York",
			"2026-11-01T04:00:00Z", "2026-11-02T04:59:59Z", "2026-11-02T05:00:00Z", "2026-11-01", "2026-11-02"},
		{"utc", "UTC",
			"2026-03-28T00:00:00Z", "2026-03-28T23:59:59Z", "2026-03-29T00:00:00Z", "2026-03-28", "2026-03-29"},
	}
	forEachBackend(t, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				loc := mustZone(t, tc.zone)
				clk := newClock(utc(tc.first))
				h := newHarness(t, srv, clk)
				r := func(id string) Request {
					x := req(id, "r1", 1, 1, 1)
					x.Zone = loc
					return x
				}
				wantResult(t, h.admit(r("d1")), Result{Decision: Admitted, Day: tc.firstDay, RelayCount: 1, TenantCount: 1})
				clk.Set(utc(tc.sameDay))
				wantResult(t, h.admit(r("d2")), Result{Decision: RelayExhausted, Day: tc.firstDay, RelayCount: 1, TenantCount: 1})
				clk.Set(utc(tc.nextDay))
				wantResult(t, h.admit(r("d3")), Result{Decision: Admitted, Day: tc.nextDayKey, RelayCount: 1, TenantCount: 1})
				// The refused delivery replays its refusal, with its own day.
				wantResult(t, h.admit(r("d2")), Result{Decision: RelayExhausted, Day: tc.firstDay, RelayCount: 1, TenantCount: 1, Replayed: true})
			})
		}
	})
}

func TestAdmit_refusesMalformedRequests(t *testing.T) {
	ok := req("d1", "r1", 1, 0, 0)
	cases := []struct {
		name  string
		admit func(l *Limits, r Request) error
		edit  func(r *Request)
	}{
		{"noTenant", admitErr, func(r *Request) { r.Tenant = "" }},
		{"tenantWithBraceWouldBreakTheHashTag", admitErr, func(r *Request) { r.Tenant = "a}b" }},
		{"noDelivery", admitErr, func(r *Request) { r.DeliveryID = "" }},
		{"noRecipients", admitErr, func(r *Request) { r.Recipients = 0 }},
		{"negativeLimit", admitErr, func(r *Request) { r.TenantLimit = -1 }},
		{"relayAdmissionWithoutRelay", admitErr, func(r *Request) { r.RelayID = "" }},
		{"defaultAdmissionWithRelay", admitDefaultErr, func(r *Request) {}},
	}
	forEachBackend(t, func(t *testing.T, srv server) {
		h := newHarness(t, srv, newClock(utc("2026-06-01T12:00:00Z")))
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := ok
				tc.edit(&r)
				if err := tc.admit(h.l, r); !errors.Is(err, ErrInvalid) {
					t.Fatalf("error = %v, want ErrInvalid", err)
				}
			})
		}
		if n, err := h.rdb.DBSize(context.Background()).Result(); err != nil || n != 0 {
			t.Fatalf("malformed requests wrote %d keys (%v)", n, err)
		}
	})
}

func admitErr(l *Limits, r Request) error {
	_, err := l.Admit(context.Background(), r)
	return err
}

func admitDefaultErr(l *Limits, r Request) error {
	_, err := l.AdmitDefault(context.Background(), r)
	return err
}

// TestAdmit_parallelReplicasNeverPassTheLimit runs several independent
// clients (as several quota replicas would be), each with many goroutines,
// admitting more deliveries than the limit allows, every delivery twice
// (a redelivery racing its original).
func TestAdmit_parallelReplicasNeverPassTheLimit(t *testing.T) {
	const (
		replicas   = 4
		workers    = 8 // per replica
		deliveries = 300
	)
	cases := []struct {
		name                    string
		relayLimit, tenantLimit int64
		wantAdmitted            int
		wantDecision            Decision // for the rest
	}{
		{"relayLimitBinds", 100, 0, 100, RelayExhausted},
		{"tenantLimitBinds", 200, 70, 70, TenantExhausted},
	}
	forEachBackendWhere(t, concurrent, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				clk := newClock(utc("2026-06-01T12:00:00Z"))
				base := newHarness(t, srv, clk)
				var limitsOf [replicas]*Limits
				for i := range limitsOf {
					limitsOf[i] = srv.replica(t, base.prefix, WithClock(clk.Now))
				}
				jobs := make(chan int)
				var mu sync.Mutex
				decided := map[string][]Result{}
				var wg sync.WaitGroup
				errs := make(chan error, replicas*workers)
				for r := range replicas {
					for range workers {
						wg.Go(func() {
							for j := range jobs {
								id := fmt.Sprint("d", j/2) // each delivery arrives twice
								res, err := limitsOf[r].Admit(context.Background(), req(id, "r1", 1, tc.relayLimit, tc.tenantLimit))
								if err != nil {
									errs <- err
									return
								}
								mu.Lock()
								decided[id] = append(decided[id], res)
								mu.Unlock()
							}
						})
					}
				}
				for j := range 2 * deliveries {
					jobs <- j
				}
				close(jobs)
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				admitted := 0
				for id, rs := range decided {
					if len(rs) != 2 {
						t.Fatalf("%s decided %d times", id, len(rs))
					}
					if rs[0].Decision != rs[1].Decision || rs[0].Replayed == rs[1].Replayed {
						t.Fatalf("%s: original and redelivery disagree: %+v", id, rs)
					}
					switch rs[0].Decision {
					case Admitted:
						admitted++
					case tc.wantDecision:
					default:
						t.Fatalf("%s: unexpected %v", id, rs[0].Decision)
					}
				}
				if admitted != tc.wantAdmitted {
					t.Fatalf("admitted %d deliveries, want exactly %d", admitted, tc.wantAdmitted)
				}
				base.wantUsage(tenant, "r1", nil, Usage{Day: "2026-06-01", Relay: int64(admitted), Tenant: int64(admitted)})
			})
		}
	})
}

// BenchmarkAdmit measures admissions of distinct deliveries against one
// relay, from 8 goroutines per CPU sharing one client (as one replica's
// partition handlers would).
func BenchmarkAdmit(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			h := newHarness(b, be.run(b), newClock(utc("2026-06-01T12:00:00Z")))
			var mu sync.Mutex
			next := 0
			b.ReportAllocs()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					mu.Lock()
					next++
					id := fmt.Sprint("d", next)
					mu.Unlock()
					if _, err := h.l.Admit(context.Background(), req(id, "r1", 1, 0, 0)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
