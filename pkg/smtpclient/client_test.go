package smtpclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailbus/mailbus/pkg/exterr"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func newTestPool(t testing.TB, cfg PoolConfig) *Pool {
	t.Helper()
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.HeloName == "" {
		cfg.HeloName = "client.test"
	}
	p := NewPool(cfg)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func relayFor(srv *testkit.SMTPServer, sec Security) Relay {
	return Relay{Host: srv.Host(), Port: srv.Port(), Security: sec}
}

func testMsg(to ...string) *Message {
	return &Message{
		From: "sender@acme.test",
		To:   to,
		Data: []byte("From: sender@acme.test\r\nSubject: hello\r\n\r\nHello.\r\n"),
	}
}

func mustSend(t *testing.T, p *Pool, r Relay, m *Message) *Result {
	t.Helper()
	res, err := p.Send(context.Background(), r, m)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	return res
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	return "127.0.0.1", addr.Port
}

func relayError(t *testing.T, err error) *mail.SMTPError {
	t.Helper()
	var re *RelayError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a relay failure", err, err)
	}
	return re.Err
}

func TestSend_deliversOverEachSecurityMode(t *testing.T) {
	cert := testkit.NewCert(t)
	tests := []struct {
		name     string
		server   []testkit.SMTPOption
		security Security
		wantTLS  bool
	}{
		{"plaintext", nil, SecurityNone, false},
		{"STARTTLS", []testkit.SMTPOption{testkit.SMTPStartTLS(cert)}, SecurityStartTLS, true},
		{"implicit TLS", []testkit.SMTPOption{testkit.SMTPImplicitTLS(cert)}, SecurityTLS, true},
		{"opportunistic with STARTTLS offered", []testkit.SMTPOption{testkit.SMTPStartTLS(cert)}, SecurityOpportunistic, true},
		{"opportunistic without STARTTLS", nil, SecurityOpportunistic, false},
		{"plaintext ignores offered STARTTLS", []testkit.SMTPOption{testkit.SMTPStartTLS(cert)}, SecurityNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t, tt.server...)
			p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool})
			res := mustSend(t, p, relayFor(srv, tt.security), testMsg("a@dest.test"))
			if res.TLS != tt.wantTLS {
				t.Errorf("Result.TLS = %v, want %v", res.TLS, tt.wantTLS)
			}
			if res.Data.Code != 250 || res.Recipients[0].Err != nil {
				t.Errorf("result = %+v, want the message taken", res)
			}
			got := srv.WaitMessages(t, 1)[0]
			if got.TLS != tt.wantTLS {
				t.Errorf("server saw TLS = %v, want %v", got.TLS, tt.wantTLS)
			}
			if got.Helo != "client.test" {
				t.Errorf("EHLO name = %q, want client.test", got.Helo)
			}
			if !bytes.Equal(got.Data, testMsg().Data) {
				t.Errorf("data = %q", got.Data)
			}
			if tt.wantTLS && got.TLSVersion < 0x0303 {
				t.Errorf("TLS version %x is below 1.2", got.TLSVersion)
			}
		})
	}
}

func TestSend_verifiesTheServerCertificate(t *testing.T) {
	cert := testkit.NewCert(t, "a.test")
	other := testkit.NewCert(t) // a CA the client does not trust
	tests := []struct {
		name       string
		security   Security
		serverName string
		skip       bool
		roots      *testkit.Cert
		wantErr    string
		wantStage  string
	}{
		{"STARTTLS right name", SecurityStartTLS, "a.test", false, cert, "", ""},
		{"STARTTLS wrong name", SecurityStartTLS, "b.test", false, cert, "x509: certificate is valid for a.test, not b.test", "starttls"},
		{"STARTTLS wrong name, verification off", SecurityStartTLS, "b.test", true, cert, "", ""},
		{"STARTTLS unknown CA", SecurityStartTLS, "a.test", false, other, "x509: certificate signed by unknown authority", "starttls"},
		{"implicit TLS right name", SecurityTLS, "a.test", false, cert, "", ""},
		{"implicit TLS wrong name", SecurityTLS, "b.test", false, cert, "x509: certificate is valid for a.test, not b.test", "tls"},
		{"implicit TLS wrong name, verification off", SecurityTLS, "b.test", true, cert, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt := testkit.SMTPStartTLS(cert)
			if tt.security == SecurityTLS {
				opt = testkit.SMTPImplicitTLS(cert)
			}
			srv := testkit.StartSMTP(t, opt)
			p := newTestPool(t, PoolConfig{RootCAs: tt.roots.CAPool})
			r := relayFor(srv, tt.security)
			r.ServerName, r.SkipVerify = tt.serverName, tt.skip
			res, err := p.Send(context.Background(), r, testMsg("a@dest.test"))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Send: %v", err)
				}
				srv.WaitMessages(t, 1)
				return
			}
			se := relayError(t, err)
			if se.Stage != tt.wantStage || !strings.Contains(se.Message, tt.wantErr) {
				t.Errorf("error = stage %q %q, want stage %q containing %q", se.Stage, se.Message, tt.wantStage, tt.wantErr)
			}
			if res.Recipients[0].Err == nil {
				t.Error("recipient has no error")
			}
			if n := srv.Received(); n != 0 {
				t.Errorf("server received %d messages", n)
			}
		})
	}
}

