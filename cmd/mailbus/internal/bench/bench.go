// Package bench measures the whole pipeline in one process: the embedded
// broker (or an external Kafka), a real redis-server (when installed), the
// config service, every stage, and a local SMTP sink, with RSA-2048 DKIM.
// It prints messages per second end to end, latency from publish to SMTP
// acceptance, CPU per message per stage (from a CPU profile of the run),
// and, measured in the same run, the raw RSA-2048 signing rate of this
// machine, so the pipeline's rate reads as a fraction of that ceiling.
package bench

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/obs"
)

// Options tune the run.
type Options struct {
	Messages    int
	Size        int
	Partitions  int
	SinkLatency time.Duration
	// SinkDataDelay delays only the sink's reply after the final dot, as
	// a relay that scans each message does (Postfix's smtp-sink -w).
	SinkDataDelay time.Duration
	// MaxConnections is the sink relay's max_connections; 0 leaves the
	// sender's default.
	MaxConnections int
	RedisAddr      string
	// KafkaBrokers runs the pipeline on this Kafka instead of the embedded
	// broker; missing topics are created. Give it a Kafka of its own:
	// records an earlier run left are not counted, but the pipeline still
	// works through them. The broker's own CPU is not in the profile.
	KafkaBrokers []string
	Warmup       int
	Timeout      time.Duration
	Log          *slog.Logger
	// OpenLoop, when positive, adds a second phase after the burst: for
	// this long, messages are published at a fixed rate (OpenLoopRate, or
	// half the burst's rate) whatever the pipeline does, and latency is
	// counted from each message's scheduled time. A burst measures
	// capacity; its latency is the queue's. This phase measures what a
	// password reset waits when the system is busy but not saturated.
	OpenLoop     time.Duration
	OpenLoopRate float64
}

// Result is what a run measured.
type Result struct {
	Messages      int
	Elapsed       time.Duration
	Rate          float64
	P50, P99      time.Duration
	SignCeiling   float64
	Stages        []stageCPU
	TotalCPU      time.Duration
	MsgsPerConn   float64
	RedisKind     string
	BrokerKind    string
	SinkConns     int
	DeliveredLate int
	// SinkDataDelay and MaxConnections repeat the options.
	SinkDataDelay  time.Duration
	MaxConnections int
	// InFlight is the most SMTP transactions the sink had in flight at
	// once (between MAIL FROM and its final reply).
	InFlight int
	// PeakRSS is the process's peak resident set (every stage, the
	// embedded broker and the sink run in it); 0 where unknown.
	PeakRSS int64
	// Mem is the burst's peak memory: what the Go runtime held, the live
	// heap after a collection, and the resident set.
	Mem memSample
	// Open is the open-loop phase's result; its Rate is zero when the
	// phase did not run.
	Open OpenLoopResult
	// ProducePerMsg and FetchPerMsg are the embedded broker's produce
	// and fetch requests during the burst per message; zero on Kafka.
	ProducePerMsg, FetchPerMsg float64
	// RedisTrips is the Redis round trips per message during the burst,
	// by stage (see stack.Options.CountRedisRoundTrips).
	RedisTrips map[string]float64
}

// OpenLoopResult is what the fixed-rate phase measured.
type OpenLoopResult struct {
	Rate           float64 // scheduled messages per second
	Messages       int
	P50, P99, P999 time.Duration
	Max            time.Duration
}

// Run runs the benchmark and prints a report to w.
func Run(ctx context.Context, w io.Writer, o Options) error {
	res, err := Measure(ctx, o, w)
	if err != nil {
		return err
	}
	Report(w, res)
	return nil
}

