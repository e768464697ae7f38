package limits

import "time"

// dayLayout is the calendar-day format used in keys and in
// Delivery.quota_day.
const dayLayout = "2006-01-02"

// DayKey returns the calendar day (YYYY-MM-DD) that t falls on in loc; nil
// loc means UTC. Converting the instant into the zone first is what keeps
// days correct across DST changes: a day is 23 or 25 hours long there, so
// no fixed offset or 24-hour arithmetic would do.
func DayKey(t time.Time, loc *time.Location) string {
	return t.In(zone(loc)).Format(dayLayout)
}

// NextMidnight returns the first instant after t that falls on the next
// calendar day in loc; nil loc means UTC. It is when daily counters reset and
// a disabled relay becomes usable again.
func NextMidnight(t time.Time, loc *time.Location) time.Time {
	loc = zone(loc)
	y, m, d := t.In(loc).Date()
	next := time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	// Some zones (America/Santiago, America/Havana, formerly Asia/Beirut)
	// move their clocks at midnight, so 00:00 may not exist on the next day.
	// time.Date then may resolve to an instant that is still on day d; the
	// next day really begins where that zone period ends.
	if next.In(loc).Day() == d {
		_, end := next.ZoneBounds()
		next = end
	}
	return next
}

func zone(loc *time.Location) *time.Location {
	if loc == nil {
		return time.UTC
	}
	return loc
}
