package testkit

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartRedisCluster returns the address of a real redis-server running in
// cluster mode as a one-node cluster that owns every slot. It is for tests
// that must prove a component is Redis Cluster safe: the server refuses a
// command or script whose keys hash to different slots (CROSSSLOT), exactly
// as a multi-node cluster would. Connect with redis.NewClusterClient. It
// needs the redis-server binary (REDIS_ADDR is not a cluster); without it the
// test fails when CI is set and is skipped otherwise.
func StartRedisCluster(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		requireRedisBinary(t, "redis-server not found on PATH: install it (apt-get install redis-server) to run Redis Cluster tests")
	}
	addr := startRedisRetrying(t, bin, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	ctx, cancel := context.WithTimeout(context.Background(), redisReadyTimeout)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	if err := rdb.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("assign all slots to the redis cluster node at %s: %v", addr, err)
	}
	for {
		info, err := rdb.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return addr
		}
		select {
		case <-ctx.Done():
			t.Fatalf("redis cluster node at %s never became ready: %v, last info %q", addr, err, info)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
