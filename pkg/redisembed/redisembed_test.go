package redisembed

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func start(t *testing.T, addr string) (string, *redis.Client) {
	t.Helper()
	got, stop, err := Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	rdb := redis.NewClient(&redis.Options{Addr: got})
	t.Cleanup(func() { _ = rdb.Close() })
	return got, rdb
}

func TestStart_servesRedisOnARealPort(t *testing.T) {
	cases := []struct {
		name string
		addr string
	}{
		{"emptyAddressPicksAFreeLoopbackPort", ""},
		{"portZeroPicksAFreePort", "127.0.0.1:0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, rdb := start(t, tc.addr)
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host != "127.0.0.1" || port == "0" {
				t.Fatalf("address %q, want 127.0.0.1 with a real port", addr)
			}
			ctx := context.Background()
			// Scripts run, and can read the server's clock as the rate
			// limiter does.
			v, err := rdb.Eval(ctx, "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('TIME')", []string{"k"}, "v").Slice()
			if err != nil || len(v) != 2 {
				t.Fatalf("EVAL = %v, %v", v, err)
			}
			if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
				t.Fatalf("GET = %q, %v", got, err)
			}
		})
	}
}

func TestStart_stopFreesTheAddressForTheNextRun(t *testing.T) {
	addr, stop, err := Start("")
	if err != nil {
		t.Fatal(err)
	}
	stop()
	stop() // idempotent
	again, stopAgain, err := Start(addr)
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	stopAgain()
	if again != addr {
		t.Fatalf("restarted on %s, want %s", again, addr)
	}
}

func TestStart_expiresKeysByTheWallClock(t *testing.T) {
	_, rdb := start(t, "")
	ctx := context.Background()
	if err := rdb.Set(ctx, "short", "v", time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "long", "v", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	// Poll rather than sleep a fixed time: how late the key goes depends on
	// the machine, only that it goes does not.
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := rdb.Get(ctx, "short").Err()
		if errors.Is(err, redis.Nil) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("a key with a 1s TTL never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n, err := rdb.Exists(ctx, "long").Result(); err != nil || n != 1 {
		t.Fatalf("the key with a 1h TTL went too: %d, %v", n, err)
	}
}