func TestSend_authenticatesWithEachMechanism(t *testing.T) {
	cert := testkit.NewCert(t)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPRequireAuth(),
		testkit.SMTPAuth("user@acme.test", "s3cret"), testkit.SMTPBearerToken("user@acme.test", "tok-1"))
	for _, mech := range []Mechanism{MechanismPlain, MechanismLogin, MechanismCRAMMD5, MechanismXOAUTH2} {
		t.Run(string(mech), func(t *testing.T) {
			p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool})
			r := relayFor(srv, SecurityStartTLS)
			r.Auth = Auth{Mechanism: mech, Username: "user@acme.test", Password: "s3cret", Token: "tok-1"}
			m := testMsg(string(mech) + "@dest.test")
			mustSend(t, p, r, m)
			got := srv.WaitMessage(t, func(sm testkit.SMTPMessage) bool { return sm.To[0] == m.To[0] })
			if got.AuthMechanism != string(mech) || got.AuthUser != "user@acme.test" {
				t.Errorf("server saw AUTH %q as %q", got.AuthMechanism, got.AuthUser)
			}
		})
	}
}

func TestSend_failedAuthenticationIsARelayFailureWithTheServersWords(t *testing.T) {
	cert := testkit.NewCert(t)
	srv := testkit.StartSMTP(t, testkit.SMTPImplicitTLS(cert), testkit.SMTPAuth("user", "right"))
	p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool})
	r := relayFor(srv, SecurityTLS)
	r.Auth = Auth{Mechanism: MechanismPlain, Username: "user", Password: "wrong"}
	_, err := p.Send(context.Background(), r, testMsg("a@dest.test"))
	se := relayError(t, err)
	if se.Stage != "auth" || se.Code != 535 || se.Enhanced != "5.7.8" || se.Message != "Authentication failed" {
		t.Errorf("error = %+v", se)
	}
	if !exterr.IsPermanent(err) {
		t.Error("535 should read as permanent through the RelayError")
	}
}

func TestSend_refusesToSendCredentialsOverPlaintext(t *testing.T) {
	var authSeen atomic.Int32
	srv := testkit.StartSMTP(t, testkit.SMTPAuth("user", "pw"), testkit.SMTPAllowInsecureAuth(),
		testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
			if c.Step == testkit.SMTPStepAuth {
				authSeen.Add(1)
			}
			return nil
		}))
	p := newTestPool(t, PoolConfig{})
	r := relayFor(srv, SecurityNone)
	r.Auth = Auth{Mechanism: MechanismPlain, Username: "user", Password: "pw"}

	_, err := p.Send(context.Background(), r, testMsg("a@dest.test"))
	se := relayError(t, err)
	if se.Stage != "auth" || !strings.Contains(se.Message, "unencrypted") {
		t.Errorf("error = %+v, want a refusal at auth", se)
	}
	if n := authSeen.Load(); n != 0 {
		t.Fatalf("client sent AUTH %d times over plaintext", n)
	}

	r.AllowPlaintextAuth = true
	mustSend(t, p, r, testMsg("a@dest.test"))
	if got := srv.WaitMessages(t, 1)[0]; got.AuthUser != "user" || got.TLS {
		t.Errorf("server saw user %q TLS %v", got.AuthUser, got.TLS)
	}
}

func TestSend_refreshesARejectedXOAUTH2TokenOnce(t *testing.T) {
	cert := testkit.NewCert(t)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPBearerToken("user@gmail.test", "fresh"))
	var refreshes atomic.Int32
	p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool, MaxMessagesPerConn: 1})
	r := relayFor(srv, SecurityStartTLS)
	r.Auth = Auth{Mechanism: MechanismXOAUTH2, Username: "user@gmail.test", Token: "expired",
		TokenRefresh: func(context.Context) (string, error) { refreshes.Add(1); return "fresh", nil }}

	mustSend(t, p, r, testMsg("a@dest.test"))
	// The next connection (one message per connection) starts with the
	// refreshed token.
	mustSend(t, p, r, testMsg("b@dest.test"))
	srv.WaitMessages(t, 2)
	if n := refreshes.Load(); n != 1 {
		t.Errorf("refreshed %d times, want 1", n)
	}

	r.Auth.Username = "other@gmail.test" // no token works for this user
	_, err := p.Send(context.Background(), r, testMsg("c@dest.test"))
	if se := relayError(t, err); se.Code != 535 || se.Stage != "auth" {
		t.Errorf("error = %+v, want 535 at auth after one retry", se)
	}
	if n := refreshes.Load(); n != 2 {
		t.Errorf("refreshed %d times in all, want 2", n)
	}
}

