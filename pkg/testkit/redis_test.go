package testkit

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestStartRedis_servesAnEmptyPrivateServerAndStopsItAtCleanup(t *testing.T) {
	var addr string
	t.Run("server", func(t *testing.T) {
		addr = StartRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		ctx := context.Background()
		if n, err := rdb.DBSize(ctx).Result(); err != nil || n != 0 {
			t.Fatalf("DBSIZE = %d, %v; want an empty server", n, err)
		}
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	})
	if addr == os.Getenv("REDIS_ADDR") {
		t.Skip("running against the shared REDIS_ADDR server")
	}
	if err := pingOnce(addr); err == nil {
		t.Fatalf("redis-server at %s still answers after its test ended", addr)
	}
}

func TestStartRedis_givesEachTestItsOwnServer(t *testing.T) {
	a, b := StartRedis(t), StartRedis(t)
	if a == b && a != os.Getenv("REDIS_ADDR") {
		t.Fatalf("two StartRedis calls returned the same address %s", a)
	}
}

func TestStartRedisCluster_refusesKeysOfDifferentSlotsLikeAnyCluster(t *testing.T) {
	addr := StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	defer rdb.Close()
	ctx := context.Background()
	cases := []struct {
		name      string
		keys      []string
		wantCross bool
	}{
		{"sameHashTagIsOneSlot", []string{"{t1}:a", "{t1}:b"}, false},
		{"differentKeysAreCrossSlot", []string{"a", "b"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A script goes to one node with all its keys; the server checks
			// their slots itself.
			err := rdb.Eval(ctx, "return redis.call('MGET', KEYS[1], KEYS[2])", tc.keys).Err()
			if gotCross := err != nil && strings.Contains(err.Error(), "CROSSSLOT"); gotCross != tc.wantCross {
				t.Fatalf("EVAL on %v: err = %v, want CROSSSLOT %v", tc.keys, err, tc.wantCross)
			}
		})
	}
}

func TestStartRestartableRedis_restartsEmptyOnTheSameAddress(t *testing.T) {
	srv := StartRestartableRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	srv.Restart()
	// The same client reconnects to the new server, which holds nothing.
	if n, err := rdb.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE after restart = %d, %v; want an empty server at %s", n, err, srv.Addr)
	}
}
