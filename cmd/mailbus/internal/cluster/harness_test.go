// Package cluster_test runs mailbus as an operator does: every service a
// separate OS process, built by `go build` from its cmd/<name>, configured
// by environment only, on a Kafka broker, a real redis-server and
// PostgreSQL. The tests kill, restart and add processes and count what
// happens to the mail.
package cluster_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// services are the processes of a mailbus cluster, in start order: config
// first, since every other service loads its configuration from it.
var services = []string{"config", "router", "quota", "signer", "sender", "tracker", "bounce"}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds every service once per test binary, as `make build`
// does, so the processes under test are the ones an operator deploys.
func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "mailbus-cluster-bin-")
		if buildErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + "/"}
		for _, s := range services {
			args = append(args, "github.com/mailbus/mailbus/services/"+s+"/cmd/"+s)
		}
		cmd := exec.Command("go", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build the services: %v\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.StopKafka()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// cluster is a running set of service processes and the parts they share.
type cluster struct {
	t         testing.TB
	bin       string
	dir       string
	brokers   []string
	redisAddr string
	smtp      *testkit.SMTPServer
	env       []string // shared by every process

	redis *redisProc
	kafka kafkaControl

	configAddr  string
	trackerAddr string
	bounceAddr  string
	adminToken  string

	mu    sync.Mutex
	procs map[string][]*proc
	seq   int

	config   mailbusv1.ConfigServiceClient
	messages mailbusv1.MessageServiceClient
}

// proc is one service process.
type proc struct {
	name  string
	env   []string // the process's own, beyond the cluster's
	cmd   *exec.Cmd
	admin string
	out   *syncBuffer
	done  chan struct{}
	err   error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// clusterOptions shape a cluster.
type clusterOptions struct {
	brokers    []string
	partitions int
	smtpOpts   []testkit.SMTPOption
	// relayDailyLimit caps the tenant's relay; 0 is unlimited.
	relayDailyLimit int
	// relayMaxConnections is the relay's max_connections over every sender
	// replica; 0 is the default (20).
	relayMaxConnections int
	// senderEnv is the first sender replica's own environment.
	senderEnv []string
	// controlledRedis runs a redis-server that the test can stop and
	// start again, empty, on the same port (cluster.redis).
	controlledRedis bool
}

// startCluster starts the seven services as processes against brokers, a
// fresh redis-server, PostgreSQL schemas and a project SMTP server as the
// tenant's relay and the default server, and waits until each is ready.
func startCluster(t testing.TB, o clusterOptions) *cluster {
	t.Helper()
	if o.partitions == 0 {
		o.partitions = 4
	}
	if o.relayMaxConnections == 0 {
		o.relayMaxConnections = 20
	}
	c := &cluster{
		t: t, bin: binaries(t), dir: t.TempDir(), brokers: o.brokers,
		smtp: testkit.StartSMTP(t, o.smtpOpts...), procs: map[string][]*proc{},
	}
	if o.controlledRedis {
		c.redis = startRedisProc(t)
		c.redisAddr = c.redis.addr
	} else {
		c.redisAddr = testkit.StartRedis(t)
	}
	seed := filepath.Join(c.dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(fmt.Sprintf(seedTemplate, c.smtp.Port(), o.relayDailyLimit, o.relayMaxConnections, c.smtp.Port())), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	verp := make([]byte, 32)
	_, _ = rand.Read(secret)
	_, _ = rand.Read(verp)
	pipelineTok, _ := auth.NewToken()
	c.adminToken, _ = auth.NewToken()
	c.configAddr, c.trackerAddr, c.bounceAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	c.env = []string{
		"KAFKA_BROKERS=" + strings.Join(c.brokers, ","),
		"REDIS_ADDR=" + c.redisAddr,
		"MAILBUS_CONFIG_ADDR=" + c.configAddr,
		"MAILBUS_PIPELINE_TOKEN=" + pipelineTok,
		"MAILBUS_ADMIN_TOKEN=" + c.adminToken,
		"MAILBUS_SECRET_KEY=" + base64.StdEncoding.EncodeToString(secret),
		"MAILBUS_VERP_KEY=" + hex.EncodeToString(verp),
		"MAILBUS_TOPIC_PARTITIONS=" + fmt.Sprint(o.partitions),
		"MAILBUS_LOG_LEVEL=warn",
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.dir,
	}
	c.start("config", "DATABASE_URL="+testkit.Postgres(t), "MAILBUS_SEED_FILE="+seed, "MAILBUS_CONFIG_LISTEN="+c.configAddr)
	for _, s := range services[1:] {
		var extra []string
		switch s {
		case "tracker":
			extra = []string{"DATABASE_URL=" + testkit.Postgres(t), "MAILBUS_TRACKER_LISTEN=" + c.trackerAddr}
		case "bounce":
			extra = []string{"MAILBUS_BOUNCE_SMTP_ADDR=" + c.bounceAddr, "MAILBUS_BOUNCE_GRPC_LISTEN=" + freeAddr(t)}
		case "sender":
			extra = append([]string{"MAILBUS_HELO_NAME=mailbus.test"}, o.senderEnv...)
		}
		c.start(s, extra...)
	}
	c.config = mailbusv1.NewConfigServiceClient(c.dial(c.configAddr))
	c.messages = mailbusv1.NewMessageServiceClient(c.dial(c.trackerAddr))
	return c
}

func (c *cluster) dial(addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: c.adminToken, AllowInsecure: true}))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

// start starts one more process of service name and waits until its
// /readyz answers.
func (c *cluster) start(name string, extraEnv ...string) *proc {
	c.t.Helper()
	p := c.launch(name, extraEnv)
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.procs[name] = append(c.procs[name], p)
	c.mu.Unlock()
	c.waitReady(p, seq)
	return p
}

// launch starts a process of service name with the cluster's environment
// and extraEnv, not waiting for it.
func (c *cluster) launch(name string, extraEnv []string) *proc {
	c.t.Helper()
	p := &proc{name: name, env: extraEnv, admin: freeAddr(c.t), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(c.bin, name))
	p.cmd.Env = append(append(append([]string{}, c.env...), extraEnv...),
		"MAILBUS_ADMIN_HTTP_ADDR="+p.admin)
	if name == "config" {
		p.cmd.Args = append(p.cmd.Args, "-admin-http", p.admin)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// A test binary that dies must not leave services running.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	c.t.Cleanup(func() { p.stop(10 * time.Second) })
	return p
}

// restart starts replica i of name again after it ended, with the same
// environment, as Kubernetes restarts a crashed container.
func (c *cluster) restart(name string, i int) *proc {
	c.t.Helper()
	c.mu.Lock()
	old := c.procs[name][i]
	c.mu.Unlock()
	p := c.launch(name, old.env)
	c.mu.Lock()
	c.procs[name][i] = p
	c.mu.Unlock()
	c.waitReady(p, 0)
	return p
}

func (c *cluster) waitReady(p *proc, seq int) {
	c.t.Helper()
	if err := p.waitReady(2 * time.Minute); err != nil {
		c.t.Fatalf("%s #%d: %v\n%s", p.name, seq, err, p.out.String())
	}
}

// waitReady polls /readyz until it answers 200 or the process exits.
func (p *proc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready: %v", p.err)
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s", timeout)
}

// kill ends the process with SIGKILL, as a crash or an OOM kill would.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits for a graceful exit, then kills.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// replica returns the i-th running process of service name.
func (c *cluster) replica(name string, i int) *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[name][i]
}

// logs returns every process's output, for a failing test.
func (c *cluster) logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, s := range services {
		for i, p := range c.procs[s] {
			if out := p.out.String(); out != "" {
				fmt.Fprintf(&b, "--- %s #%d\n%s\n", s, i, out)
			}
		}
	}
	return b.String()
}