// tokenList is a TokenProvider handing out its tokens in turn: Token the
// current one, Refresh the next, recording what was rejected.
type tokenList struct {
	mu       sync.Mutex
	tokens   []string
	i        int
	rejected []string
}

func (l *tokenList) Token(context.Context) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tokens[l.i], nil
}

func (l *tokenList) Refresh(_ context.Context, rejected string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rejected = append(l.rejected, rejected)
	if l.i+1 < len(l.tokens) {
		l.i++
	}
	return l.tokens[l.i], nil
}

func TestSend_asksTheTokenProviderForEachConnectionAndSwapsARejectedTokenOnce(t *testing.T) {
	cert := testkit.NewCert(t)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPBearerToken("user@gmail.test", "second"))
	p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool, MaxMessagesPerConn: 1})
	r := relayFor(srv, SecurityStartTLS)
	toks := &tokenList{tokens: []string{"first", "second", "third"}}
	r.Auth = Auth{Mechanism: MechanismXOAUTH2, Username: "user@gmail.test", Tokens: toks}

	// The relay refuses "first" (334 error challenge, then 535): the
	// client hands it back and logs in with "second".
	mustSend(t, p, r, testMsg("a@dest.test"))
	mustSend(t, p, r, testMsg("b@dest.test"))
	srv.WaitMessages(t, 2)
	if len(toks.rejected) != 1 || toks.rejected[0] != "first" {
		t.Errorf("handed back %v, want [first]", toks.rejected)
	}

	// A replacement that is refused too is not swapped again.
	toks.mu.Lock()
	toks.tokens, toks.i = []string{"bad1", "bad2", "bad3"}, 0
	toks.mu.Unlock()
	_, err := p.Send(context.Background(), r, testMsg("c@dest.test"))
	if se := relayError(t, err); se.Code != 535 || se.Stage != "auth" {
		t.Errorf("error = %+v, want 535 at auth after one swap", se)
	}
	if n := len(toks.rejected); n != 2 {
		t.Errorf("handed back %d tokens in all, want 2", n)
	}
}

func TestSend_presentsTheTLSClientCertificate(t *testing.T) {
	cert := testkit.NewCert(t)
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPClientCAs(cert.CAPool), testkit.SMTPRequireAuth())
	p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool})
	r := relayFor(srv, SecurityStartTLS)

	_, err := p.Send(context.Background(), r, testMsg("a@dest.test"))
	if se := relayError(t, err); se.Stage != "mail" || se.Code != 530 {
		t.Errorf("without a certificate: %+v, want 530 at mail", se)
	}

	r.Auth.ClientCert = cert.ClientCert(t, "tenant-a")
	mustSend(t, p, r, testMsg("a@dest.test"))
	if got := srv.WaitMessages(t, 1)[0]; got.ClientCertCN != "tenant-a" {
		t.Errorf("server saw client certificate %q", got.ClientCertCN)
	}
}

func TestSend_reportsEachRecipientsReply(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(
		testkit.SMTPReplyToRcpt("busy@dest.test", testkit.SMTPReply{Code: 450, Enhanced: "4.2.1", Text: "Mailbox busy, try later"}),
		testkit.SMTPReplyToRcpt("nobody@dest.test", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}),
		testkit.SMTPReplyAt(testkit.SMTPStepDot, testkit.SMTPReply{Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as ABC"}),
	))
	p := newTestPool(t, PoolConfig{})
	res := mustSend(t, p, relayFor(srv, SecurityNone), testMsg("ok@dest.test", "busy@dest.test", "nobody@dest.test"))

	if got := res.Data.String(); got != "250 2.0.0 Ok: queued as ABC" {
		t.Errorf("final reply = %q", got)
	}
	if res.Mail.Code != 250 {
		t.Errorf("MAIL reply = %v", res.Mail)
	}
	want := []struct {
		rcpt      string
		code      int
		permanent bool
		errStage  string
	}{
		{"250 2.0.0 I'll make sure <ok@dest.test> gets this", 0, false, ""},
		{"450 4.2.1 Mailbox busy, try later", 450, false, "rcpt"},
		{"550 5.1.1 No such user", 550, true, "rcpt"},
	}
	for i, w := range want {
		rc := res.Recipients[i]
		if rc.Rcpt.String() != w.rcpt {
			t.Errorf("%s: RCPT reply %q, want %q", rc.Address, rc.Rcpt, w.rcpt)
		}
		if w.code == 0 {
			if rc.Err != nil {
				t.Errorf("%s: error %v", rc.Address, rc.Err)
			}
			continue
		}
		if rc.Err == nil || rc.Err.Code != w.code || rc.Err.Permanent() != w.permanent || rc.Err.Stage != w.errStage {
			t.Errorf("%s: error %+v, want code %d permanent %v at %s", rc.Address, rc.Err, w.code, w.permanent, w.errStage)
		}
	}
	if got := res.Accepted(); len(got) != 1 || got[0] != "ok@dest.test" {
		t.Errorf("Accepted() = %v", got)
	}
	if got := srv.WaitMessages(t, 1)[0]; len(got.To) != 1 || got.To[0] != "ok@dest.test" {
		t.Errorf("server delivered to %v", got.To)
	}
}

