package limits

import (
	"context"
	"reflect"
	"testing"
)

// TestDayState reads back what admissions and failures counted today, and
// starts from zero at the tenant's midnight.
func TestDayState(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	ctx := context.Background()
	forEachBackend(t, func(t *testing.T, srv server) {
		clk := newClock(utc("2026-03-28T21:00:00Z")) // 22:00 in Berlin
		h := newHarness(t, srv, clk)
		h.admit(Request{Tenant: tenant, DeliveryID: "d1", RelayID: "r1", Recipients: 3, RelayLimit: 10, Zone: berlin})
		h.admit(Request{Tenant: tenant, DeliveryID: "d2", RelayID: "r2", Recipients: 2, Zone: berlin})
		h.admitDefault(Request{Tenant: tenant, DeliveryID: "d3", Recipients: 4, Zone: berlin})
		for range DefaultFailureThreshold {
			if _, _, err := h.l.RecordFailure(ctx, tenant, "r2", berlin); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := h.l.RecordFailure(ctx, tenant, "r3", berlin); err != nil {
			t.Fatal(err)
		}

		got, err := h.l.DayState(ctx, tenant, []string{"r1", "r2", "r3", "unused"}, berlin)
		if err != nil {
			t.Fatal(err)
		}
		want := DayState{Day: "2026-03-28", Tenant: 9, Relays: []RelayState{
			{ID: "r1", Used: 3},
			{ID: "r2", Used: 2, Failures: 3, Disabled: true},
			{ID: "r3", Failures: 1},
			{ID: "unused"},
		}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DayState =\n %+v\nwant\n %+v", got, want)
		}

		clk.Set(utc("2026-03-28T23:00:00Z")) // Berlin's midnight
		got, err = h.l.DayState(ctx, tenant, []string{"r1", "r2"}, berlin)
		if err != nil {
			t.Fatal(err)
		}
		want = DayState{Day: "2026-03-29", Relays: []RelayState{{ID: "r1"}, {ID: "r2"}}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DayState after midnight = %+v, want %+v", got, want)
		}
	})
}
