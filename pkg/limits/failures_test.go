package limits

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRelayFailures(t *testing.T) {
	type step struct {
		at           string // clock, UTC; empty keeps it
		fail         bool   // RecordFailure, else RecordSuccess
		consecutive  int    // wanted from RecordFailure
		disabledNow  bool   // wanted from RecordFailure
		wantDisabled bool   // IsDisabled after the step
	}
	const evening = "2026-03-28T21:00:00Z" // 22:00 in Berlin
	fail := func(n int, now, disabled bool) step {
		return step{fail: true, consecutive: n, disabledNow: now, wantDisabled: disabled}
	}
	success := func(disabled bool) step { return step{wantDisabled: disabled} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"disablesOnTheThirdConsecutiveFailure", []step{
			fail(1, false, false), fail(2, false, false), fail(3, true, true), fail(4, false, true),
		}},
		{"successResetsTheCount", []step{
			fail(1, false, false), fail(2, false, false), success(false),
			fail(1, false, false), fail(2, false, false), fail(3, true, true),
		}},
		{"successDoesNotReenableADisabledRelay", []step{
			fail(1, false, false), fail(2, false, false), fail(3, true, true), success(true),
		}},
		{"disabledRelayIsUsableAgainAtTheTenantsMidnight", []step{
			fail(1, false, false), fail(2, false, false), fail(3, true, true),
			// 23:59:59 in Berlin: still the 28th there, still disabled.
			{at: "2026-03-28T22:59:59Z", wantDisabled: true, fail: true, consecutive: 4},
			// Berlin's midnight (23:00 UTC): a new day, a fresh count.
			{at: "2026-03-28T23:00:00Z", fail: true, consecutive: 1},
		}},
		{"failuresOnTwoDaysAreNotConsecutive", []step{
			fail(1, false, false), fail(2, false, false),
			{at: "2026-03-28T23:00:00Z", fail: true, consecutive: 1},
			fail(2, false, false),
		}},
	}
	berlin := mustZone(t, "Europe/Berlin")
	ctx := context.Background()
	forEachBackend(t, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				clk := newClock(utc(evening))
				h := newHarness(t, srv, clk)
				for i, s := range tc.steps {
					if s.at != "" {
						clk.Set(utc(s.at))
					}
					if s.fail {
						n, now, err := h.l.RecordFailure(ctx, tenant, "r1", berlin)
						if err != nil {
							t.Fatal(err)
						}
						if n != s.consecutive || now != s.disabledNow {
							t.Fatalf("step %d: RecordFailure = (%d, %v), want (%d, %v)", i, n, now, s.consecutive, s.disabledNow)
						}
					} else if err := h.l.RecordSuccess(ctx, tenant, "r1", berlin); err != nil {
						t.Fatal(err)
					}
					disabled, err := h.l.IsDisabled(ctx, tenant, "r1", berlin)
					if err != nil {
						t.Fatal(err)
					}
					if disabled != s.wantDisabled {
						t.Fatalf("step %d: IsDisabled = %v, want %v", i, disabled, s.wantDisabled)
					}
				}
				if disabled, _ := h.l.IsDisabled(ctx, tenant, "r2", berlin); disabled {
					t.Fatal("another relay of the tenant is disabled too")
				}
			})
		}
	})
}

func TestRecordFailure_disablesOnceAcrossReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		clk := newClock(utc("2026-06-01T12:00:00Z"))
		h := newHarness(t, srv, clk)
		var disabledNow atomic.Int32
		var wg sync.WaitGroup
		for range 4 {
			l := srv.replica(t, h.prefix, WithClock(clk.Now))
			for range 5 {
				wg.Go(func() {
					_, now, err := l.RecordFailure(context.Background(), tenant, "r1", nil)
					if err != nil {
						t.Error(err)
					}
					if now {
						disabledNow.Add(1)
					}
				})
			}
		}
		wg.Wait()
		if got := disabledNow.Load(); got != 1 {
			t.Fatalf("%d replicas saw the relay become disabled, want exactly 1", got)
		}
		// The disabling lasts until the next UTC midnight, 12h away.
		ttl, err := h.rdb.TTL(context.Background(), h.l.failKey(tenant, "r1", "2026-06-01")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 12*time.Hour-time.Minute || ttl > 12*time.Hour {
			t.Fatalf("failure counter TTL = %s, want about 12h", ttl)
		}
	})
}