func TestSend_refusalsAtDataAndDotAreRecipientOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		step      testkit.SMTPStep
		reply     testkit.SMTPReply
		stage     string
		permanent bool
	}{
		{"DATA refused", testkit.SMTPStepData, testkit.SMTPReply{Code: 554, Enhanced: "5.5.1", Text: "No valid recipients"}, "data", true},
		{"message deferred", testkit.SMTPStepDot, testkit.SMTPReply{Code: 451, Enhanced: "4.3.0", Text: "Try again later"}, "dot", false},
		{"message rejected as spam", testkit.SMTPStepDot, testkit.SMTPReply{Code: 550, Enhanced: "5.7.1", Text: "Message rejected as spam"}, "dot", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyOnce(testkit.SMTPReplyAt(tt.step, tt.reply))))
			p := newTestPool(t, PoolConfig{HealthCheckIdle: time.Nanosecond})
			r := relayFor(srv, SecurityNone)
			res, err := p.Send(context.Background(), r, testMsg("a@dest.test", "b@dest.test"))
			if err != nil {
				t.Fatalf("Send: %v, want recipient outcomes", err)
			}
			for _, rc := range res.Recipients {
				if rc.Err == nil || rc.Err.Stage != tt.stage || rc.Err.Code != tt.reply.Code || rc.Err.Permanent() != tt.permanent ||
					rc.Err.Message != tt.reply.Text {
					t.Errorf("%s: %+v", rc.Address, rc.Err)
				}
			}
			// The connection is still good for the next message.
			mustSend(t, p, r, testMsg("c@dest.test"))
			srv.WaitMessages(t, 1)
			if n := srv.Connections(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

func TestSend_relayFailures(t *testing.T) {
	tests := []struct {
		name    string
		replies []testkit.SMTPReplyFunc
		stage   string
		code    int
		text    string
	}{
		{"greeting refused", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepGreeting, testkit.SMTPReply{Code: 554, Enhanced: "5.3.2", Text: "No service for you"})}, "greeting", 554, "No service for you"},
		{"EHLO refused", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepEHLO, testkit.SMTPReply{Code: 421, Enhanced: "4.3.2", Text: "Shutting down"})}, "ehlo", 421, "Shutting down"},
		{"421 at MAIL", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepMail, testkit.SMTPReply{Code: 421, Enhanced: "4.7.0", Text: "Too many connections"})}, "mail", 421, "Too many connections"},
		{"sender refused", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepMail, testkit.SMTPReply{Code: 553, Enhanced: "5.7.1", Text: "Sender address rejected: not owned by user"})}, "mail", 553, "Sender address rejected: not owned by user"},
		{"temporary sender refusal", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepMail, testkit.SMTPReply{Code: 451, Enhanced: "4.3.0", Text: "Queue full"})}, "mail", 451, "Queue full"},
		{"421 at RCPT", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepRcpt, testkit.SMTPReply{Code: 421, Enhanced: "4.4.5", Text: "Server busy"})}, "rcpt", 421, "Server busy"},
		{"421 after the dot", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepDot, testkit.SMTPReply{Code: 421, Enhanced: "4.3.0", Text: "Lost connection to queue"})}, "dot", 421, "Lost connection to queue"},
		{"connection lost after the dot", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepDot, testkit.SMTPReply{Drop: true})}, "dot", 0, ""},
		{"connection lost at RCPT", []testkit.SMTPReplyFunc{testkit.SMTPReplyAt(testkit.SMTPStepRcpt, testkit.SMTPReply{Drop: true})}, "rcpt", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t, testkit.SMTPReplies(tt.replies...))
			p := newTestPool(t, PoolConfig{})
			res, err := p.Send(context.Background(), relayFor(srv, SecurityNone), testMsg("a@dest.test"))
			se := relayError(t, err)
			if se.Stage != tt.stage || se.Code != tt.code || (tt.text != "" && se.Message != tt.text) {
				t.Errorf("error = %+v, want stage %s code %d %q", se, tt.stage, tt.code, tt.text)
			}
			if res == nil || res.Recipients[0].Err != se {
				t.Errorf("recipient does not carry the relay failure: %+v", res)
			}
			if st := p.Stats(); st.Open != 0 && (tt.code == 421 || tt.code == 0) {
				t.Errorf("stats after a dead connection = %+v, want none open", st)
			}
			if tt.stage != "greeting" && tt.stage != "ehlo" && (tt.code == 421 || tt.code == 0) {
				if st := p.Stats(); st.Broken != 1 || st.Open != 0 {
					t.Errorf("stats after a dead connection = %+v, want it discarded", st)
				}
			}
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		host, port := closedPort(t)
		p := newTestPool(t, PoolConfig{})
		_, err := p.Send(context.Background(), Relay{Host: host, Port: port}, testMsg("a@dest.test"))
		se := relayError(t, err)
		if se.Stage != "connect" || !strings.Contains(se.Message, "connection refused") {
			t.Errorf("error = %+v", se)
		}
		if st := p.Stats(); st.Open != 0 {
			t.Errorf("open connections after a failed dial: %d", st.Open)
		}
	})

	t.Run("STARTTLS required but not offered", func(t *testing.T) {
		srv := testkit.StartSMTP(t)
		p := newTestPool(t, PoolConfig{})
		_, err := p.Send(context.Background(), relayFor(srv, SecurityStartTLS), testMsg("a@dest.test"))
		if se := relayError(t, err); se.Stage != "starttls" || !strings.Contains(se.Message, "does not offer STARTTLS") {
			t.Errorf("error = %+v", se)
		}
	})

	t.Run("reply timeout", func(t *testing.T) {
		srv := testkit.StartSMTP(t, testkit.SMTPLatency(300*time.Millisecond))
		p := newTestPool(t, PoolConfig{Timeouts: Timeouts{Mail: 20 * time.Millisecond}})
		_, err := p.Send(context.Background(), relayFor(srv, SecurityNone), testMsg("a@dest.test"))
		se := relayError(t, err)
		var ne net.Error
		if se.Stage != "mail" || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("error = %+v, want a timeout at mail", se)
		}
	})
}

