package testkit

import (
	"crypto/tls"
	"errors"
	"io"
	"net/textproto"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpDialog is a raw SMTP conversation, so the tests see the server's exact
// lines.
type smtpDialog struct {
	t *testing.T
	c *textproto.Conn
}

func dialSMTP(t *testing.T, addr string) *smtpDialog {
	t.Helper()
	c, err := textproto.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smtpDialog{t, c}
}

// reply reads one reply and returns it as "code text" with the lines joined
// by "\n".
func (s *smtpDialog) reply() string {
	s.t.Helper()
	code, msg, err := s.c.ReadResponse(0)
	if err != nil {
		s.t.Fatalf("read reply: %v", err)
	}
	return strings.TrimSpace(strconv.Itoa(code) + " " + msg)
}

func (s *smtpDialog) cmd(line string) string {
	s.t.Helper()
	if err := s.c.PrintfLine("%s", line); err != nil {
		s.t.Fatalf("write %q: %v", line, err)
	}
	return s.reply()
}

func TestStartSMTP_acceptsAndRecordsMessages(t *testing.T) {
	srv := StartSMTP(t, SMTPDSN())
	c, err := smtp.Dial(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("from@acme.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env-1"}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"a@dest.test", "b@dest.test"} {
		if err := c.Rcpt(to, &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(w, "Subject: hi\r\n\r\n.dot\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	m := srv.WaitMessages(t, 1)[0]
	if m.From != "from@acme.test" || strings.Join(m.To, ",") != "a@dest.test,b@dest.test" || m.Helo != "client.test" {
		t.Errorf("envelope = %+v", m)
	}
	if string(m.Data) != "Subject: hi\r\n\r\n.dot\r\n" {
		t.Errorf("data = %q", m.Data)
	}
	if m.MailOptions.Return != smtp.DSNReturnHeaders || m.MailOptions.EnvelopeID != "env-1" || m.RcptOptions[1].Notify[0] != smtp.DSNNotifyFailure {
		t.Errorf("options = %+v %+v", m.MailOptions, m.RcptOptions)
	}
	if m.TLS || m.AuthUser != "" || m.Conn != 1 {
		t.Errorf("session = %+v", m)
	}
	srv.WaitOpenConnections(t, 0)
}

func TestStartSMTP_givesInjectedRepliesAtEachStep(t *testing.T) {
	srv := StartSMTP(t, SMTPReplies(
		SMTPReplyToRcpt("busy@dest.test", SMTPReply{Code: 450, Enhanced: "4.2.1", Text: "Mailbox busy"}),
		func(c SMTPCommand) *SMTPReply {
			if c.Step == SMTPStepMail && c.Arg == "refused@acme.test" {
				return &SMTPReply{Code: 553, Enhanced: "5.7.1", Text: "Sender refused\nby policy"}
			}
			if c.Step == SMTPStepData && c.Conn == 2 {
				return &SMTPReply{Code: 554, Enhanced: "5.5.1", Text: "No valid recipients"}
			}
			if c.Step == SMTPStepDot {
				return &SMTPReply{Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as ABC"}
			}
			return nil
		},
	))
	s := dialSMTP(t, srv.Addr())
	if got := s.reply(); !strings.HasPrefix(got, "220 mx.testkit.local") {
		t.Fatalf("greeting = %q", got)
	}
	steps := []struct{ cmd, want string }{
		{"EHLO client.test", "250 Hello client.test"},
		{"MAIL FROM:<refused@acme.test>", "553 5.7.1 Sender refused\n5.7.1 by policy"},
		{"MAIL FROM:<ok@acme.test>", "250 2.0.0 Roger, accepting mail from <ok@acme.test>"},
		{"RCPT TO:<busy@dest.test>", "450 4.2.1 Mailbox busy"},
		{"RCPT TO:<a@dest.test>", "250 2.0.0 I'll make sure <a@dest.test> gets this"},
		{"DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>"},
		{"Subject: x\r\n\r\nbody\r\n.", "250 2.0.0 Ok: queued as ABC"},
		{"RSET", "250 2.0.0 Session reset"},
		{"QUIT", "221 2.0.0 Bye"},
	}
	for _, st := range steps {
		if got := s.cmd(st.cmd); !strings.HasPrefix(got, st.want) {
			t.Errorf("%q: got %q, want %q", st.cmd, got, st.want)
		}
	}
	if m := srv.WaitMessages(t, 1)[0]; strings.Join(m.To, ",") != "a@dest.test" {
		t.Errorf("stored recipients %v", m.To)
	}

	t.Run("DATA refused", func(t *testing.T) {
		s := dialSMTP(t, srv.Addr())
		s.reply()
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<b@acme.test>")
		s.cmd("RCPT TO:<x@dest.test>")
		if got := s.cmd("DATA"); got != "554 5.5.1 No valid recipients" {
			t.Errorf("DATA: %q", got)
		}
		if got := s.cmd("RSET"); !strings.HasPrefix(got, "250") {
			t.Errorf("RSET after refused DATA: %q", got)
		}
	})
}

func TestStartSMTP_refusesEverythingAfterAnInjectedGreeting(t *testing.T) {
	srv := StartSMTP(t, SMTPReplies(SMTPReplyAt(SMTPStepGreeting, SMTPReply{Code: 554, Enhanced: "5.3.2", Text: "No service"})))
	s := dialSMTP(t, srv.Addr())
	if got := s.reply(); got != "554 5.3.2 No service" {
		t.Errorf("greeting = %q", got)
	}
	if got := s.cmd("EHLO client.test"); got != "503 5.5.1 Bad sequence of commands" {
		t.Errorf("EHLO = %q", got)
	}
	if got := s.cmd("QUIT"); got != "221 2.0.0 Bye" {
		t.Errorf("QUIT = %q", got)
	}
}

func TestStartSMTP_closesTheConnectionAfterA421(t *testing.T) {
	srv := StartSMTP(t, SMTPReplies(SMTPReplyAt(SMTPStepMail, SMTPReply{Code: 421, Enhanced: "4.7.0", Text: "Too busy"})))
	s := dialSMTP(t, srv.Addr())
	s.reply()
	s.cmd("EHLO client.test")
	if got := s.cmd("MAIL FROM:<a@acme.test>"); got != "421 4.7.0 Too busy" {
		t.Errorf("MAIL = %q", got)
	}
	if _, err := s.c.ReadLine(); !errors.Is(err, io.EOF) {
		t.Errorf("after 421 read %v, want EOF", err)
	}
	srv.WaitOpenConnections(t, 0)
}

func TestStartSMTP_editsItsEHLOKeywords(t *testing.T) {
	cert := NewCert(t)
	srv := StartSMTP(t, SMTPStartTLS(cert), SMTPHideExtensions("8BITMIME", "CHUNKING"), SMTPMaxSize(5000), SMTPAuth("u", "p"))
	c, err := smtp.Dial(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := map[string]bool{"STARTTLS": true, "8BITMIME": false, "CHUNKING": false, "PIPELINING": true, "AUTH": false}
	for ext, offered := range want {
		if ok, _ := c.Extension(ext); ok != offered {
			t.Errorf("before TLS: %s offered = %v, want %v", ext, ok, offered)
		}
	}
	if size, ok := c.MaxMessageSize(); !ok || size != 5000 {
		t.Errorf("SIZE = %d %v", size, ok)
	}
}

func TestStartSMTP_speaksTLSAndChecksCredentials(t *testing.T) {
	cert := NewCert(t)
	tests := []struct {
		name string
		opt  SMTPOption
		dial func(addr string, cfg *tls.Config) (*smtp.Client, error)
	}{
		{"STARTTLS", SMTPStartTLS(cert), smtp.DialStartTLS},
		{"implicit TLS", SMTPImplicitTLS(cert), smtp.DialTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := StartSMTP(t, tt.opt, SMTPAuth("user", "pw"), SMTPBearerToken("user", "tok"), SMTPRequireAuth())
			for _, a := range []struct {
				client sasl.Client
				ok     bool
			}{
				{sasl.NewPlainClient("", "user", "bad"), false},
				{sasl.NewPlainClient("", "user", "pw"), true},
				{sasl.NewLoginClient("user", "pw"), true},
				{sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "user", Token: "tok"}), true},
			} {
				c, err := tt.dial(srv.Addr(), cert.ClientTLSConfig("localhost"))
				if err != nil {
					t.Fatal(err)
				}
				mech, _, _ := a.client.Start()
				err = c.Auth(a.client)
				if (err == nil) != a.ok {
					t.Errorf("%s: auth error %v, want ok=%v", mech, err, a.ok)
				}
				if !a.ok {
					if err := c.Mail("a@acme.test", nil); err == nil || !strings.Contains(err.Error(), "Authentication required") {
						t.Errorf("MAIL without auth: %v", err)
					}
					c.Close()
					continue
				}
				if err := c.SendMail("a@acme.test", []string{mech + "@dest.test"}, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
					t.Fatalf("%s: send: %v", mech, err)
				}
				c.Close()
				m := srv.WaitMessage(t, func(m SMTPMessage) bool { return m.To[0] == mech+"@dest.test" })
				if !m.TLS || m.TLSServerName != "localhost" || m.AuthMechanism != mech || m.AuthUser != "user" {
					t.Errorf("%s: message session = %+v", mech, m)
				}
			}
		})
	}
}

func TestStartSMTP_refusesAuthBeforeTLS(t *testing.T) {
	srv := StartSMTP(t, SMTPStartTLS(NewCert(t)), SMTPAuth("user", "pw"))
	s := dialSMTP(t, srv.Addr())
	s.reply()
	if got := s.cmd("EHLO client.test"); strings.Contains(got, "AUTH") {
		t.Errorf("AUTH offered before TLS: %q", got)
	}
	if got := s.cmd("AUTH PLAIN AHVzZXIAcHc="); !strings.HasPrefix(got, "538 5.7.11") {
		t.Errorf("AUTH before TLS = %q", got)
	}
}

func TestStartSMTP_killConnectionsDropsThemAtOnce(t *testing.T) {
	srv := StartSMTP(t)
	s := dialSMTP(t, srv.Addr())
	s.reply()
	srv.WaitOpenConnections(t, 1)
	srv.KillConnections()
	if _, err := s.c.ReadLine(); err == nil {
		t.Error("connection still readable after KillConnections")
	}
	srv.WaitOpenConnections(t, 0)
	// The server keeps accepting.
	s2 := dialSMTP(t, srv.Addr())
	if got := s2.reply(); !strings.HasPrefix(got, "220") {
		t.Errorf("greeting after kill = %q", got)
	}
	if srv.Connections() != 2 {
		t.Errorf("Connections() = %d", srv.Connections())
	}
}

func TestNewCert_isTrustedOnlyForItsNames(t *testing.T) {
	cert := NewCert(t, "a.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cert.ServerTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	for _, tt := range []struct{ name, wantErr string }{
		{"a.test", ""},
		{"b.test", "x509: certificate is valid for a.test, not b.test"},
	} {
		c, err := tls.Dial("tcp", ln.Addr().String(), cert.ClientTLSConfig(tt.name))
		if c != nil {
			c.Close()
		}
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}
