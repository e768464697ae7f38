// Package allocs measures what a function allocates, for the tests that
// bound a parser's work by its input's length (fuzzed inputs from
// producers and from bounces off the internet must cost linear work).
// It imports nothing of mailbus, so that any package's internal tests can
// use it.
package allocs

import (
	"math"
	"runtime/metrics"
)

// Bytes returns the bytes fn allocates on the heap: the least of three
// calls, since the runtime counts every goroutine's allocations and the
// fuzzing engine's own goroutines allocate beside fn (a CI run once saw
// 1.2 MB for a 25-byte address that allocates a few hundred bytes alone).
// fn must do the same work each time it is called.
func Bytes(fn func()) uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	least := uint64(math.MaxUint64)
	for range 3 {
		metrics.Read(s)
		before := s[0].Value.Uint64()
		fn()
		metrics.Read(s)
		least = min(least, s[0].Value.Uint64()-before)
	}
	return least
}