func TestSend_opportunisticTLSFallsBackToPlaintextOnlyWhenAllowed(t *testing.T) {
	cert := testkit.NewCert(t, "mx.other.test") // the client asks for another name
	srv := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert))
	p := newTestPool(t, PoolConfig{RootCAs: cert.CAPool})
	r := relayFor(srv, SecurityOpportunistic)
	r.ServerName = "mx.dest.test"

	_, err := p.Send(context.Background(), r, testMsg("a@dest.test"))
	if se := relayError(t, err); se.Stage != "starttls" {
		t.Errorf("without fallback: %+v, want a starttls failure", se)
	}

	r.PlaintextFallback = true
	res := mustSend(t, p, r, testMsg("b@dest.test"))
	if res.TLS {
		t.Error("fallback send says TLS")
	}
	if got := srv.WaitMessages(t, 1)[0]; got.TLS || got.To[0] != "b@dest.test" {
		t.Errorf("server saw %+v", got)
	}
}

func TestSend_checksAnnouncedExtensionsBeforeMail(t *testing.T) {
	big := testMsg("a@dest.test")
	big.Data = append(big.Data, bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 40)...)
	utf8Addr := testMsg("jürgen@dest.test")
	utf8Header := testMsg("a@dest.test")
	utf8Header.Data = []byte("From: sender@acme.test\r\nSubject: Grüße\r\n\r\nHallo.\r\n")
	eightBitBody := testMsg("a@dest.test")
	eightBitBody.Data = []byte("From: sender@acme.test\r\nSubject: hi\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße.\r\n")

	tests := []struct {
		name     string
		server   []testkit.SMTPOption
		msg      *Message
		code     int
		enhanced string
	}{
		{"too big for SIZE", []testkit.SMTPOption{testkit.SMTPMaxSize(1000)}, big, 552, "5.3.4"},
		{"non-ASCII address without SMTPUTF8", nil, utf8Addr, 553, "5.6.7"},
		{"UTF-8 header without SMTPUTF8", nil, utf8Header, 554, "5.6.9"},
		{"8-bit body without 8BITMIME", []testkit.SMTPOption{testkit.SMTPHideExtensions("8BITMIME")}, eightBitBody, 554, "5.6.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mails atomic.Int32
			opts := append(tt.server, testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
				if c.Step == testkit.SMTPStepMail {
					mails.Add(1)
				}
				return nil
			}))
			srv := testkit.StartSMTP(t, opts...)
			p := newTestPool(t, PoolConfig{})
			r := relayFor(srv, SecurityNone)
			res, err := p.Send(context.Background(), r, tt.msg)
			var se *mail.SMTPError
			if !errors.As(err, &se) || IsRelayFailure(err) {
				t.Fatalf("error = %v, want a message refusal that is not a relay failure", err)
			}
			if se.Code != tt.code || se.Enhanced != tt.enhanced || !se.Permanent() {
				t.Errorf("error = %+v", se)
			}
			if res.Recipients[0].Err != se {
				t.Errorf("recipient error = %v", res.Recipients[0].Err)
			}
			if n := mails.Load(); n != 0 {
				t.Errorf("client sent MAIL FROM %d times", n)
			}
			// The connection carries the next message.
			mustSend(t, p, r, testMsg("next@dest.test"))
			if n := srv.Connections(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

func TestSend_usesExtensionsWhenOffered(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPDSN(), testkit.SMTPUTF8(), testkit.SMTPMaxSize(1<<20))
	p := newTestPool(t, PoolConfig{})
	m := testMsg("jürgen@dest.test", "b@dest.test")
	m.DSN = DSN{Return: "HDRS", EnvelopeID: "delivery-42", Notify: []string{"FAILURE", "DELAY"}}
	mustSend(t, p, relayFor(srv, SecurityNone), m)
	got := srv.WaitMessages(t, 1)[0]
	mo := got.MailOptions
	if !mo.UTF8 || mo.Return != "HDRS" || mo.EnvelopeID != "delivery-42" || mo.Size != m.Size() || mo.Body != "8BITMIME" {
		t.Errorf("MAIL FROM options = %+v", mo)
	}
	for i, ro := range got.RcptOptions {
		if fmt.Sprint(ro.Notify) != "[FAILURE DELAY]" {
			t.Errorf("RCPT %d NOTIFY = %v", i, ro.Notify)
		}
	}

	// A server without DSN gets no DSN parameters (it would refuse them).
	plain := testkit.StartSMTP(t)
	mustSend(t, p, relayFor(plain, SecurityNone), &Message{From: m.From, To: []string{"b@dest.test"}, Data: m.Data, DSN: m.DSN})
	if got := plain.WaitMessages(t, 1)[0].MailOptions; got.Return != "" || got.EnvelopeID != "" {
		t.Errorf("DSN parameters sent to a server without DSN: %+v", got)
	}
}

