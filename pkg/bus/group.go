package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// groupMember is what the subscribers written here (the concurrent and
// the delayed one) share: joining a consumer group for a topic, staying in
// it across rebalances until the subscription's context ends or Close is
// called, and logging the group's errors. They differ only in how they
// hand a claim's records to the router (their sarama handler).
// watermill-kafka's subscriber, behind Handle, does the same for itself.
type groupMember struct {
	cfg   Config
	sc    *sarama.Config
	group string
	kind  string // names the subscriber in log lines: "concurrent", "delayed"
	log   *slog.Logger

	closeOnce sync.Once
	closing   chan struct{}
	wg        sync.WaitGroup
}

func newGroupMember(cfg Config, sc *sarama.Config, group, kind string, log *slog.Logger) *groupMember {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &groupMember{
		cfg: cfg.withDefaults(), sc: sc, group: group, kind: kind,
		log: log.With(slog.String("group", group)), closing: make(chan struct{}),
	}
}

// handlerFunc builds the sarama handler of one subscription from its
// context (ended by Close too), the group and the channel it hands
// records out on.
type handlerFunc func(ctx context.Context, cg sarama.ConsumerGroup, out chan<- *message.Message) sarama.ConsumerGroupHandler

// subscribe joins the group for topic and consumes with the handler
// newHandler builds. The returned channel closes once ctx is cancelled or
// Close is called and the group's last session has returned.
func (g *groupMember) subscribe(ctx context.Context, topic string, newHandler handlerFunc) (<-chan *message.Message, error) {
	select {
	case <-g.closing:
		return nil, fmt.Errorf("%s subscriber closed", g.kind)
	default:
	}
	cg, err := sarama.NewConsumerGroup(g.cfg.Brokers, g.group, g.sc)
	if err != nil {
		return nil, fmt.Errorf("join consumer group %s: %w", g.group, err)
	}
	out := make(chan *message.Message)
	ctx, cancel := context.WithCancel(ctx)
	g.wg.Add(3)
	go func() {
		defer g.wg.Done()
		select {
		case <-g.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer g.wg.Done()
		for err := range cg.Errors() {
			g.log.LogAttrs(ctx, slog.LevelWarn, g.kind+" consumer", slog.String("topic", topic), slog.Any("err", err))
		}
	}()
	h := newHandler(ctx, cg, out)
	go func() {
		defer g.wg.Done()
		defer close(out)
		defer func() {
			if err := cg.Close(); err != nil {
				g.log.LogAttrs(ctx, slog.LevelWarn, "close "+g.kind+" consumer group", slog.Any("err", err))
			}
		}()
		defer cancel()
		for ctx.Err() == nil {
			// Consume returns at every rebalance, after every claim has
			// returned; join again.
			if err := cg.Consume(ctx, []string{topic}, h); err != nil {
				if errors.Is(err, sarama.ErrClosedConsumerGroup) {
					return
				}
				g.log.LogAttrs(ctx, slog.LevelWarn, g.kind+" consumer, joining again", slog.String("topic", topic), slog.Any("err", err))
				select {
				case <-ctx.Done():
				case <-time.After(g.cfg.RetryBackoff):
				}
			}
		}
	}()
	return out, nil
}

// Close ends every subscription and waits for them.
func (g *groupMember) Close() error {
	g.closeOnce.Do(func() { close(g.closing) })
	g.wg.Wait()
	return nil
}
