package stack_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/cli"
	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// devChildEnv makes the test binary run `mailbus dev` with the JSON list of
// arguments it holds instead of the tests, so that a test can kill the
// whole of mailbus dev with SIGKILL, as an operator's kill -9 would.
const devChildEnv = "MAILBUS_TEST_RUN_DEV"

func TestMain(m *testing.M) {
	if args := os.Getenv(devChildEnv); args != "" {
		os.Exit(runDev(args))
	}
	os.Exit(m.Run())
}

func runDev(args string) int {
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err != nil {
		fmt.Fprintln(os.Stderr, "bad", devChildEnv, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := cli.Root()
	root.SetArgs(argv)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mailbus:", err)
		return 1
	}
	return 0
}

// writeSeed writes the test configuration, relaying everything to port.
func writeSeed(t *testing.T, dir string, port int) string {
	t.Helper()
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(fmt.Sprintf(seedTemplate, port, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	return seed
}

// startOnDataDir starts the pipeline as mailbus dev does, with the embedded
// Redis, on dir, and closes it when t ends (Close may come earlier).
func startOnDataDir(t *testing.T, dir, seed string, reg *prometheus.Registry) *stack.Stack {
	t.Helper()
	st, err := stack.Start(context.Background(), stack.Options{
		DataDir: dir, SeedFile: seed, KafkaAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NoCatcher: true,
		Partitions: 4, Metrics: reg,
		TuneBus: func(c *bus.Config) {
			tk := testkit.BusConfig(c.Brokers)
			tk.ClientID = c.ClientID
			*c = tk
		},
		Log: testLogger(t),
	})
	if err != nil {
		t.Fatalf("start pipeline on %s: %v", dir, err)
	}
	t.Cleanup(st.Close)
	return st
}

func publish(t *testing.T, brokers []string, subs ...*mailbusv1.Submission) {
	t.Helper()
	pub, err := bus.NewPublisher(testkit.BusConfig(brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	msgs := make([]*message.Message, 0, len(subs))
	for _, s := range subs {
		m, err := bus.Encode(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	if err := pub.Publish(bus.TopicSubmit, msgs...); err != nil {
		t.Fatal(err)
	}
}

// counterValue is the value of a counter without labels in reg, 0 when it
// was never incremented.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var v float64
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
			return v
		}
	}
	return 0
}

func TestPipeline_sendsOnceWhenASubmissionIsPublishedAgainAfterARestart(t *testing.T) {
	srv := testkit.StartSMTP(t)
	dir := t.TempDir()
	seed := writeSeed(t, dir, srv.Port())
	sub := &mailbusv1.Submission{
		IdempotencyId: "order-42", TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From: &mailbusv1.Address{Email: "alice@acme.example"}, To: []*mailbusv1.Address{{Email: "bob@example.net"}},
		Subject: "Your order", TextBody: "Thanks!",
	}

	first := startOnDataDir(t, dir, seed, nil)
	publish(t, first.Brokers, sub)
	srv.WaitMessages(t, 1)
	first.Close()

	// The producer retries after mailbus dev restarted.
	reg := prometheus.NewRegistry()
	second := startOnDataDir(t, dir, seed, reg)
	publish(t, second.Brokers, sub)
	// Wait until the sender has met the attempt again and recognised it, or
	// until it has delivered it a second time.
	const skipped = "mailbus_sender_attempts_already_made_total"
	deadline := time.Now().Add(stack.WaitTimeout)
	for counterValue(t, reg, skipped) < 1 && srv.Received() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the re-published submission reached neither the relay nor the sender's record in %s", stack.WaitTimeout)
		}
		select {
		case <-second.Done():
			t.Fatalf("pipeline failed: %v", second.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if n := srv.Received(); n != 1 {
		t.Fatalf("the relay received the submission with idempotency id %q %d times; want once", sub.GetIdempotencyId(), n)
	}
}

// devProcess is `mailbus dev` running in a child process.
type devProcess struct {
	cmd        *exec.Cmd
	brokers    []string
	grpcAddr   string
	consoleURL string
}

// startDevProcess runs `mailbus dev` on dir with the seed, as `make run`
// does but on free ports, and waits for its ready line.
func startDevProcess(t *testing.T, dir, seed string, partitions int) *devProcess {
	t.Helper()
	args, _ := json.Marshal([]string{"dev", "--data", dir, "--config", seed, "--partitions", fmt.Sprint(partitions),
		"--kafka-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--smtp-addr", "127.0.0.1:0",
		"--web-addr", "127.0.0.1:0", "--bounce-addr", "127.0.0.1:0", "--console-addr", "127.0.0.1:0", "--admin-addr", "", "--log-level", "warn"})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), devChildEnv+"="+string(args))
	cmd.Stderr = tWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &devProcess{cmd: cmd}
	t.Cleanup(p.kill)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "mailbus dev ready") {
				ready <- sc.Text()
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case line, ok := <-ready:
		if !ok {
			t.Fatal("mailbus dev exited before it was ready")
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "kafka="); ok {
				p.brokers = strings.Split(v, ",")
			}
			if v, ok := strings.CutPrefix(f, "grpc="); ok {
				p.grpcAddr = v
			}
			if v, ok := strings.CutPrefix(f, "console="); ok {
				p.consoleURL = v
			}
		}
	case <-time.After(2 * stack.WaitTimeout):
		t.Fatal("mailbus dev did not print its ready line")
	}
	return p
}

// kill sends SIGKILL: nothing of mailbus dev runs after it, no deferred
// close, no flush, no offset commit.
func (p *devProcess) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

func TestPipeline_mailbusDevKilledMidBatchAndPublishedAgainSendsEachMessageOnceButItsInFlightRecords(t *testing.T) {
	const n = 400
	// With the record of finished attempts kept through the crash, only
	// the attempts in the sender's hands at the kill can be sent twice:
	// their SMTP transaction got its 250 before the kill, their record
	// did not get written (the sender publishes the outcome, then writes
	// it). The sender makes as many transactions at once as the relay's
	// connections allow, and a connection takes its next transaction while
	// the last one's outcome is being written: at most two attempts per
	// connection the relay had open.
	const partitions = 4
	// Reply latency keeps SMTP transactions in flight when the process dies.
	srv := testkit.StartSMTP(t, testkit.SMTPLatency(2*time.Millisecond))
	dir := t.TempDir()
	seed := writeSeed(t, dir, srv.Port())
	dev := startDevProcess(t, dir, seed, partitions)

	subs := make([]*mailbusv1.Submission, n)
	for i := range subs {
		subs[i] = &mailbusv1.Submission{
			IdempotencyId: fmt.Sprintf("crash-%d", i), TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_MASS,
			From: &mailbusv1.Address{Email: "news@fast.example"}, To: []*mailbusv1.Address{{Email: fmt.Sprintf("r%d@example.net", i)}},
			Subject: fmt.Sprintf("newsletter %d", i), TextBody: "hello",
		}
	}
	publish(t, dev.brokers, subs...)

	// Kill the whole process once a quarter has gone out, then start it
	// again on the same data directory.
	deadline := time.Now().Add(3 * time.Minute)
	for srv.Received() < n/4 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages delivered before the kill", srv.Received(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	dev.kill()
	killedAt := srv.Received()
	t.Logf("killed mailbus dev after %d deliveries", killedAt)
	dev = startDevProcess(t, dir, seed, partitions)
	// The producer saw the outage and publishes the whole batch again, with
	// the same idempotency ids: it cannot know what got through. Records
	// that the crash left uncommitted come back on their own too.
	publish(t, dev.brokers, subs...)

	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(dev.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: strings.TrimSpace(string(tok)), AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	messages := mailbusv1.NewMessageServiceClient(conn)
	deadline = time.Now().Add(5 * time.Minute)
	var missing []string
	for {
		missing = missing[:0]
		for i := range n {
			id := ids.MessageID("acme", fmt.Sprintf("crash-%d", i))
			resp, err := messages.GetMessage(context.Background(), &mailbusv1.GetMessageRequest{Id: id})
			if err != nil || resp.GetMessage().GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		t.Logf("%d messages not sent yet; the relay has received %d", len(missing), srv.Received())
		time.Sleep(time.Second)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d messages have no sent status after mailbus dev was killed (first: %s)", len(missing), n, missing[0])
	}
	// Every copy of every record has gone through every stage: no send is
	// still to come.
	testkit.WaitDrained(t, dev.brokers, 5*time.Minute,
		testkit.Stage{Group: bus.Group("router", "route"), Topic: bus.TopicSubmit},
		testkit.Stage{Group: bus.Group("quota", "admit"), Topic: bus.TopicRouted},
		testkit.Stage{Group: bus.Group("signer", "sign"), Topic: bus.TopicAdmitted},
		testkit.Stage{Group: bus.Group("sender", "deliver"), Topic: bus.TopicSigned})

	perRcpt := map[string]int{}
	for _, m := range srv.Messages() {
		perRcpt[m.To[0]]++
	}
	dups := 0
	for _, c := range perRcpt {
		dups += c - 1
	}
	if len(perRcpt) != n {
		t.Fatalf("the relay received %d distinct recipients, want %d", len(perRcpt), n)
	}
	t.Logf("killed mailbus dev after %d deliveries and published all %d again; all delivered and logged as sent; %d duplicate deliveries (the relay had up to %d connections open)", killedAt, n, dups, srv.PeakOpenConnections())
	if most := 2 * srv.PeakOpenConnections(); dups > most {
		t.Fatalf("%d duplicate deliveries after one kill; at most %d (two per connection the relay had open, %d) may be sent twice", dups, most, srv.PeakOpenConnections())
	}
}
