package testkit

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/mailbus/mailbus/pkg/bus"
)

// KafkaVersion is the Apache Kafka release StartKafka runs. It must match
// kafka.version in deploy/kafka/pom.xml, from which deploy/kafka/fetch
// copies the broker's jars (TestKafkaVersion_matchesPom checks).
const KafkaVersion = "4.1.1"

// KafkaLibsEnv names the environment variable holding the directory of the
// broker's jars; see KafkaLibsDir.
const KafkaLibsEnv = "MAILBUS_KAFKA_LIBS"

// KafkaPartitions is the partition count of the mailbus topics on a broker
// from StartKafka, the same as on the embedded broker of StartBroker.
const KafkaPartitions = 3

// kafkaReadyTimeout bounds a broker's start: two JVM launches (format, then
// the broker) on a busy two-core machine take tens of seconds, not minutes.
const kafkaReadyTimeout = 2 * time.Minute

// kafkaResetTimeout bounds emptying the shared broker between tests; a
// group whose member vanished without leaving is deletable only after the
// member's session timed out.
const kafkaResetTimeout = time.Minute

// KafkaLibsDir returns the directory holding the Apache Kafka broker's jars:
// $MAILBUS_KAFKA_LIBS, or else <user cache dir>/mailbus/kafka-<version>/libs
// (~/.cache/... on Linux), where deploy/kafka/fetch puts them.
func KafkaLibsDir() (string, error) {
	if d := os.Getenv(KafkaLibsEnv); d != "" {
		return d, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the Kafka jars: %w (set %s)", err, KafkaLibsEnv)
	}
	return filepath.Join(cache, "mailbus", "kafka-"+KafkaVersion, "libs"), nil
}

var sharedKafka struct {
	once    sync.Once
	broker  *KafkaBroker
	err     error
	stopped bool
	mu      sync.Mutex // serializes StopKafka with StartKafka's first call
}

// StartKafka returns the address of a real Apache Kafka broker (see
// StartKafkaBroker), empty but for the mailbus topics (bus.AllTopics, with
// KafkaPartitions partitions and the max.message.bytes bus.EnsureTopics
// gives them): what StartBroker gives, on the broker users run.
//
// Starting the JVM is slow, so every test in one test binary shares one
// broker, started by the first call; each later call deletes every topic
// and consumer group the earlier tests left. Tests that use StartKafka must
// therefore not run in parallel with each other. Call StopKafka from
// TestMain after m.Run to stop the broker and remove its log directory; if
// the test binary dies first, the kernel kills the broker with it.
//
// The broker's jars must be in KafkaLibsDir: `make kafka` (which runs
// deploy/kafka/fetch) puts them there, and `make test` and .ci/run run it.
// Without them the test fails, saying so; it is never skipped.
func StartKafka(t testing.TB) []string {
	t.Helper()
	sharedKafka.mu.Lock()
	sharedKafka.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), kafkaReadyTimeout)
		defer cancel()
		sharedKafka.broker, sharedKafka.err = StartKafkaBroker(ctx)
	})
	b, err, stopped := sharedKafka.broker, sharedKafka.err, sharedKafka.stopped
	sharedKafka.mu.Unlock()
	if err != nil {
		t.Fatalf("start Apache Kafka %s: %v", KafkaVersion, err)
	}
	if stopped {
		t.Fatal("StartKafka called after StopKafka")
	}
	ctx, cancel := context.WithTimeout(context.Background(), kafkaResetTimeout)
	defer cancel()
	if err := resetKafka(ctx, b.Addrs()); err != nil {
		t.Fatalf("empty the shared Kafka broker for %s: %v\n%s", t.Name(), err, b.LogTail())
	}
	return b.Addrs()
}

// StopKafka stops the broker StartKafka shared, if it started one. Call it
// from TestMain after m.Run.
func StopKafka() {
	sharedKafka.mu.Lock()
	defer sharedKafka.mu.Unlock()
	sharedKafka.once.Do(func() {}) // no broker may start after this
	if sharedKafka.broker != nil && !sharedKafka.stopped {
		sharedKafka.broker.Close()
	}
	sharedKafka.stopped = true
}

// KafkaBroker is one Apache Kafka node in KRaft mode (broker and
// controller in one JVM) running as a child process.
type KafkaBroker struct {
	addr string
	dir  string
	argv []string // the JVM's command line, to start it again
	cmd  *exec.Cmd
	done chan struct{} // closed when the JVM exited
	err  error         // why it exited, once done is closed

	closeOnce sync.Once
}

