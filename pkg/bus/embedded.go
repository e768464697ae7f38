package bus

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// EmbeddedConfig configures the in-process broker.
type EmbeddedConfig struct {
	// Addr is the TCP address to listen on: "127.0.0.1:9092" for a fixed
	// port, "127.0.0.1:0" (the default) for a random one. The broker
	// advertises the address it listens on, so listen on an address that
	// clients can reach (not 0.0.0.0 when clients are elsewhere).
	Addr string
	// DataDir makes the broker keep topics, records and committed offsets
	// in this directory across restarts; empty keeps everything in memory.
	DataDir string
	// Partitions is the partition count of mailbus's topics and of topics
	// created on first use; default 3.
	Partitions int
	// Log receives the broker's warnings and errors; nil discards them.
	Log *slog.Logger
	// CountRequests makes Requests count produce and fetch requests. It
	// is off by default: kfake runs an observer in a goroutine of its own
	// for every request, which only make bench wants to pay for.
	CountRequests bool
}

// Embedded is an in-process Kafka-protocol broker (franz-go's kfake) for
// `mailbus dev` and tests. It speaks the real protocol on a real TCP port,
// so sarama, kcat and any other Kafka client can use it.
//
// It is one broker: no replication, and it is not tuned for throughput.
// What mailbus needs works against it and is tested: sarama's idempotent
// producer, LZ4 batches, consumer groups with committed offsets, topic
// auto-creation, and persistence across restarts with DataDir.
type Embedded struct {
	cluster *kfake.Cluster

	counting          bool
	produces, fetches atomic.Int64
}

// StartEmbedded starts the broker and returns once it accepts connections.
// It creates every topic of AllTopics (unless DataDir already holds a
// cluster) and allows other topics to be created on first use.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 3
	}
	// kfake always asks for 127.0.0.1:<port>; we open the listener
	// ourselves so that the caller chooses the interface too. ctx bounds
	// only this.
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka: listen on %s: %w", cfg.Addr, err)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ClusterID("mailbus-embedded"),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return ln, nil }),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
		kfake.SeedTopics(int32(cfg.Partitions), AllTopics()...),
		// Real Kafka refuses group session timeouts under 6s; we allow
		// short ones so that tests and a restarted `mailbus dev` do not
		// wait for a dead member's session to expire.
		kfake.GroupMinSessionTimeout(100 * time.Millisecond),
		// Above Config.TopicMaxMessageBytes for mail of up to 45 MiB (25 MiB
		// by default), so that big mail works in development as it does on
		// a configured cluster.
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(64 << 20)}),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.Log != nil {
		opts = append(opts, kfake.WithLogger(kfakeLogger{cfg.Log}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("start embedded kafka on %s: %w", cfg.Addr, err)
	}
	e := &Embedded{cluster: c, counting: cfg.CountRequests}
	if cfg.CountRequests {
		// Observe, never handle: returning false lets the cluster answer.
		c.Control(func(r kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			switch r.Key() {
			case kmsg.Produce.Int16():
				e.produces.Add(1)
			case kmsg.Fetch.Int16():
				e.fetches.Add(1)
			}
			return nil, nil, false
		})
	}
	return e, nil
}

// Requests returns how many produce and fetch requests the broker has
// answered; ok is false unless EmbeddedConfig.CountRequests. make bench divides
// them by its messages: with a broker on the same 2 cores, a request costs
// the client and the broker more than the records in it, and unlike CPU
// time the count does not move with the machine's other load.
func (e *Embedded) Requests() (produce, fetch int64, ok bool) {
	return e.produces.Load(), e.fetches.Load(), e.counting
}

// Addrs returns the broker addresses to put in Config.Brokers.
func (e *Embedded) Addrs() []string { return e.cluster.ListenAddrs() }

// Close stops the broker; with DataDir it first writes its state to disk.
func (e *Embedded) Close() { e.cluster.Close() }

// kfakeLogger passes kfake's warnings and errors to slog; its info and
// debug logs describe every request and would drown everything else.
type kfakeLogger struct{ log *slog.Logger }

func (l kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var sl slog.Level
	switch level {
	case kfake.LogLevelError:
		sl = slog.LevelError
	case kfake.LogLevelWarn:
		sl = slog.LevelWarn
	default:
		return
	}
	l.log.Log(context.Background(), sl, fmt.Sprintf(format, args...), slog.String("component", "kfake"))
}
