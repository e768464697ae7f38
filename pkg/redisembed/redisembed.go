// Package redisembed runs an in-process Redis-protocol server for
// `mailbus dev`, so that a newcomer can run the whole pipeline without
// installing Redis. It wraps github.com/alicebob/miniredis/v2 and listens on
// a real TCP port, so services connect to it exactly as they connect to a
// real Redis (REDIS_ADDR).
//
// Limits compared with redis-server, as they matter to mailbus:
//   - Nothing is persisted: daily counters, idempotency markers and relay
//     failure state start empty after every restart of `mailbus dev`.
//   - Lua runs on gopher-lua (Lua 5.1, like Redis). The quota scripts and the
//     GCRA rate limiter (which reads TIME) work unchanged, as the quota
//     tests prove by running against both servers; cjson is there, the
//     cmsgpack, struct and bit libraries are not.
//   - It is a single node: Redis Cluster redirections and CROSSSLOT checks
//     are never exercised.
//   - Every command takes one global lock, and every EVAL builds a fresh Lua
//     state: about 0.3 ms per quota admission, plenty for development
//     traffic but not for load tests.
//   - Keys expire up to a second late: TTLs run down once per second (see
//     runDownTTLs); miniredis' default is not to expire keys at all.
package redisembed

import (
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// expiryTick is how often key TTLs run down; keys expire up to this late.
const expiryTick = time.Second

// Start starts an in-process Redis-protocol server listening on addr
// ("127.0.0.1:6379", or "127.0.0.1:0" for any free port; empty means
// "127.0.0.1:0") and returns the address it listens on and a function that
// stops it.
func Start(addr string) (string, func(), error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr(addr); err != nil {
		return "", nil, fmt.Errorf("start embedded redis on %s: %w", addr, err)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go runDownTTLs(m, done, stopped)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			close(done)
			<-stopped
			m.Close()
		})
	}
	return m.Addr(), stop, nil
}

// runDownTTLs makes TTLs follow the wall clock. miniredis only counts TTLs
// down when told to; its ClockTTL mode does so on every command, at a cost
// proportional to the number of keys with a TTL (10 ms per command at 8000
// keys), so we fast-forward once per tick instead.
func runDownTTLs(m *miniredis.Miniredis, done <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	t := time.NewTicker(expiryTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			m.FastForward(now.Sub(last))
			last = now
		}
	}
}