// StartKafkaBroker starts an Apache Kafka node on free loopback ports with
// a fresh log directory and returns once it serves metadata. The caller
// closes it. Its configuration is Kafka's defaults but for what a single
// node needs (replication factor 1 for the internal topics) and what makes
// tests quick:
//
//   - num.partitions 3 and group.min.session.timeout.ms 100, as on the
//     embedded broker, so tests may use short sessions;
//   - group.initial.rebalance.delay.ms 0, so a new group starts at once;
//   - fewer partitions for the internal topics, which the first consumer
//     group creates.
//
// message.max.bytes keeps Kafka's default of about 1 MB, as on a stock
// cluster: bigger mail passes because bus.EnsureTopics raises the topics'
// max.message.bytes.
func StartKafkaBroker(ctx context.Context) (*KafkaBroker, error) {
	libs, err := KafkaLibsDir()
	if err != nil {
		return nil, err
	}
	jars, _ := filepath.Glob(filepath.Join(libs, "kafka_2.13-*.jar"))
	if len(jars) == 0 {
		return nil, fmt.Errorf("no Apache Kafka jars in %s: run `make kafka` (deploy/kafka/fetch: Maven copies "+
			"org.apache.kafka:kafka_2.13:%s and its runtime dependencies there; it needs java and mvn, "+
			"apt-get install default-jdk-headless maven), or point %s at a directory holding them", libs, KafkaVersion, KafkaLibsEnv)
	}
	java, err := javaBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mailbus-kafka-")
	if err != nil {
		return nil, fmt.Errorf("create the broker's directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	ports := make([]int, 2)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	controller := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	props := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(props, []byte(kafkaServerProperties(addr, controller, filepath.Join(dir, "data"))), 0o600); err != nil {
		return nil, fmt.Errorf("write server.properties: %w", err)
	}
	log4j := filepath.Join(dir, "log4j2.properties")
	if err := os.WriteFile(log4j, []byte(kafkaLog4j(filepath.Join(dir, "server.log"))), 0o600); err != nil {
		return nil, fmt.Errorf("write log4j2.properties: %w", err)
	}
	jvm := []string{
		// A test broker holds little; a small heap and the serial collector
		// leave the shared machine's memory and cores to the tests, and
		// stopping at the first JIT tier starts it faster.
		"-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + log4j,
		"-cp", filepath.Join(libs, "*"),
	}

	// KRaft needs the log directory formatted with a cluster id first.
	id, err := kafkaClusterID()
	if err != nil {
		return nil, err
	}
	format := exec.CommandContext(ctx, java, append(slices.Clone(jvm), "kafka.tools.StorageTool", "format", "-t", id, "-c", props)...)
	if out, err := format.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("format the log directory (%s kafka.tools.StorageTool format): %w\n%s%s", java, err, out, fileTail(filepath.Join(dir, "server.log")))
	}

	b := &KafkaBroker{addr: addr, dir: dir, argv: append(append([]string{java}, jvm...), "kafka.Kafka", props)}
	if err := b.launch(); err != nil {
		return nil, err
	}
	if err := b.waitReady(ctx); err != nil {
		b.Close()
		return nil, err
	}
	ok = true
	return b, nil
}

