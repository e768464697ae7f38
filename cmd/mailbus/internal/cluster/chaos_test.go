//go:build chaos

package cluster_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The fault scenarios of `make chaos`: the multi-process cluster carries a
// batch of messages (MAILBUS_CHAOS_MESSAGES, default 10,000) while one
// fault happens in the middle, and the test counts what became of every
// message. The bar is 0 lost and every message final in every scenario;
// duplicates are counted and explained in README.md.
//
// They are behind the chaos build tag because together they run for many
// minutes: `make chaos` runs them; `make test` runs the cluster's
// end-to-end test and one short sender crash instead.

func TestChaos(t *testing.T) {
	n := 10000
	if s := os.Getenv("MAILBUS_CHAOS_MESSAGES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("MAILBUS_CHAOS_MESSAGES=%q: want a positive number", s)
		}
		n = v
	}
	var scenarios []scenario
	for _, s := range []string{"router", "quota", "signer", "sender", "tracker", "bounce"} {
		scenarios = append(scenarios, scenario{name: "kill -9 " + s, ownKafka: true, fault: func(t *testing.T, c *cluster) {
			c.replica(s, 0).kill()
			c.restart(s, 0)
		}})
	}
	scenarios = append(scenarios,
		scenario{name: "kill -9 kafka", ownKafka: true, fault: func(t *testing.T, c *cluster) {
			c.kafka.Kill(t)
			c.kafka.Restart(t)
		}},
		scenario{name: "redis down 20s, back empty", ownKafka: true, fault: func(t *testing.T, c *cluster) {
			c.redis.stop()
			time.Sleep(20 * time.Second)
			c.redis.start(t)
		}},
		scenario{name: "add sender replicas 2 and 3", ownKafka: true, fault: func(t *testing.T, c *cluster) {
			c.start("sender", "MAILBUS_HELO_NAME=mailbus.test")
			c.start("sender", "MAILBUS_HELO_NAME=mailbus.test")
		}},
	)
	if only := os.Getenv("MAILBUS_CHAOS_ONLY"); only != "" {
		var keep []scenario
		for _, s := range scenarios {
			if strings.Contains(s.name, only) {
				keep = append(keep, s)
			}
		}
		scenarios = keep
	}
	var results []chaosResult
	for _, sc := range scenarios {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			res := runChaos(t, sc, n)
			results = append(results, res)
			if res.lost > 0 || res.notFinal > 0 {
				t.Errorf("%s: %d lost, %d not final", sc.name, res.lost, res.notFinal)
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-30s %9s %9s %10s %5s %9s  %s\n", "scenario", "published", "delivered", "duplicates", "lost", "not final", "final statuses")
	for _, r := range results {
		fmt.Fprintf(&b, "%-30s %9d %9d %10d %5d %9d  %v\n", r.scenario, r.published, r.delivered, r.duplicates, r.lost, r.notFinal, r.statuses)
	}
	fmt.Print(b.String())
}