// waitMessage polls the tracker's MessageService until done(message).
func (c *cluster) waitMessage(id string, timeout time.Duration, done func(*mailbusv1.Message) bool) *mailbusv1.Message {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *mailbusv1.Message
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: id})
		cancel()
		if err == nil {
			last = resp.GetMessage()
			if done(last) {
				return last
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("message %s did not reach the expected state in %s; last seen: %v\n%s", id, timeout, last, c.logs())
	return nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

const seedTemplate = `tenants:
  - id: acme
    name: ACME
    time_zone: Europe/Berlin
    default_from: noreply
    domain_alias: acme.example
    bounce_domain: bounce.acme.example
    domains:
      - id: acme-example
        name: acme.example
        return_path: verp
        dkim_keys:
          - selector: r2026
            algorithm: rsa
            generate: true
          - selector: e2026
            algorithm: ed25519
            generate: true
    relays:
      - id: acme-relay
        name: relay
        host: 127.0.0.1
        port: %d
        security: none
        auth:
          mechanism: none
        priority: 10
        daily_limit: %d
        max_connections: %d
        domains: [acme.example]
default_server:
  mode: relay
  relay:
    id: system-relay
    name: system
    host: 127.0.0.1
    port: %d
    security: none
`

// kafkaControl is a broker the chaos tests can kill and start again on the
// same log directory.
type kafkaControl interface {
	Brokers() []string
	Kill(t testing.TB)
	Restart(t testing.TB)
}

// redisProc is a redis-server without persistence that a test can stop
// and start again, empty, on the same port: a cache that lost its data.
type redisProc struct {
	addr string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedisProc(t testing.TB) *redisProc {
	t.Helper()
	_, portStr, _ := net.SplitHostPort(freeAddr(t))
	port, _ := strconv.Atoi(portStr)
	r := &redisProc{addr: "127.0.0.1:" + portStr, port: port}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

func (r *redisProc) start(t testing.TB) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed: apt-get install redis-server (CI installs it)")
	}
	r.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--save", "", "--appendonly", "no")
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redis-server on %s did not come up", r.addr)
}

// stop kills the server; what it held is gone.
func (r *redisProc) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}
