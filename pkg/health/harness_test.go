package health

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/redisembed"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// server is a started Redis-protocol server: the real redis-server that
// production runs, and the embedded one of `mailbus dev`, which must
// behave the same.
type server struct{ addr string }

func forEachBackend(t *testing.T, fn func(t *testing.T, srv server)) {
	t.Helper()
	backends := []struct {
		name  string
		start func(testing.TB) string
	}{
		{"redis-server", testkit.StartRedis},
		{"embedded", func(t testing.TB) string {
			addr, stop, err := redisembed.Start("", redisembed.WithDataDir(t.TempDir()))
			if err != nil {
				t.Fatalf("start embedded redis: %v", err)
			}
			t.Cleanup(stop)
			return addr
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, server{addr: b.start(t)}) })
	}
}

func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}
