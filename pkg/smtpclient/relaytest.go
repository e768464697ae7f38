package smtpclient

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"time"
)

// Step is one step of a relay test.
type Step struct {
	// Name is connect, tls (implicit TLS handshake), greeting, ehlo (twice
	// with STARTTLS: before and after), starttls, auth, mail, rcpt, data or
	// quit.
	Name string
	OK   bool
	// Detail is the server's reply as it wrote it ("535 5.7.8
	// Authentication failed") or the local error verbatim ("dial tcp
	// 127.0.0.1:1: connect: connection refused", "tls: failed to verify
	// certificate: x509: certificate is valid for a.test, not b.test").
	Detail string
	// Reply is the server's reply; zero when the step had none.
	Reply    Reply
	Duration time.Duration
}

// TestOptions configures TestRelay.
type TestOptions struct {
	// MailFrom is the test message's sender; defaults to the relay's user
	// name when it is an address, else postmaster@<HELO name>.
	MailFrom string
	// HeloName defaults to the relay's, else the host name.
	HeloName string
	Timeouts Timeouts
	// RootCAs verifies the relay's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Dial opens the TCP connection; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// TestRelay connects to relay the way a send would (TLS, EHLO, AUTH) and,
// when sendTo is not empty, sends it a short test message; it reports every
// step with the server's own words so that an administrator sees why a
// relay does not work before saving it. It stops at the first failing step
// (after a QUIT when the connection still stands).
func TestRelay(ctx context.Context, relay Relay, sendTo string, opts TestOptions) []Step {
	cfg := PoolConfig{Timeouts: opts.Timeouts, HeloName: opts.HeloName, RootCAs: opts.RootCAs, Dial: opts.Dial}.withDefaults()
	d := &dialer{timeouts: cfg.Timeouts, rootCAs: cfg.RootCAs, dial: cfg.Dial, helo: cfg.HeloName}
	var steps []Step
	trace := tracer(func(s Step) { steps = append(steps, s) })
	helo := relay.HeloName
	if helo == "" {
		helo = d.helo
	}

	s, err := d.open(ctx, relay, staticToken{}, trace)
	if err != nil {
		return steps
	}
	if sendTo != "" {
		from := opts.MailFrom
		if from == "" {
			from = "postmaster@" + helo
			if strings.Contains(relay.Auth.Username, "@") {
				from = relay.Auth.Username
			}
		}
		m := &Message{From: from, To: []string{sendTo}, Data: testMessage(from, sendTo, relay, helo)}
		if err := m.validate(); err != nil {
			steps = append(steps, Step{Name: "mail", Detail: err.Error()})
		} else {
			s.trace = trace
			_ = s.send(ctx, m, newResult(relay, m))
			s.trace = nil
		}
	}
	if s.broken {
		s.close(false)
		return steps
	}
	start := time.Now()
	s.c.CommandTimeout = s.t.Quit
	s.rec.reset()
	err = s.c.Quit()
	rep := s.reply(err)
	if err != nil {
		_ = s.raw.Close()
		trace.step("quit", start, rep, protoErr("quit", rep, err), "")
	} else {
		trace.step("quit", start, rep, nil, "")
	}
	return steps
}

// staticToken uses the configured token; a refresh is not remembered
// beyond the test.
type staticToken struct{}

func (staticToken) token(r Relay) string    { return r.Auth.Token }
func (staticToken) refreshed(Relay, string) {}

func testMessage(from, to string, relay Relay, helo string) []byte {
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\n", from)
	fmt.Fprintf(&b, "To: <%s>\r\n", to)
	fmt.Fprintf(&b, "Subject: mailbus relay test\r\n")
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <relaytest.%s@%s>\r\n", hex.EncodeToString(id), helo)
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	fmt.Fprintf(&b, "This message tests the relay %s (%s). It needs no answer.\r\n", relay.Addr(), relay.Security)
	return []byte(b.String())
}