func TestSend_writesThePrefixBeforeTheMessage(t *testing.T) {
	srv := testkit.StartSMTP(t)
	p := newTestPool(t, PoolConfig{})
	m := testMsg("a@dest.test")
	m.Prefix = []byte("DKIM-Signature: v=1; a=ed25519-sha256; d=acme.test; s=s1; b=abc\r\n")
	m.Data = append(m.Data, []byte(".leading dot\r\n")...)
	mustSend(t, p, relayFor(srv, SecurityNone), m)
	got := srv.WaitMessages(t, 1)[0]
	if want := append(append([]byte{}, m.Prefix...), m.Data...); !bytes.Equal(got.Data, want) {
		t.Errorf("server got %q, want %q", got.Data, want)
	}
}

func TestPool_reusesOneConnectionForManyMessages(t *testing.T) {
	srv := testkit.StartSMTP(t)
	reg := prometheus.NewRegistry()
	p := newTestPool(t, PoolConfig{Registerer: reg})
	r := relayFor(srv, SecurityNone)
	const n = 10
	for i := range n {
		res := mustSend(t, p, r, testMsg(fmt.Sprintf("r%d@dest.test", i)))
		if res.ConnReused != (i > 0) {
			t.Errorf("message %d: ConnReused = %v", i, res.ConnReused)
		}
	}
	msgs := srv.WaitMessages(t, n)
	for _, m := range msgs {
		if m.Conn != msgs[0].Conn {
			t.Fatalf("messages came over connections %d and %d", msgs[0].Conn, m.Conn)
		}
	}
	st := p.Stats()
	if st.ConnectionsOpened != 1 || st.Messages != n || st.Reused != n-1 || st.MessagesPerConnection() != n || st.Idle != 1 {
		t.Errorf("stats = %+v", st)
	}
	if got := counterValue(t, reg, "mailbus_sender_smtp_connections_opened_total"); got != 1 {
		t.Errorf("connections opened counter = %v", got)
	}
	if got := counterValue(t, reg, "mailbus_sender_smtp_messages_total"); got != n {
		t.Errorf("messages counter = %v", got)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestPool_closesAConnectionAfterItsMessageLimit(t *testing.T) {
	srv := testkit.StartSMTP(t)
	p := newTestPool(t, PoolConfig{MaxMessagesPerConn: 3})
	r := relayFor(srv, SecurityNone)
	for i := range 7 {
		mustSend(t, p, r, testMsg(fmt.Sprintf("r%d@dest.test", i)))
	}
	srv.WaitMessages(t, 7)
	if n := srv.Connections(); n != 3 {
		t.Errorf("%d connections for 7 messages at 3 per connection, want 3", n)
	}
	// The two full connections said QUIT; the third is idle in the pool.
	srv.WaitOpenConnections(t, 1)
}

func TestPool_discardsABrokenConnection(t *testing.T) {
	for _, tt := range []struct {
		name  string
		check time.Duration
	}{
		{"found by the health check", time.Nanosecond},
		{"found at MAIL FROM and retried", time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t)
			p := newTestPool(t, PoolConfig{HealthCheckIdle: tt.check})
			r := relayFor(srv, SecurityNone)
			mustSend(t, p, r, testMsg("a@dest.test"))
			srv.KillConnections()
			res := mustSend(t, p, r, testMsg("b@dest.test"))
			if res.ConnReused || res.Recipients[0].Err != nil {
				t.Errorf("result = %+v, want delivery over a new connection", res)
			}
			msgs := srv.WaitMessages(t, 2)
			if msgs[0].Conn == msgs[1].Conn {
				t.Error("second message came over the killed connection")
			}
			if st := p.Stats(); st.Broken != 1 || st.ConnectionsOpened != 2 || st.Open != 1 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestPool_closesIdleConnections(t *testing.T) {
	srv := testkit.StartSMTP(t)
	p := newTestPool(t, PoolConfig{IdleTimeout: 50 * time.Millisecond})
	mustSend(t, p, relayFor(srv, SecurityNone), testMsg("a@dest.test"))
	srv.WaitOpenConnections(t, 0)
	testkit.Eventually(t, testkit.WaitTimeout, func() bool { return p.Stats().Open == 0 }, "the pool to count the idle connection closed")
	if st := p.Stats(); st.Open != 0 || st.ConnectionsClosed != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestPool_keepsToTheConnectionLimitPerRelay(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPLatency(5*time.Millisecond))
	p := newTestPool(t, PoolConfig{MaxConnsPerRelay: 2})
	r := relayFor(srv, SecurityNone)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			if _, err := p.Send(context.Background(), r, testMsg(fmt.Sprintf("r%d@dest.test", i))); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
	wg.Wait()
	srv.WaitMessages(t, 12)
	if n := srv.Connections(); n > 2 {
		t.Errorf("%d connections, want at most 2", n)
	}
}

func TestPool_givesUpWaitingForAConnectionWhenTheContextEnds(t *testing.T) {
	// The first message holds the only connection until the test has
	// seen the second give up: a fixed hold could end first on a busy
	// machine and hand the connection over.
	atDot, release := make(chan struct{}), make(chan struct{})
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if c.Step == testkit.SMTPStepDot && c.Conn == 1 {
			close(atDot)
			<-release
		}
		return nil
	}))
	// Released at the latest before the server is closed, which waits for
	// the held connection.
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	p := newTestPool(t, PoolConfig{MaxConnsPerRelay: 1})
	r := relayFor(srv, SecurityNone)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = p.Send(context.Background(), r, testMsg("a@dest.test"))
	}()
	testkit.Receive(t, atDot, "the first message to hold the connection")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	res, err := p.Send(ctx, r, testMsg("b@dest.test"))
	releaseOnce()
	if !errors.Is(err, context.DeadlineExceeded) || IsRelayFailure(err) {
		t.Errorf("error = %v, want the context's deadline and no relay failure", err)
	}
	if res.Recipients[0].Err == nil {
		t.Error("recipient has no error")
	}
	testkit.Receive(t, done, "the first message to finish")
}

