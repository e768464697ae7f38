package limits

import (
	"sync"
	"time"
)

var zones sync.Map // IANA name → *time.Location

// Zone returns the location of an IANA time zone name, cached, because
// time.LoadLocation reads the zone database on every call and every
// delivery needs its tenant's zone. An empty or unknown name is UTC: the
// config service validates zones, and a bad one must not stop mail.
func Zone(name string) *time.Location {
	if name == "" {
		return time.UTC
	}
	if loc, ok := zones.Load(name); ok {
		return loc.(*time.Location)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		loc = time.UTC
	}
	zones.Store(name, loc)
	return loc
}
