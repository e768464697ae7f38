package sender

import (
	"context"
	"sync"
)

// attemptClaims serialises the records of one delivery attempt within a
// replica. Kafka keys records by message id, so two copies of an attempt
// (a redelivered record, a submission published twice, the router's
// one-per-day notice planned by two fallbacks) land on one partition and
// so on one replica; but HandleConcurrent runs that partition's records
// side by side, and both copies would pass the "already sent?" check
// before either marked the attempt done. The second copy waits here for
// the first, then finds the mark and is skipped.
type attemptClaims struct {
	mu   sync.Mutex
	held map[string]*claim
}

type claim struct {
	done chan struct{}
}

// acquire blocks until no other handler holds key, or ctx ends. The
// returned release must be called once.
func (c *attemptClaims) acquire(ctx context.Context, key string) (release func(), err error) {
	for {
		c.mu.Lock()
		if c.held == nil {
			c.held = map[string]*claim{}
		}
		cl, busy := c.held[key]
		if !busy {
			cl = &claim{done: make(chan struct{})}
			c.held[key] = cl
			c.mu.Unlock()
			return func() {
				c.mu.Lock()
				delete(c.held, key)
				c.mu.Unlock()
				close(cl.done)
			}, nil
		}
		c.mu.Unlock()
		select {
		case <-cl.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
