package redisembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// startIn starts a server that keeps its data in dir.
func startIn(t *testing.T, dir string) (*redis.Client, func()) {
	t.Helper()
	addr, stop, err := Start("", WithDataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	var once sync.Once
	closeAll := func() { once.Do(func() { _ = rdb.Close(); stop() }) }
	t.Cleanup(closeAll)
	return rdb, closeAll
}

// dump reads every key of the selected database with its value and whether
// it has an expiry, through the protocol, so that two servers can be
// compared.
func dump(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		case "set":
			var m []string
			m, err = rdb.SMembers(ctx, k).Result()
			slices.Sort(m)
			v = m
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		default:
			t.Fatalf("key %q has type %s", k, typ)
		}
		if err != nil {
			t.Fatal(err)
		}
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = fmt.Sprintf("%s %v expires=%v", typ, v, ttl > 0)
	}
	return out
}

// copyAOF copies the append-only file as it is on disk now into a fresh
// directory: what a crash of the process would leave, since everything
// acknowledged has been written (and fsynced) before its reply.
func copyAOF(t *testing.T, from string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(from, AOFName))
	if err != nil {
		t.Fatal(err)
	}
	to := t.TempDir()
	if err := os.WriteFile(filepath.Join(to, AOFName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return to
}

func TestStart_withDataDirKeepsEveryKindOfWriteAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	rdb, stop := startIn(t, dir)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rdb.Set(ctx, "plain", "v", 0).Err())
	must(rdb.Set(ctx, "long", "v", time.Hour).Err())
	must(rdb.HSet(ctx, "hash", "a", "1", "b", "2").Err())
	must(rdb.HDel(ctx, "hash", "b").Err())
	must(rdb.RPush(ctx, "list", "x", "y", "z").Err())
	must(rdb.LPop(ctx, "list").Err())
	must(rdb.SAdd(ctx, "set", "p", "q").Err())
	must(rdb.ZAdd(ctx, "zset", redis.Z{Score: 1.5, Member: "one"}, redis.Z{Score: -2, Member: "two"}).Err())
	must(rdb.Set(ctx, "gone", "v", 0).Err())
	must(rdb.Del(ctx, "gone").Err())
	must(rdb.MSet(ctx, "m1", "1", "m2", "2").Err())
	must(rdb.Rename(ctx, "m2", "renamed").Err())
	must(rdb.Incr(ctx, "counter").Err())
	// A script that reads TIME and writes keys it computes, as the quota
	// scripts and the GCRA rate limiter do: replaying the script would not
	// give the same result, the logged states do.
	must(rdb.Eval(ctx, `local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'at', t[1] .. '.' .. t[2])
redis.call('INCRBY', KEYS[2], 5)
redis.call('EXPIRE', KEYS[2], 3600)
redis.call('DEL', KEYS[3])
return 1`, []string{"script-hash", "script-counter", "plain"}).Err())
	// A transaction, as go-redis' TxPipelined sends it.
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, "tx-hash", "f", "v")
		p.ZAdd(ctx, "tx-zset", redis.Z{Score: 3, Member: "m"})
		p.Expire(ctx, "tx-zset", time.Hour)
		return nil
	})
	must(err)
	// Another database.
	must(rdb.Do(ctx, "MOVE", "m1", "3").Err())
	want := dump(t, rdb)
	stop()

	again, _ := startIn(t, dir)
	if got := dump(t, again); !maps.Equal(got, want) {
		t.Fatalf("after a restart:\n got %v\nwant %v", got, want)
	}
	if v, err := again.Do(ctx, "SELECT", "3").Result(); err != nil || v != "OK" {
		t.Fatalf("SELECT 3 = %v, %v", v, err)
	}
	if got, err := again.Get(ctx, "m1").Result(); err != nil || got != "1" {
		t.Fatalf("key moved to database 3: %q, %v", got, err)
	}
}

