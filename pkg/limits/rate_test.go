package limits

import (
	"context"
	"testing"
	"time"
)

func TestAllowRate(t *testing.T) {
	// One message an hour with bursts of 5: no message's allowance comes back
	// while the test runs, so the counts are exact however slow the machine.
	const perSecond = 1.0 / 3600
	cases := []struct {
		name string
		run  func(t *testing.T, replicas []*Limits)
	}{
		{"allowsTheBurstThenReturnsRetryAfter", func(t *testing.T, replicas []*Limits) {
			for i := range 5 {
				// Alternate replicas: the schedule is shared through Redis.
				res := allowRate(t, replicas[i%len(replicas)], "r1", perSecond, 5)
				if !res.Allowed || res.RetryAfter != 0 || res.Remaining != 4-i {
					t.Fatalf("message %d: %+v, want allowed with %d remaining", i+1, res, 4-i)
				}
			}
			for i := range 3 {
				res := allowRate(t, replicas[i%len(replicas)], "r1", perSecond, 5)
				if res.Allowed || res.RetryAfter <= 0 || res.RetryAfter > time.Hour {
					t.Fatalf("message %d over the burst: %+v, want refused with 0 < retry-after <= 1h", 6+i, res)
				}
			}
		}},
		{"relaysHaveSeparateSchedules", func(t *testing.T, replicas []*Limits) {
			if res := allowRate(t, replicas[0], "r1", perSecond, 1); !res.Allowed {
				t.Fatalf("r1 first message refused: %+v", res)
			}
			if res := allowRate(t, replicas[0], "r1", perSecond, 1); res.Allowed {
				t.Fatalf("r1 second message allowed: %+v", res)
			}
			if res := allowRate(t, replicas[1], "r2", perSecond, 1); !res.Allowed {
				t.Fatalf("r2 refused because of r1: %+v", res)
			}
		}},
		{"defaultBurstIsOneSecondsWorth", func(t *testing.T, replicas []*Limits) {
			// 3/s: a burst of 3 passes at once (the 4th might too if a third
			// of a second went by, so only the first three are asserted).
			for i := range 3 {
				if res := allowRate(t, replicas[0], "r1", 3, 0); !res.Allowed {
					t.Fatalf("message %d refused: %+v", i+1, res)
				}
			}
			for range 50 {
				if res := allowRate(t, replicas[0], "r2", perSecond, 0); !res.Allowed {
					return // refused after the burst of 1, as it should
				}
			}
			t.Fatal("a fractional rate without a burst allowed 50 messages at once")
		}},
		{"zeroRateIsUnlimited", func(t *testing.T, replicas []*Limits) {
			for range 100 {
				if res := allowRate(t, replicas[0], "r1", 0, 0); !res.Allowed {
					t.Fatalf("unlimited relay refused: %+v", res)
				}
			}
		}},
	}
	forEachBackend(t, func(t *testing.T, srv server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarness(t, srv, newClock(time.Now()))
				other := srv.replica(t, h.prefix)
				tc.run(t, []*Limits{h.l, other})
			})
		}
	})
}

func allowRate(t *testing.T, l *Limits, relay string, perSecond float64, burst int) RateResult {
	t.Helper()
	res, err := l.AllowRate(context.Background(), tenant, relay, perSecond, burst)
	if err != nil {
		t.Fatalf("AllowRate(%s): %v", relay, err)
	}
	return res
}