// Measure runs the benchmark; progress goes to progress.
func Measure(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	if o.Messages <= 0 {
		o.Messages = 5000
	}
	if o.Size <= 0 {
		o.Size = 10 * 1024
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	if o.Warmup <= 0 {
		o.Warmup = 200
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	var res Result
	res.Messages = o.Messages
	res.SinkDataDelay, res.MaxConnections = o.SinkDataDelay, o.MaxConnections
	fmt.Fprintf(progress, "measuring the raw RSA-2048 signing ceiling on %d cores...\n", runtime.GOMAXPROCS(0))
	res.SignCeiling = signingCeiling(2 * time.Second)

	var (
		redisAddr, redisKind string
		stopRedis            func()
		snk                  *sink
		err                  error
	)
	// Labelled like the stack's services (see stack.ProfileLabel), so that
	// the profile charges the in-process Redis and the sink to themselves.
	pprof.Do(ctx, pprof.Labels(stack.ProfileLabel, stageRedis), func(context.Context) {
		redisAddr, redisKind, stopRedis, err = startRedis(o.RedisAddr)
	})
	if err != nil {
		return res, err
	}
	defer stopRedis()
	res.RedisKind = redisKind

	pprof.Do(ctx, pprof.Labels(stack.ProfileLabel, stageLoad), func(context.Context) {
		snk, err = startSink(o.SinkLatency, o.SinkDataDelay, o.Warmup)
	})
	if err != nil {
		return res, err
	}
	defer snk.Close()

	dir, err := os.MkdirTemp("", "mailbus-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	seed := filepath.Join(dir, "seed.yaml")
	host, port, _ := net.SplitHostPort(snk.Addr())
	conns := ""
	if o.MaxConnections > 0 {
		conns = "\n        max_connections: " + strconv.Itoa(o.MaxConnections)
	}
	if err := os.WriteFile(seed, []byte(fmt.Sprintf(seedYAML, host, port, conns)), 0o600); err != nil {
		return res, err
	}
	res.BrokerKind = "embedded broker"
	if len(o.KafkaBrokers) > 0 {
		fmt.Fprintf(progress, "waiting for Kafka at %s...\n", strings.Join(o.KafkaBrokers, ","))
		if err := waitKafka(ctx, o.KafkaBrokers, 2*time.Minute); err != nil {
			return res, err
		}
		res.BrokerKind = "Kafka at " + strings.Join(o.KafkaBrokers, ",")
	}
	fmt.Fprintf(progress, "starting the pipeline (%s, %s, SQLite, SMTP sink at %s)...\n", res.BrokerKind, redisKind, snk.Addr())
	metrics := obs.NewRegistry()
	st, err := stack.Start(ctx, stack.Options{
		DataDir: dir, SeedFile: seed, KafkaBrokers: o.KafkaBrokers, KafkaAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NoCatcher: true,
		RedisAddr: redisAddr, Partitions: o.Partitions, Log: o.Log, Metrics: metrics, CountKafkaRequests: true, CountRedisRoundTrips: true,
	})
	if err != nil {
		return res, err
	}
	defer st.Close()
	pub, err := bus.NewPublisher(bus.Config{Brokers: st.Brokers, ClientID: "mailbus-bench"}, o.Log)
	if err != nil {
		return res, err
	}
	defer pub.Close()
	body := strings.Repeat("The quick brown fox jumps over the lazy dog. 0123456789 mailbus bench.\r\n", max(o.Size/72, 1))

	fmt.Fprintf(progress, "warming up with %d messages...\n", o.Warmup)
	if err := publish(pub, o.Warmup, "warm", body); err != nil {
		return res, err
	}
	if err := waitSink(ctx, snk, st, o.Timeout); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	before := st.Sender.Pool().Stats()
	snk.reset(o.Messages)

	fmt.Fprintf(progress, "sending %d messages of ~%d KB...\n", o.Messages, o.Size/1024)
	var prof bytes.Buffer
	if err := pprof.StartCPUProfile(&prof); err != nil {
		return res, err
	}
	start := time.Now()
	produce0, fetch0, counted := st.KafkaRequests()
	trips0, _ := st.RedisRoundTrips()
	if path := os.Getenv("MAILBUS_BENCH_HEAP_PROFILE"); path != "" {
		// Halfway through the run, when the backlog is at its largest.
		go func() {
			for snk.received() < o.Messages/2 {
				time.Sleep(100 * time.Millisecond)
			}
			if f, err := os.Create(path); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}()
	}
	mem := startMemSampler(250 * time.Millisecond)
	if err := publish(pub, o.Messages, "run", body); err != nil {
		pprof.StopCPUProfile()
		mem.Stop()
		return res, err
	}
	err = waitSink(ctx, snk, st, o.Timeout)
	pprof.StopCPUProfile()
	res.Mem = mem.Stop()
	if err != nil {
		return res, err
	}
	snk.mu.Lock()
	res.Elapsed = snk.last.Sub(start)
	lat := slices.Clone(snk.latencies)
	res.SinkConns = snk.conns
	res.InFlight = snk.peakInFlight
	snk.mu.Unlock()
	if trips, ok := st.RedisRoundTrips(); ok {
		res.RedisTrips = map[string]float64{}
		for stage, n := range trips {
			if d := n - trips0[stage]; d > 0 {
				res.RedisTrips[stage] = float64(d) / float64(o.Messages)
			}
		}
	}
	if produce, fetch, _ := st.KafkaRequests(); counted {
		res.ProducePerMsg = float64(produce-produce0) / float64(o.Messages)
		res.FetchPerMsg = float64(fetch-fetch0) / float64(o.Messages)
	}
	res.PeakRSS = peakRSS()
	res.Rate = float64(o.Messages) / res.Elapsed.Seconds()
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50, res.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	after := st.Sender.Pool().Stats()
	// The run's messages went over the connections the warm-up left open
	// and those it opened itself.
	if n := after.ConnectionsOpened - before.ConnectionsOpened + int64(before.Open); n > 0 {
		res.MsgsPerConn = float64(after.Messages-before.Messages) / float64(n)
	}
	if path := os.Getenv("MAILBUS_BENCH_PROFILE"); path != "" {
		_ = os.WriteFile(path, prof.Bytes(), 0o644)
	}

	res.Stages, res.TotalCPU, err = attribute(prof.Bytes())
	if err != nil {
		return res, err
	}
	if o.OpenLoop > 0 {
		rate := o.OpenLoopRate
		if rate <= 0 {
			rate = res.Rate / 2
		}
		fmt.Fprintf(progress, "waiting for the consumers to catch up...\n")
		if err := waitIdle(ctx, metrics, o.Timeout); err != nil {
			return res, err
		}
		fmt.Fprintf(progress, "publishing at a fixed %.0f messages/s for %s (open loop)...\n", rate, o.OpenLoop)
		res.Open, err = openLoop(ctx, pub, snk, st, rate, o.OpenLoop, body, o.Timeout)
		if err != nil {
			return res, fmt.Errorf("open-loop phase: %w", err)
		}
		res.PeakRSS = peakRSS()
	}
	return res, nil
}

// openLoop publishes at rate for d, each message stamped with the time it
// was due rather than the time it went out, so that a publisher held up
// by a slow pipeline shows up in the latency instead of hiding it (the
// coordinated omission a closed loop suffers from). Several publishers
// take the due messages so that one slow produce does not delay the next.
func openLoop(ctx context.Context, pub message.Publisher, snk *sink, st *stack.Stack, rate float64, d time.Duration, body string, timeout time.Duration) (OpenLoopResult, error) {
	n := max(int(rate*d.Seconds()), 1)
	res := OpenLoopResult{Rate: rate, Messages: n}
	snk.reset(n)
	interval := time.Duration(float64(time.Second) / rate)
	due := make(chan int64, n)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range due {
				m, err := bus.Encode(benchSubmission("open", int(at%1_000_000), at, body), nil)
				if err == nil {
					err = pub.Publish(bus.TopicSubmit, m)
				}
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
			}
		}()
	}
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				close(due)
				return res, ctx.Err()
			}
		}
		due <- at.UnixNano()
	}
	close(due)
	wg.Wait()
	select {
	case err := <-errc:
		return res, err
	default:
	}
	if err := waitSink(ctx, snk, st, timeout); err != nil {
		return res, err
	}
	snk.mu.Lock()
	lat := slices.Clone(snk.latencies)
	snk.mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
		res.P50, res.P99, res.P999, res.Max = q(0.50), q(0.99), q(0.999), lat[len(lat)-1]
	}
	return res, nil
}

