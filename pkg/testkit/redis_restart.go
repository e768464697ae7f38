package testkit

import (
	"errors"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// RedisServer is a private redis-server, without persistence, that a test
// can restart empty on the same address: what happens to a cache that
// is restarted in the middle of the day.
type RedisServer struct {
	// Addr is host:port, the same across restarts.
	Addr string

	t    testing.TB
	bin  string
	port int

	mu   sync.Mutex
	stop func()
}

// StartRestartableRedis starts a RedisServer that is killed when t ends. It
// needs the redis-server binary (a shared REDIS_ADDR server cannot be
// restarted); without it the test fails when CI is set and is skipped
// otherwise.
func StartRestartableRedis(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		requireRedisBinary(t, "redis-server not found on PATH: install it (apt-get install redis-server) to run tests that restart Redis")
	}
	var lastErr error
	for range redisStartAttempts {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr, stop, err := startRedisOn(t, bin, port)
		if err == nil {
			s := &RedisServer{Addr: addr, t: t, bin: bin, port: port, stop: stop}
			t.Cleanup(func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				s.stop()
			})
			return s
		}
		if lastErr = err; !errors.Is(err, errRedisExited) {
			break
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

// Restart kills the server and starts a new, empty one on the same port,
// returning once it answers PING. Clients see their connections drop and
// reconnect to a server that holds no keys and no cached scripts.
func (s *RedisServer) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
	// Another process may take the port in the moment it is free; it is
	// one of the kernel's ephemeral ports, so that is rare and brief.
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		_, stop, err := startRedisOn(s.t, s.bin, s.port)
		if err == nil {
			s.stop = stop
			return
		}
		if !errors.Is(err, errRedisExited) || time.Now().After(deadline) {
			s.stop = func() {}
			s.t.Fatalf("restart redis-server on %s: %v", s.Addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
