package limits

import (
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestDayKey_followsTheTenantsCalendarAcrossDST(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	newYork := mustZone(t, "America/New_York")
	cases := []struct {
		name string
		at   string
		loc  *time.Location
		want string
	}{
		{"nil zone is UTC", "2026-03-28T23:30:00Z", nil, "2026-03-28"},
		{"berlin last second before the spring-forward day", "2026-03-28T22:59:59Z", berlin, "2026-03-28"},
		{"berlin midnight starting the 23-hour day", "2026-03-28T23:00:00Z", berlin, "2026-03-29"},
		{"berlin just after clocks jump 02:00 to 03:00", "2026-03-29T01:00:00Z", berlin, "2026-03-29"},
		{"berlin last second of the 23-hour day", "2026-03-29T21:59:59Z", berlin, "2026-03-29"},
		{"berlin midnight after the 23-hour day (CEST)", "2026-03-29T22:00:00Z", berlin, "2026-03-30"},
		{"berlin midnight starting the 25-hour day (CEST)", "2026-10-24T22:00:00Z", berlin, "2026-10-25"},
		{"berlin repeated hour after clocks fall back", "2026-10-25T01:30:00Z", berlin, "2026-10-25"},
		{"berlin last second of the 25-hour day (CET)", "2026-10-25T22:59:59Z", berlin, "2026-10-25"},
		{"berlin midnight after the 25-hour day", "2026-10-25T23:00:00Z", berlin, "2026-10-26"},
		{"new york evening is the previous UTC day", "2026-03-08T04:59:59Z", newYork, "2026-03-07"},
		{"new york midnight of spring-forward day (EST)", "2026-03-08T05:00:00Z", newYork, "2026-03-08"},
		{"new york midnight after spring-forward day (EDT)", "2026-03-09T04:00:00Z", newYork, "2026-03-09"},
		{"new york last second of fall-back day (EST)", "2026-11-02T04:59:59Z", newYork, "2026-11-01"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := DayKey(utc(tc.at), tc.loc); got != tc.want {
				t.Fatalf("DayKey(%s, %v) = %s, want %s", tc.at, tc.loc, got, tc.want)
			}
		})
	}
}

func TestNextMidnight_isTheFirstInstantOfTheNextLocalDay(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	newYork := mustZone(t, "America/New_York")
	santiago := mustZone(t, "America/Santiago")
	cases := []struct {
		name    string
		at      string
		loc     *time.Location
		want    string
		wantLen time.Duration // length of the day that at falls on
	}{
		{"utc", "2026-06-01T12:00:00Z", nil, "2026-06-02T00:00:00Z", 24 * time.Hour},
		{"berlin spring-forward day is 23 hours", "2026-03-29T10:00:00Z", berlin, "2026-03-29T22:00:00Z", 23 * time.Hour},
		{"berlin fall-back day is 25 hours", "2026-10-25T10:00:00Z", berlin, "2026-10-25T23:00:00Z", 25 * time.Hour},
		{"berlin at local midnight is the following midnight", "2026-10-24T22:00:00Z", berlin, "2026-10-25T23:00:00Z", 25 * time.Hour},
		{"new york spring-forward day", "2026-03-08T12:00:00Z", newYork, "2026-03-09T04:00:00Z", 23 * time.Hour},
		{"new york fall-back day", "2026-11-01T12:00:00Z", newYork, "2026-11-02T05:00:00Z", 25 * time.Hour},
		// Chile moves its clocks at 24:00, so 2026-09-06 00:00 never happens
		// there: the day starts at 01:00 -03.
		{"santiago day whose midnight is skipped", "2026-09-05T16:00:00Z", santiago, "2026-09-06T04:00:00Z", 24 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			at := utc(tc.at)
			got := NextMidnight(at, tc.loc)
			if !got.Equal(utc(tc.want)) {
				t.Fatalf("NextMidnight(%s) = %s, want %s", tc.at, got.UTC().Format(time.RFC3339), tc.want)
			}
			if DayKey(got, tc.loc) == DayKey(at, tc.loc) || DayKey(got.Add(-time.Nanosecond), tc.loc) != DayKey(at, tc.loc) {
				t.Fatalf("NextMidnight(%s) = %s is not where the day changes", tc.at, got)
			}
			start := got.Add(-tc.wantLen)
			if DayKey(start, tc.loc) != DayKey(at, tc.loc) || DayKey(start.Add(-time.Nanosecond), tc.loc) == DayKey(at, tc.loc) {
				t.Fatalf("the day of %s is not %s long", tc.at, tc.wantLen)
			}
		})
	}
}