func TestTestRelay_reportsEveryStepInTheServersWords(t *testing.T) {
	cert := testkit.NewCert(t, "relay.acme.test")
	okServer := testkit.StartSMTP(t, testkit.SMTPStartTLS(cert), testkit.SMTPAuth("user@acme.test", "pw"),
		testkit.SMTPReplies(testkit.SMTPReplyAt(testkit.SMTPStepDot, testkit.SMTPReply{Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as ABC"})))
	host, port := closedPort(t)

	tests := []struct {
		name      string
		relay     Relay
		sendTo    string
		wantSteps string
		// wantLast is in the Detail of the last step before quit.
		wantLast string
		lastOK   bool
	}{
		{
			name:      "all good with a test message",
			relay:     Relay{Host: okServer.Host(), Port: okServer.Port(), Security: SecurityStartTLS, ServerName: "relay.acme.test", Auth: Auth{Mechanism: MechanismPlain, Username: "user@acme.test", Password: "pw"}},
			sendTo:    "admin@acme.test",
			wantSteps: "connect greeting ehlo starttls ehlo auth mail rcpt data quit",
			wantLast:  "250 2.0.0 Ok: queued as ABC",
			lastOK:    true,
		},
		{
			name:      "connection only",
			relay:     Relay{Host: okServer.Host(), Port: okServer.Port(), Security: SecurityStartTLS, ServerName: "relay.acme.test"},
			wantSteps: "connect greeting ehlo starttls ehlo quit",
			wantLast:  "250",
			lastOK:    true,
		},
		{
			name:      "certificate for another name",
			relay:     Relay{Host: okServer.Host(), Port: okServer.Port(), Security: SecurityStartTLS, ServerName: "b.test"},
			wantSteps: "connect greeting ehlo starttls",
			wantLast:  "x509: certificate is valid for relay.acme.test, not b.test",
		},
		{
			name:      "wrong password",
			relay:     Relay{Host: okServer.Host(), Port: okServer.Port(), Security: SecurityStartTLS, ServerName: "relay.acme.test", Auth: Auth{Mechanism: MechanismLogin, Username: "user@acme.test", Password: "nope"}},
			wantSteps: "connect greeting ehlo starttls ehlo auth",
			wantLast:  "535 5.7.8 Authentication failed",
		},
		{
			name:      "nothing listening",
			relay:     Relay{Host: host, Port: port},
			wantSteps: "connect",
			wantLast:  fmt.Sprintf("dial tcp %s:%d: connect: connection refused", host, port),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := TestRelay(context.Background(), tt.relay, tt.sendTo, TestOptions{RootCAs: cert.CAPool, MailFrom: "admin@acme.test"})
			var names []string
			for _, s := range steps {
				names = append(names, s.Name)
			}
			if got := strings.Join(names, " "); got != tt.wantSteps {
				t.Fatalf("steps = %q, want %q\n%+v", got, tt.wantSteps, steps)
			}
			last := steps[len(steps)-1]
			if last.Name == "quit" && len(steps) > 1 {
				if !last.OK || !strings.HasPrefix(last.Detail, "221") {
					t.Errorf("quit = %+v", last)
				}
				last = steps[len(steps)-2]
			}
			if last.OK != tt.lastOK || !strings.Contains(last.Detail, tt.wantLast) {
				t.Errorf("last step = %+v, want ok=%v with %q", last, tt.lastOK, tt.wantLast)
			}
			for _, s := range steps[:len(steps)-1] {
				if !s.OK {
					t.Errorf("step %s failed before the last: %+v", s.Name, s)
				}
			}
		})
	}
}

// BenchmarkSend_pooled20msLatency sends 10 KB messages through a pool to a
// server that takes 20 ms for every reply, from several concurrent workers,
// and reports throughput and how many messages each connection carried.
func BenchmarkSend_pooled20msLatency(b *testing.B) {
	for _, workers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			srv := testkit.StartSMTP(b, testkit.SMTPLatency(20*time.Millisecond), testkit.SMTPDiscard())
			p := newTestPool(b, PoolConfig{MaxConnsPerRelay: 16, MaxMessagesPerConn: 1000})
			r := relayFor(srv, SecurityNone)
			body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n"), 134)
			data := append([]byte("From: sender@acme.test\r\nTo: a@dest.test\r\nSubject: bench\r\n\r\n"), body...)
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						res, err := p.Send(context.Background(), r, &Message{From: "sender@acme.test", To: []string{"a@dest.test"}, Data: data})
						if err != nil || res.Recipients[0].Err != nil {
							b.Errorf("Send: %v", err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			st := p.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(st.MessagesPerConnection(), "msgs/conn")
			b.ReportMetric(float64(st.ConnectionsOpened), "conns")
		})
	}
}

func TestSend_cancelledContextAbandonsTheConnectionWithoutBlamingTheRelay(t *testing.T) {
	// The context ends while the server holds the dot: a deadline fixed
	// in advance could instead end it during the connect or the greeting
	// on a busy machine.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if c.Step == testkit.SMTPStepDot {
			cancel()
			<-release // never answer the dot while the test runs
		}
		return nil
	}))
	t.Cleanup(func() { close(release) })
	p := newTestPool(t, PoolConfig{})
	res, err := p.Send(ctx, relayFor(srv, SecurityNone), testMsg("a@dest.test"))
	if !errors.Is(err, context.Canceled) || IsRelayFailure(err) {
		t.Fatalf("error = %v, want the context's cancellation and no relay failure", err)
	}
	if rc := res.Recipients[0]; rc.Err == nil || rc.Err.Permanent() {
		t.Errorf("recipient = %+v, want a temporary error", rc)
	}
	if st := p.Stats(); st.Broken != 1 || st.Open != 0 {
		t.Errorf("stats = %+v, want the connection thrown away", st)
	}
}
