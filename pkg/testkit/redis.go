package testkit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStartAttempts bounds the retries when another process grabs the port
// we picked between closing our probe listener and redis-server binding it.
const redisStartAttempts = 5

// redisReadyTimeout is how long a fresh redis-server may take to answer PING;
// generous because the test machines are small and shared (see
// WaitTimeout).
const redisReadyTimeout = WaitTimeout

// StartRedis returns the address (host:port) of a real redis-server that is
// empty and private to t.
//
// When the redis-server binary is on PATH it starts its own server on a free
// loopback port, without persistence, and kills it when t ends. Only when
// the binary is missing does it fall back to the shared server in the
// REDIS_ADDR environment variable; such a server is not private, so tests
// must then keep to the key prefix from RedisKeyPrefix (whose keys are
// deleted at cleanup). With neither, the test fails when the CI environment
// variable is set and is skipped otherwise, saying how to install Redis.
func StartRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if addr := os.Getenv("REDIS_ADDR"); addr != "" {
			waitRedis(t, addr, nil)
			return addr
		}
		requireRedisBinary(t, "redis-server not found on PATH and REDIS_ADDR is not set: install it (apt-get install redis-server) or point REDIS_ADDR at a server")
	}
	return startRedisRetrying(t, bin)
}

// startRedisRetrying starts redis-server with extra arguments, trying other
// ports when the one picked was taken meanwhile.
func startRedisRetrying(t testing.TB, bin string, extra ...string) string {
	t.Helper()
	var lastErr error
	for range redisStartAttempts {
		addr, err := startRedisServer(t, bin, extra...)
		if err == nil {
			return addr
		}
		lastErr = err
		if !errors.Is(err, errRedisExited) {
			break
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return ""
}

// requireRedisBinary ends t because redis-server is missing: a failure in CI,
// where its absence is a broken image, a skip on a developer's machine.
func requireRedisBinary(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// errRedisExited means redis-server stopped before answering PING, most often
// because the port was taken; StartRedis then tries another port.
var errRedisExited = errors.New("redis-server exited before it was ready")

// startRedisServer starts one redis-server on a free port and waits for it.
func startRedisServer(t testing.TB, bin string, extra ...string) (string, error) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr, stop, err := startRedisOn(t, bin, port, extra...)
	if err != nil {
		return "", err
	}
	t.Cleanup(stop)
	return addr, nil
}

// startRedisOn starts one redis-server on port and waits for it; stop kills
// it and waits until it has exited.
func startRedisOn(t testing.TB, bin string, port int, extra ...string) (addr string, stop func(), err error) {
	t.Helper()
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// --dir keeps any file redis might write (it should write none with these
	// flags) out of the package directory.
	args := append([]string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", t.TempDir(),
		"--loglevel", "warning",
	}, extra...)
	cmd := exec.Command(bin, args...)
	var out syncBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	setRedisProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("run %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	if err := pingUntilReady(addr, exited); err != nil {
		stop()
		return "", nil, fmt.Errorf("redis-server on %s: %w; output:\n%s", addr, err, out.String())
	}
	return addr, stop, nil
}

// freePort asks the kernel for a free loopback port. redis-server cannot
// take port 0 and report back what it bound, so we pick one and accept the
// small race that StartRedis retries.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitRedis fails t unless the server at addr answers PING in time.
func waitRedis(t testing.TB, addr string, exited <-chan struct{}) {
	t.Helper()
	if err := pingUntilReady(addr, exited); err != nil {
		t.Fatalf("redis at %s is not answering: %v", addr, err)
	}
}

// pingUntilReady sends PING over a raw connection until the server answers
// PONG, the process exits, or redisReadyTimeout passes. It speaks RESP by
// hand so that the check does not depend on a client library's retries.
func pingUntilReady(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(redisReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errRedisExited
		default:
		}
		if lastErr = pingOnce(addr); lastErr == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no PONG within %s: %w", redisReadyTimeout, lastErr)
}

func pingOnce(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	// A server that is still loading answers -LOADING; keep waiting.
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// RedisKeyPrefix returns a key prefix unique to t, for tests that may run
// against the shared REDIS_ADDR server. When addr is such a shared server,
// every key under the prefix is deleted when t ends; on a private server from
// StartRedis the prefix is harmless. The prefix contains no braces, so it
// never changes which Redis Cluster hash tag a key has.
func RedisKeyPrefix(t testing.TB, addr string) string {
	t.Helper()
	prefix := "test:" + sanitizeKeyPart(t.Name()) + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	if addr != os.Getenv("REDIS_ADDR") {
		return prefix
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		if err := deleteByPrefix(ctx, rdb, prefix); err != nil {
			t.Logf("delete test keys %s* on %s: %v", prefix, addr, err)
		}
	})
	return prefix
}

var keyPartUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// sanitizeKeyPart keeps subtest names (with slashes and spaces) readable
// in keys while removing braces and glob characters that would change hash
// tags or SCAN patterns.
func sanitizeKeyPart(s string) string {
	return keyPartUnsafe.ReplaceAllString(s, "_")
}

func deleteByPrefix(ctx context.Context, rdb *redis.Client, prefix string) error {
	iter := rdb.Scan(ctx, 0, prefix+"*", 500).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := rdb.Unlink(ctx, batch...).Err(); err != nil {
				return fmt.Errorf("unlink: %w", err)
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	if len(batch) > 0 {
		if err := rdb.Unlink(ctx, batch...).Err(); err != nil {
			return fmt.Errorf("unlink: %w", err)
		}
	}
	return nil
}

// syncBuffer collects a child process's output; exec copies into it from
// its own goroutine while a failing start may read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