func TestStart_withDataDirKeepsTheMomentAKeyExpiresNotItsTTL(t *testing.T) {
	dir := t.TempDir()
	rdb, stop := startIn(t, dir)
	ctx := context.Background()
	soon := time.Now().Add(1500 * time.Millisecond)
	if err := rdb.Set(ctx, "soon", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ExpireAt(ctx, "soon", soon).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "later", "v", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	stop()
	// While the server is down the first key's moment passes. Had the
	// file kept TTLs, the key would live another 1.5s from the restart.
	time.Sleep(time.Until(soon.Add(100 * time.Millisecond)))

	again, _ := startIn(t, dir)
	if n, err := again.Exists(ctx, "soon").Result(); err != nil || n != 0 {
		t.Fatalf("a key whose expiry passed during the restart is still there (%d, %v)", n, err)
	}
	ttl, err := again.PTTL(ctx, "later").Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("the key with a 1h TTL has PTTL %v, %v after the restart", ttl, err)
	}
}

func TestStart_withDataDirHasEveryAcknowledgedWriteOnDiskUnderConcurrentClients(t *testing.T) {
	dir := t.TempDir()
	rdb, _ := startIn(t, dir)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				// Every writer touches shared keys, so the log's order
				// decides what survives.
				if err := rdb.Incr(ctx, "shared").Err(); err != nil {
					errs <- err
					return
				}
				if err := rdb.HSet(ctx, "h", fmt.Sprint(i%10), w).Err(); err != nil {
					errs <- err
					return
				}
				if err := rdb.Eval(ctx, "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
					[]string{fmt.Sprintf("w%d", w), "scripted"}, i).Err(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := dump(t, rdb)

	crashed, _ := startIn(t, copyAOF(t, dir))
	if got := dump(t, crashed); !maps.Equal(got, want) {
		t.Fatalf("the file on disk gives:\n got %v\nwant %v", got, want)
	}
}

func TestStart_withDataDirDropsAnUnfinishedLastRecordAndRefusesADamagedFile(t *testing.T) {
	dir := t.TempDir()
	rdb, _ := startIn(t, dir)
	ctx := context.Background()
	if err := rdb.Set(ctx, "k", "kept", 0).Err(); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(filepath.Join(dir, AOFName))
	if err != nil {
		t.Fatal(err)
	}

	// A crash in the middle of an append: a group without its EXEC, and a
	// command cut short.
	for name, tail := range map[string]string{
		"groupWithoutExec": "*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nlost\r\n",
		"commandCutInHalf": "*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nlo",
	} {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.WriteFile(filepath.Join(d, AOFName), append(slices.Clone(whole), tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			again, _ := startIn(t, d)
			if got, err := again.Get(ctx, "k").Result(); err != nil || got != "kept" {
				t.Fatalf("k = %q, %v; want the last acknowledged value", got, err)
			}
		})
	}

	t.Run("garbage", func(t *testing.T) {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, AOFName), append(slices.Clone(whole), "hello\r\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Start("", WithDataDir(d)); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Fatalf("Start on a damaged file: %v, want an error that says so", err)
		}
	})
}

func TestStart_withDataDirCompactsTheFileAtStart(t *testing.T) {
	dir := t.TempDir()
	rdb, stop := startIn(t, dir)
	ctx := context.Background()
	for i := range 500 {
		if err := rdb.Set(ctx, "k", i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "after-flush", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	stop()
	again, _ := startIn(t, dir)
	if got := dump(t, again); !maps.Equal(got, map[string]string{"after-flush": "string v expires=false"}) {
		t.Fatalf("after FLUSHDB and a restart: %v", got)
	}
	b, err := os.ReadFile(filepath.Join(dir, AOFName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte("SET")) != 1 {
		t.Fatalf("the file was not rewritten as a snapshot at start:\n%q", b)
	}
}

func TestStart_refusesCommandsThatWouldWaitForOtherClients(t *testing.T) {
	_, rdb := start(t, "")
	ctx := context.Background()
	err := rdb.BLPop(ctx, 0, "q").Err()
	if err == nil || !strings.Contains(err.Error(), "does not support") {
		t.Fatalf("BLPOP = %v, want a refusal", err)
	}
	// The connection goes on working.
	if err := rdb.RPush(ctx, "q", "x").Err(); err != nil {
		t.Fatal(err)
	}
}
