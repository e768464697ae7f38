package bounce

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// waitLong bounds every wait for the listener: generous, because the
// machine running the tests may be busy.
const waitLong = 60 * time.Second

// startListener runs the service's SMTP listener on a loopback port until
// the test ends.
func startListener(t *testing.T, cfg Config) (*Service, string) {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.VERPKeys == nil {
		cfg.VERPKeys = [][]byte{testKey}
	}
	tenants := staticTenants{"acme": {Id: "acme", BounceDomain: "bounce.acme.example"}}
	s := New(cfg, Deps{Directory: tenants, Tenants: tenants, Publisher: &recorder{}, Metrics: prometheus.NewRegistry()})
	return s, serve(t, s)
}

// smtpConn is a raw client connection: the tests look at the greeting
// itself, which an SMTP client library hides.
type smtpConn struct {
	net.Conn
	r *bufio.Reader
}

// dialFrom connects to addr from the loopback address local ("" for any).
func dialFrom(t *testing.T, addr, local string) *smtpConn {
	t.Helper()
	d := net.Dialer{Timeout: waitLong}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smtpConn{Conn: c, r: bufio.NewReader(c)}
}

// line reads one reply line, waiting at most waitLong.
func (c *smtpConn) line(t *testing.T) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	l, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading from the listener: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// closedByServer reports whether the server closed the connection: the
// next read ends with EOF (or a reset) rather than a timeout.
func (c *smtpConn) closedByServer(t *testing.T) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	rest, err := io.ReadAll(c.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Logf("connection still open after %v; read %q", waitLong, rest)
		return false
	}
	return true
}

func greeted(t *testing.T, c *smtpConn) {
	t.Helper()
	if l := c.line(t); !strings.HasPrefix(l, "220 ") {
		t.Fatalf("greeting %q, want 220", l)
	}
}

func refusedAsTooMany(t *testing.T, c *smtpConn) {
	t.Helper()
	l := c.line(t)
	if !strings.HasPrefix(l, "421 4.7.0 ") || !strings.Contains(l, "too many connections, try again later") {
		t.Fatalf("greeting %q, want 421 4.7.0 ... too many connections, try again later", l)
	}
	if !c.closedByServer(t) {
		t.Fatal("the listener kept a refused connection open")
	}
}

// waitGreeted dials until the listener greets with 220: a connection the
// client closed frees its slot once the server has seen the close, which
// takes a moment.
func waitGreeted(t *testing.T, addr, local string) *smtpConn {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		c := dialFrom(t, addr, local)
		l := c.line(t)
		if strings.HasPrefix(l, "220 ") {
			return c
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("still refused after %v: %q", waitLong, l)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestListener_refusesConnectionsOverThePerAddressCapWith421(t *testing.T) {
	s, addr := startListener(t, Config{MaxConnsPerIP: 3, MaxConns: 100})
	var open []*smtpConn
	for range 3 {
		c := dialFrom(t, addr, "127.0.0.1")
		greeted(t, c)
		open = append(open, c)
	}
	// Idle connections that never said EHLO count: they hold the slots.
	refusedAsTooMany(t, dialFrom(t, addr, "127.0.0.1"))
	refusedAsTooMany(t, dialFrom(t, addr, "127.0.0.1"))
	if got := testutil.ToFloat64(s.metrics.refused.WithLabelValues("per_address")); got != 2 {
		t.Errorf("refused connections per address = %v, want 2", got)
	}
	// Another address is not affected.
	greeted(t, dialFrom(t, addr, "127.0.0.2"))

	open[0].Close()
	open[1].Close()
	c := waitGreeted(t, addr, "127.0.0.1")
	if _, err := c.Write([]byte("EHLO mx.example.net\r\n")); err != nil {
		t.Fatal(err)
	}
	if l := c.line(t); !strings.HasPrefix(l, "250") {
		t.Fatalf("EHLO on a re-admitted connection answered %q", l)
	}
}

func TestListener_refusesConnectionsOverTheTotalCapWith421(t *testing.T) {
	s, addr := startListener(t, Config{MaxConnsPerIP: 2, MaxConns: 3})
	a1 := dialFrom(t, addr, "127.0.0.1")
	greeted(t, a1)
	greeted(t, dialFrom(t, addr, "127.0.0.1"))
	greeted(t, dialFrom(t, addr, "127.0.0.2"))
	// 127.0.0.3 has no connection yet, but the listener is full.
	refusedAsTooMany(t, dialFrom(t, addr, "127.0.0.3"))
	if got := testutil.ToFloat64(s.metrics.refused.WithLabelValues("total")); got != 1 {
		t.Errorf("refused connections over the total = %v, want 1", got)
	}
	a1.Close()
	waitGreeted(t, addr, "127.0.0.3")
}

func TestListener_closesAnIdleSession(t *testing.T) {
	_, addr := startListener(t, Config{IdleTimeout: time.Second})
	c := dialFrom(t, addr, "")
	greeted(t, c)
	// Say nothing: the server gives up after the idle timeout.
	if l := c.line(t); !strings.HasPrefix(l, "421 4.4.2 ") {
		t.Fatalf("after idling, the listener said %q; want 421 4.4.2", l)
	}
	if !c.closedByServer(t) {
		t.Fatal("the listener kept an idle session open")
	}
}

func TestLimitsFromEnv_readsTheLimitsAndRefusesNonsense(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	var c Config
	err := LimitsFromEnv(&c, env(map[string]string{
		"MAILBUS_BOUNCE_MAX_CONNS": "50", "MAILBUS_BOUNCE_MAX_CONNS_PER_IP": "5",
		"MAILBUS_BOUNCE_CONNS_PER_MINUTE": "30", "MAILBUS_BOUNCE_IDLE_TIMEOUT": "90s",
	}))
	if err != nil || c.MaxConns != 50 || c.MaxConnsPerIP != 5 || c.ConnsPerMinute != 30 || c.IdleTimeout != 90*time.Second {
		t.Fatalf("LimitsFromEnv = %+v, %v", c, err)
	}
	var unset Config
	if err := LimitsFromEnv(&unset, env(nil)); err != nil || unset.withDefaults().MaxConns != 100 ||
		unset.withDefaults().MaxConnsPerIP != 10 || unset.withDefaults().IdleTimeout != 5*time.Minute {
		t.Fatalf("unset variables: %+v, %v; want the defaults", unset.withDefaults(), err)
	}
	for _, bad := range []map[string]string{
		{"MAILBUS_BOUNCE_MAX_CONNS": "lots"},
		{"MAILBUS_BOUNCE_MAX_CONNS_PER_IP": "0"},
		{"MAILBUS_BOUNCE_CONNS_PER_MINUTE": "-1"},
		{"MAILBUS_BOUNCE_IDLE_TIMEOUT": "300"},
	} {
		if err := LimitsFromEnv(&Config{}, env(bad)); err == nil {
			t.Errorf("LimitsFromEnv accepted %v", bad)
		}
	}
}
