package smtpclient

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// redisSlots adapts health.ConnSlots, as the sender does.
type redisSlots struct{ *health.ConnSlots }

func (r redisSlots) Acquire(ctx context.Context, key string, max int) (ConnLease, error) {
	l, err := r.ConnSlots.Acquire(ctx, key, max)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// replicaPool is one sender replica's pool: its own Redis client and
// slots, on the Redis the replicas share.
func replicaPool(t *testing.T, redisAddr string, cfg PoolConfig) *Pool {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	t.Cleanup(func() { _ = rdb.Close() })
	slots := health.NewConnSlots(rdb, health.ConnSlotsOptions{})
	t.Cleanup(func() { _ = slots.Close() })
	cfg.Slots = redisSlots{slots}
	return newTestPool(t, cfg)
}

// dotGate holds every reply after the final dot until opened, counting
// the transactions held.
type dotGate struct {
	mu      sync.Mutex
	held    int
	open    chan struct{}
	changed chan struct{}
}

func newDotGate() *dotGate {
	return &dotGate{open: make(chan struct{}), changed: make(chan struct{})}
}

func (g *dotGate) reply(c testkit.SMTPCommand) *testkit.SMTPReply {
	if c.Step != testkit.SMTPStepDot {
		return nil
	}
	g.mu.Lock()
	g.held++
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
	<-g.open
	return nil
}

func (g *dotGate) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		held, ch := g.held, g.changed
		g.mu.Unlock()
		if held >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%d transactions reached the final dot, want %d", held, n)
		}
	}
}

func TestPool_replicasSharingRedisKeepToTheRelaysConnectionLimit(t *testing.T) {
	redisAddr := testkit.StartRedis(t)
	gate := newDotGate()
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(gate.reply))
	// Opened at the end at the latest, before the server closes, so that
	// a failure does not leave its connections stuck behind the gate.
	var openOnce sync.Once
	release := func() { openOnce.Do(func() { close(gate.open) }) }
	t.Cleanup(release)
	// Idle connections hold their slots; a short idle time gives them
	// back soon after the gate opens.
	cfg := PoolConfig{IdleTimeout: 200 * time.Millisecond}
	a, b := replicaPool(t, redisAddr, cfg), replicaPool(t, redisAddr, cfg)
	relay := relayFor(srv, SecurityNone)
	relay.MaxConns = 3

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	send := func(ctx context.Context, p *Pool, to string) {
		defer wg.Done()
		if _, err := p.Send(ctx, relay, testMsg(to)); err != nil {
			errs <- err
		}
	}
	// Replica a takes every connection the relay allows, each stuck in a
	// transaction.
	for i := range 3 {
		wg.Add(1)
		go send(context.Background(), a, "a"+string(rune('0'+i))+"@dest.test")
	}
	gate.waitHeld(t, 3)

	// Replica b may open connections of its own (its pool allows 3), but
	// the shared limit makes it wait for a slot rather than connect.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := b.Send(ctx, relay, testMsg("early@dest.test"))
	cancel()
	if err == nil || !strings.Contains(err.Error(), "wait for a connection slot shared with other replicas") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b's send while a holds every slot: %v; want it to wait for a slot", err)
	}
	if n := srv.Connections(); n != 3 {
		t.Fatalf("the relay got %d connections, want 3", n)
	}

	// Both replicas now send more than the limit at once.
	for i := range 6 {
		wg.Add(2)
		go send(context.Background(), a, "a-more"+string(rune('0'+i))+"@dest.test")
		go send(context.Background(), b, "b"+string(rune('0'+i))+"@dest.test")
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Send: %v", err)
	}
	srv.WaitMessages(t, 15)
	if peak := srv.PeakOpenConnections(); peak > 3 {
		t.Errorf("the relay had %d connections open at once, want at most 3", peak)
	}
	fromB := 0
	for _, m := range srv.Messages() {
		if strings.HasPrefix(m.To[0], "b") {
			fromB++
		}
	}
	if fromB != 6 {
		t.Errorf("%d of b's 6 messages arrived", fromB)
	}
}