// Report prints a result.
func Report(w io.Writer, r Result) {
	fmt.Fprintf(w, "\nmailbus pipeline benchmark: %d messages, RSA-2048 DKIM, %s, %s, SMTP sink\n", r.Messages, r.RedisKind, r.BrokerKind)
	if r.SinkDataDelay > 0 {
		conns := "the sender's default"
		if r.MaxConnections > 0 {
			conns = strconv.Itoa(r.MaxConnections)
		}
		fmt.Fprintf(w, "  slow relay: the sink answers each message %s after its final dot; relay max_connections %s\n", r.SinkDataDelay, conns)
	}
	fmt.Fprintf(w, "  end to end:        %.0f messages/s (%.1fs)\n", r.Rate, r.Elapsed.Seconds())
	fmt.Fprintf(w, "  latency publish → SMTP accepted: p50 %s  p99 %s\n", r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond))
	fmt.Fprintf(w, "  RSA-2048 signing ceiling (raw, all cores): %.0f signatures/s\n", r.SignCeiling)
	fmt.Fprintf(w, "  pipeline / ceiling: %.0f%%\n", 100*r.Rate/r.SignCeiling)
	fmt.Fprintf(w, "  SMTP messages per connection: %.1f\n", r.MsgsPerConn)
	fmt.Fprintf(w, "  SMTP transactions in flight at the sink (peak): %d\n", r.InFlight)
	if r.PeakRSS > 0 {
		fmt.Fprintf(w, "  peak RSS of the process (all stages, broker, sink): %d MiB\n", r.PeakRSS>>20)
	}
	if r.Mem.GoTotal > 0 {
		fmt.Fprintf(w, "  during the burst: at most %d MiB held by the Go runtime, %d MiB of live heap, %d MiB resident\n", r.Mem.GoTotal>>20, r.Mem.HeapLive>>20, r.Mem.RSS>>20)
	}
	if r.ProducePerMsg > 0 {
		fmt.Fprintf(w, "  Kafka requests per message (embedded broker): %.2f produce, %.2f fetch\n", r.ProducePerMsg, r.FetchPerMsg)
	}
	if len(r.RedisTrips) > 0 {
		var total float64
		stages := make([]string, 0, len(r.RedisTrips))
		for stage, n := range r.RedisTrips {
			total += n
			stages = append(stages, stage)
		}
		slices.SortFunc(stages, func(a, b string) int { return cmp.Compare(r.RedisTrips[b], r.RedisTrips[a]) })
		parts := make([]string, 0, len(stages))
		for _, stage := range stages {
			parts = append(parts, fmt.Sprintf("%s %.2f", stage, r.RedisTrips[stage]))
		}
		fmt.Fprintf(w, "  Redis round trips per message: %.2f (%s)\n", total, strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "  CPU per message by stage (from a CPU profile of the run, by the goroutines' stage label; %.0f µs/message in all; in parentheses what went on in the stage's Kafka client):\n", float64(r.TotalCPU.Microseconds())/float64(r.Messages))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.Messages) }
	for _, s := range r.Stages {
		kafka := ""
		if s.Kafka > 0 {
			kafka = fmt.Sprintf("(kafka client %.0f µs)", perMsg(s.Kafka))
		}
		fmt.Fprintf(tw, "    %s\t%.0f µs\t%.0f%%\t%s\t\n", s.Stage, perMsg(s.CPU), 100*float64(s.CPU)/float64(r.TotalCPU), kafka)
	}
	_ = tw.Flush()
	if o := r.Open; o.Rate > 0 {
		fmt.Fprintf(w, "  open loop at a fixed %.0f messages/s (%d messages), latency publish → SMTP accepted: p50 %s  p99 %s  p999 %s  max %s\n",
			o.Rate, o.Messages, ms(o.P50), ms(o.P99), ms(o.P999), ms(o.Max))
	}
	fmt.Fprintf(w, "%.0f messages/s\n", r.Rate)
}

