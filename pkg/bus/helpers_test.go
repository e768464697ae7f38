package bus_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// startBroker and testConfig are testkit.StartBroker (a fresh embedded
// broker) and testkit.BusConfig (short timeouts and backoffs) under the
// names these tests have always used.
func startBroker(t testing.TB) []string { return testkit.StartBroker(t) }

// testConfig is testkit.BusConfig (short timeouts and backoffs), with a
// handler timeout as generous as the tests' waits.
func testConfig(brokers []string) bus.Config {
	c := testkit.BusConfig(brokers)
	c.HandlerTimeout = waitTimeout
	return c
}

// errTransient is a handler failure that a retry fixes.
var errTransient = errors.New("relay busy")

// waitTimeout bounds every wait for records. It is a deadlock guard, not a
// timing assertion: on a busy machine the records arrive well within it.
const waitTimeout = 60 * time.Second

// testLog logs warnings and errors to the test output, which go test shows
// only for failing tests.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runRouter adds handlers to a new router of service, runs it until the
// test ends, and waits until its consumers are subscribed.
func runRouter(t *testing.T, cfg bus.Config, service string, add func(r *bus.Router) error) *bus.Router {
	t.Helper()
	r, err := bus.NewRouter(cfg, service, testLog(t))
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	if err := add(r); err != nil {
		t.Fatalf("add handlers: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router Run: %v", err)
		}
	})
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("router stopped: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("router did not start")
	}
	return r
}

// consumed is a record read by collect, with where it was in Kafka.
type consumed struct {
	msg       *message.Message
	partition int32
	offset    int64
}

// collect reads n records of topic in consumer group group, from the
// oldest offset for a new group, acking each, and returns once the group
// has committed them.
func collect(t *testing.T, cfg bus.Config, group, topic string, n int) []consumed {
	t.Helper()
	sub, err := bus.NewSubscriber(cfg, group, testLog(t))
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatalf("Subscribe %s: %v", topic, err)
	}
	var out []consumed
	for len(out) < n {
		select {
		case msg := <-ch:
			p, _ := kafka.MessagePartitionFromCtx(msg.Context())
			o, _ := kafka.MessagePartitionOffsetFromCtx(msg.Context())
			out = append(out, consumed{msg: msg, partition: p, offset: o})
			msg.Ack()
		case <-ctx.Done():
			t.Fatalf("read %d of %d records from %s before timing out", len(out), n, topic)
		}
	}
	waitCommitted(t, cfg, group, topic, out)
	return out
}

// waitCommitted waits until group has committed every record in recs.
// Closing a subscriber right after an ack races the ack: the subscriber
// may see its closing first and not mark the record, which is correct
// at-least-once behaviour but would make tests of committed offsets flaky.
func waitCommitted(t *testing.T, cfg bus.Config, group, topic string, recs []consumed) {
	t.Helper()
	want := map[int32]int64{}
	for _, r := range recs {
		want[r.partition] = max(want[r.partition], r.offset+1)
	}
	partitions := make([]int32, 0, len(want))
	for p := range want {
		partitions = append(partitions, p)
	}
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		t.Fatalf("cluster admin: %v", err)
	}
	defer admin.Close()
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
		if err != nil {
			t.Fatalf("list offsets of %s: %v", group, err)
		}
		done := true
		for p, o := range want {
			if b := resp.GetBlock(topic, p); b == nil || b.Offset < o {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s did not commit offsets %v of %s", group, want, topic)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receive waits for one value on ch.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

// kcat runs the kcat binary with args and stdin. The tests use it as the
// foreign, non-Go Kafka client that real producers are; without it they
// cannot show that the embedded broker and the codec serve such clients, so
// its absence fails the test instead of skipping it.
func kcat(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/kcat"); serr != nil {
			t.Fatalf("kcat is not installed (%v): install it (apt-get install kcat) to run the Kafka interoperability tests", err)
		}
		path = "/usr/bin/kcat"
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || ctx.Err() != nil {
			t.Fatalf("kcat %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
		}
		t.Fatalf("run kcat: %v", err)
	}
	return stdout.String()
}

// kcatProduce publishes one record with key and headers (name=value).
func kcatProduce(t *testing.T, brokers []string, topic, key string, payload []byte, headers ...string) {
	t.Helper()
	// One file is one record, whatever bytes it holds; stdin would be split
	// at newlines.
	f, err := os.CreateTemp(t.TempDir(), "record")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	args := []string{"-P", "-b", strings.Join(brokers, ","), "-t", topic, "-k", key}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	kcat(t, nil, append(args, f.Name())...)
}

// newClient returns a sarama client of cfg's brokers, closed when t ends.
func newClient(t testing.TB, cfg bus.Config) sarama.Client {
	t.Helper()
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
