package stack

import (
	"context"
	"net"
	"runtime/pprof"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// tripCounter counts the Redis round trips of the stack's client by the
// stage whose context made them (the pprof label goRun sets): a command,
// a pipeline and a MULTI … EXEC are one each. Like the Kafka request
// counts, the figure does not move with the machine's load, so make bench
// prints it to show what a change to a stage's Redis use saved.
type tripCounter struct {
	mu    sync.Mutex
	trips map[string]*atomic.Int64
}

func (c *tripCounter) add(ctx context.Context) {
	stage, ok := pprof.Label(ctx, ProfileLabel)
	if !ok {
		stage = "other"
	}
	c.mu.Lock()
	n := c.trips[stage]
	if n == nil {
		n = new(atomic.Int64)
		c.trips[stage] = n
	}
	c.mu.Unlock()
	n.Add(1)
}

func (c *tripCounter) counts() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.trips))
	for k, v := range c.trips {
		out[k] = v.Load()
	}
	return out
}

func (c *tripCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(ctx)
		return next(ctx, cmd)
	}
}

func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(ctx)
		return next(ctx, cmds)
	}
}
