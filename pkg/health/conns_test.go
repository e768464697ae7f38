package health

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func newSlots(t *testing.T, addr string, ttl time.Duration) (*ConnSlots, *redis.Client) {
	t.Helper()
	rdb := newClient(t, addr)
	s := NewConnSlots(rdb, ConnSlotsOptions{TTL: ttl})
	t.Cleanup(func() { _ = s.Close() })
	return s, rdb
}

// refused checks that no slot of relay is free: an Acquire that may wait a
// little gets none.
func refused(t *testing.T, s *ConnSlots, relay string, max int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if l, err := s.Acquire(ctx, relay, max); !errors.Is(err, context.DeadlineExceeded) {
		if l != nil {
			l.Release()
		}
		t.Fatalf("Acquire with every slot taken: lease %v, err %v; want to wait until the deadline", l, err)
	}
}

func acquire(t *testing.T, s *ConnSlots, relay string, max int) *ConnLease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := s.Acquire(ctx, relay, max)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return l
}

func TestConnSlots_replicasTogetherNeverHoldMoreThanTheLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		a, _ := newSlots(t, srv.addr, time.Minute)
		b, _ := newSlots(t, srv.addr, time.Minute)
		held := []*ConnLease{acquire(t, a, "relay-1", 3), acquire(t, b, "relay-1", 3), acquire(t, a, "relay-1", 3)}
		refused(t, a, "relay-1", 3)
		refused(t, b, "relay-1", 3)
		// Another relay has its own slots.
		acquire(t, b, "relay-2", 3).Release()

		got := make(chan *ConnLease, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			l, err := b.Acquire(ctx, "relay-1", 3)
			if err != nil {
				t.Errorf("waiting Acquire: %v", err)
			}
			got <- l
		}()
		held[0].Release()
		if l := <-got; l == nil {
			t.Fatal("the waiting replica did not get the slot given back")
		}
		refused(t, a, "relay-1", 3)
	})
}

func TestConnSlots_slotsOfAReplicaThatDiedComeBackAfterTheTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		dead, deadRDB := newSlots(t, srv.addr, time.Second)
		alive, _ := newSlots(t, srv.addr, time.Second)
		acquire(t, dead, "relay-1", 2)
		acquire(t, dead, "relay-1", 2)
		refused(t, alive, "relay-1", 2)
		// The replica dies: it neither renews nor gives back.
		_ = deadRDB.Close()
		acquire(t, alive, "relay-1", 2)
		acquire(t, alive, "relay-1", 2)
	})
}

func TestConnSlots_renewalKeepsASlotPastItsTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		a, _ := newSlots(t, srv.addr, 3*time.Second)
		b, _ := newSlots(t, srv.addr, 3*time.Second)
		l := acquire(t, a, "relay-1", 1)
		// Renewals come every second; without them the lease would expire
		// after three.
		time.Sleep(4 * time.Second)
		refused(t, b, "relay-1", 1)
		if l.Lost() {
			t.Error("a renewed lease reports itself lost")
		}
		l.Release()
		acquire(t, b, "relay-1", 1)
	})
}