// launch starts the JVM with b.argv.
func (b *KafkaBroker) launch() error {
	b.done = make(chan struct{})
	out, err := os.OpenFile(filepath.Join(b.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open the broker's stdout log: %w", err)
	}
	b.cmd = exec.Command(b.argv[0], b.argv[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = out, out
	setKafkaProcAttr(b.cmd)
	started := make(chan error, 1)
	done := b.done
	go func() {
		// The kernel's parent-death signal follows the thread that started
		// the child, not the process; this goroutine keeps that thread
		// alive, and to itself, until the JVM has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		defer out.Close()
		if err := b.cmd.Start(); err != nil {
			started <- err
			b.err = err
			return
		}
		started <- nil
		b.err = b.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("run %s kafka.Kafka: %w", b.argv[0], err)
	}
	return nil
}

// Kill ends the broker with SIGKILL, as a crash or an OOM kill would,
// keeping its log directory for Restart.
func (b *KafkaBroker) Kill() {
	if b.cmd.Process != nil {
		_ = b.cmd.Process.Kill()
	}
	<-b.done
}

// Restart starts the broker again after Kill, on the same ports and log
// directory, and waits until it serves metadata: Kafka recovering its logs
// after a crash.
func (b *KafkaBroker) Restart(ctx context.Context) error {
	if err := b.launch(); err != nil {
		return err
	}
	return b.waitReady(ctx)
}

// Addrs returns the bootstrap addresses for bus.Config.Brokers.
func (b *KafkaBroker) Addrs() []string { return []string{b.addr} }

// Close stops the broker (SIGTERM, a controlled shutdown; SIGKILL if it
// takes more than 30 seconds) and removes its log directory.
func (b *KafkaBroker) Close() {
	b.closeOnce.Do(func() {
		if b.cmd.Process != nil {
			_ = b.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.done:
			case <-time.After(30 * time.Second):
				_ = b.cmd.Process.Kill()
				<-b.done
			}
		}
		_ = os.RemoveAll(b.dir)
	})
}

// LogTail returns the end of the broker's log, for failure messages.
func (b *KafkaBroker) LogTail() string {
	return fileTail(filepath.Join(b.dir, "stdout.log")) + fileTail(filepath.Join(b.dir, "server.log"))
}

// waitReady waits until the broker answers metadata requests with itself
// as the controller, the JVM exits, or ctx ends.
func (b *KafkaBroker) waitReady(ctx context.Context) error {
	sc := sarama.NewConfig()
	v, err := sarama.ParseKafkaVersion(bus.DefaultKafkaVersion)
	if err != nil {
		return err
	}
	sc.Version = v
	sc.Net.DialTimeout = 2 * time.Second
	sc.Metadata.Retry.Max = 0
	var lastErr error
	for {
		select {
		case <-b.done:
			return fmt.Errorf("the broker exited before it was ready (%v):\n%s", b.err, b.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("the broker on %s was not ready in time (%v, last: %v):\n%s", b.addr, ctx.Err(), lastErr, b.LogTail())
		case <-time.After(250 * time.Millisecond):
		}
		c, err := sarama.NewClient(b.Addrs(), sc)
		if err != nil {
			lastErr = err
			continue
		}
		_, err = c.Controller()
		_ = c.Close()
		if err == nil {
			return nil
		}
		lastErr = err
	}
}

func kafkaServerProperties(addr, controller, dataDir string) string {
	return `# A single Apache Kafka node in KRaft mode for mailbus's tests (pkg/testkit).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@` + controller + `
listeners=PLAINTEXT://` + addr + `,CONTROLLER://` + controller + `
advertised.listeners=PLAINTEXT://` + addr + `
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=` + dataDir + `
num.partitions=` + strconv.Itoa(KafkaPartitions) + `
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=100
`
}

func kafkaLog4j(file string) string {
	return `status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ` + file + `
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
`
}

// kafkaClusterID returns a random cluster id as Kafka writes them (16 bytes,
// URL-safe base64 without padding), never starting with '-', which the
// storage tool's argument parser would take for an option.
func kafkaClusterID() (string, error) {
	for {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("make a cluster id: %w", err)
		}
		if id := base64.RawURLEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id, nil
		}
	}
}

// javaBinary finds the JVM: $JAVA_HOME/bin/java, else java on PATH.
func javaBinary() (string, error) {
	if home := os.Getenv("JAVA_HOME"); home != "" {
		p := filepath.Join(home, "bin", "java")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("java")
	if err != nil {
		return "", fmt.Errorf("no java on PATH to run Apache Kafka %s (it needs Java 17 or later): apt-get install default-jdk-headless, or set JAVA_HOME", KafkaVersion)
	}
	return p, nil
}

// fileTail returns the last lines of a file, headed by its name.
func fileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "--- " + path + " (end) ---\n" + strings.Join(lines, "\n") + "\n"
}

// resetKafka deletes every consumer group and every topic but Kafka's own
// internal ones, then creates bus.AllTopics again, so that a test sees what
// a fresh broker holds.
func resetKafka(ctx context.Context, brokers []string) error {
	cfg := BusConfig(brokers)
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		return err
	}
	admin, err := sarama.NewClusterAdmin(brokers, sc)
	if err != nil {
		return fmt.Errorf("connect cluster admin: %w", err)
	}
	defer admin.Close()

	// Groups first: a group is not empty while a member of the last test
	// is still leaving, so retry until its session ends.
	for {
		groups, err := admin.ListConsumerGroups()
		if err != nil {
			return fmt.Errorf("list consumer groups: %w", err)
		}
		var busy []error
		for g := range groups {
			err := admin.DeleteConsumerGroup(g)
			if err != nil && !errors.Is(err, sarama.ErrGroupIDNotFound) {
				busy = append(busy, fmt.Errorf("delete consumer group %s: %w", g, err))
			}
		}
		if len(busy) == 0 {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("%w: %w", err, errors.Join(busy...))
		}
	}

	for {
		topics, err := admin.ListTopics()
		if err != nil {
			return fmt.Errorf("list topics: %w", err)
		}
		left := 0
		for name := range topics {
			if strings.HasPrefix(name, "__") {
				continue
			}
			left++
			if err := admin.DeleteTopic(name); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
				return fmt.Errorf("delete topic %s: %w", name, err)
			}
		}
		if left == 0 {
			break
		}
		// Deletion is asynchronous; list again until the topics are gone.
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("topics still there after deleting them: %w", err)
		}
	}
	return bus.EnsureTopics(ctx, cfg, bus.AllTopics(), KafkaPartitions)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