func publish(pub message.Publisher, n int, tag, body string) error {
	const workers, batch = 4, 100
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lo := int(next.Add(batch)) - batch
				if lo >= n {
					return
				}
				hi := min(lo+batch, n)
				msgs := make([]*message.Message, 0, hi-lo)
				for i := lo; i < hi; i++ {
					m, err := bus.Encode(benchSubmission(tag, i, time.Now().UnixNano(), body), nil)
					if err != nil {
						errc <- err
						return
					}
					msgs = append(msgs, m)
				}
				if err := pub.Publish(bus.TopicSubmit, msgs...); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// benchSubmission is the i-th transactional message of a phase, stamped
// with the time (Unix nanoseconds) its latency counts from.
func benchSubmission(tag string, i int, published int64, body string) *mailbusv1.Submission {
	return &mailbusv1.Submission{
		IdempotencyId: fmt.Sprintf("%s-%d-%d", tag, time.Now().UnixNano(), i), TenantId: "bench",
		Kind:    mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From:    &mailbusv1.Address{Name: "Bench", Email: "bench@bench.example"},
		To:      []*mailbusv1.Address{{Email: "rcpt" + strconv.Itoa(i) + "@sink.example"}},
		Subject: "bench " + strconv.Itoa(i), TextBody: body,
		Headers:    []*mailbusv1.Header{{Name: "X-Bench-Published", Value: strconv.FormatInt(published, 10)}},
		SubmitTime: timestamppb.New(time.Unix(0, published)),
	}
}

// ms rounds a latency for the report: to 0.1 ms below 10 ms.
func ms(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

func waitSink(ctx context.Context, s *sink, st *stack.Stack, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-st.Done():
		return st.Err()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("only %d of %d messages reached the sink in %s", s.received(), s.want, timeout)
	}
}

func (s *sink) reset(want int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count, s.want, s.latencies, s.done, s.since = 0, want, nil, make(chan struct{}), time.Now()
	s.peakInFlight = s.inFlight
}

// waitKafka waits until the Kafka at brokers answers metadata requests
// with a controller, so that a broker started just before the benchmark
// (make bench-kafka) has time to come up.
func waitKafka(ctx context.Context, brokers []string, timeout time.Duration) error {
	sc := sarama.NewConfig()
	v, err := sarama.ParseKafkaVersion(bus.DefaultKafkaVersion)
	if err != nil {
		return err
	}
	sc.Version = v
	sc.Net.DialTimeout = 2 * time.Second
	sc.Metadata.Retry.Max = 0
	deadline := time.Now().Add(timeout)
	for {
		c, err := sarama.NewClient(brokers, sc)
		if err == nil {
			_, err = c.Controller()
			_ = c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kafka at %s not ready after %s: %w", strings.Join(brokers, ","), timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// signingCeiling is the raw RSA-2048 PKCS#1 v1.5 signing rate with one
// signer per core, the upper bound of a DKIM pipeline on this machine.
func signingCeiling(d time.Duration) float64 {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	digest := sha256.Sum256([]byte("mailbus"))
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				_, _ = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds()
}

// startRedis uses addr, or starts a real redis-server on a free port, or
// falls back to the in-process server (the stack's default) when
// redis-server is not installed.
func startRedis(addr string) (string, string, func(), error) {
	if addr != "" {
		return addr, "redis at " + addr, func() {}, nil
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", "in-process Redis (redis-server not installed)", func() {}, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		return "", "", nil, fmt.Errorf("start redis-server: %w", err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	addr = "127.0.0.1:" + strconv.Itoa(port)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	// A generous deadline: on a busy machine a fresh redis-server can take
	// seconds to answer.
	for deadline := time.Now().Add(stack.WaitTimeout); ; {
		if rdb.Ping(context.Background()).Err() == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", "", nil, fmt.Errorf("redis-server on %s did not answer in %s", addr, stack.WaitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr, "redis-server " + addr, stop, nil
}

const seedYAML = `tenants:
  - id: bench
    name: Bench
    time_zone: UTC
    default_from: noreply
    domain_alias: bench.example
    domains:
      - id: bench-example
        name: bench.example
        return_path: from
        dkim_keys:
          - selector: bench
            algorithm: rsa
            generate: true
    relays:
      - id: bench-sink
        name: sink
        host: %s
        port: %s
        security: none
        auth:
          mechanism: none
        priority: 1
        domains: [bench.example]%s
default_server:
  mode: relay
  relay:
    id: default-sink
    name: sink
    host: 127.0.0.1
    port: 1
    security: none
`

// waitIdle waits until every consumer group of the stack has committed
// every record of its topics, so that a phase starts on an idle pipeline:
// the tracker and the webhook stage still work through a burst's events
// after its last message reached the sink, and their CPU would otherwise
// be charged to the next phase's latency. The lag is the stack's own
// consumer-lag metric (pkg/bus measures it for Prometheus).
func waitIdle(ctx context.Context, metrics prometheus.Gatherer, timeout time.Duration) error {
	lag := func() (float64, error) {
		families, err := metrics.Gather()
		if err != nil {
			return 0, err
		}
		var total float64
		for _, f := range families {
			if f.GetName() == bus.MetricConsumerLag {
				for _, m := range f.GetMetric() {
					total += m.GetGauge().GetValue()
				}
			}
		}
		return total, nil
	}
	deadline := time.Now().Add(timeout)
	for {
		n, err := lag()
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consumers still %.0f records behind after %s (%v)", n, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
