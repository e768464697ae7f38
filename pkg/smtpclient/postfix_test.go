package smtpclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// The tests in this file check the client against Postfix, a production
// MTA, rather than only against the project's own test server: TLS, SASL
// through Cyrus and Postfix's own replies. testkit.StartPostfix skips them,
// saying what is needed, without Postfix, saslpasswd2 or root.

const (
	postfixDomain   = "postfix.test"
	postfixUser     = "mailer@" + postfixDomain
	postfixPassword = "pf-s3cret-7d41"
)

// postfixServer is a private Postfix that discards all mail and relays
// only for postfixUser.
type postfixServer struct{ *testkit.Postfix }

func startPostfix(t *testing.T) postfixServer {
	t.Helper()
	return postfixServer{testkit.StartPostfix(t, testkit.PostfixOptions{
		Hostname:  postfixDomain,
		SASLUsers: map[string]string{postfixUser: postfixPassword},
	})}
}

func (pf postfixServer) relay(sec Security, mech Mechanism, password string) Relay {
	port := pf.SMTPPort
	if sec == SecurityTLS {
		port = pf.SMTPSPort
	}
	return Relay{Host: "127.0.0.1", Port: port, Security: sec,
		Auth: Auth{Mechanism: mech, Username: postfixUser, Password: password}}
}

func TestPool_deliversThroughPostfixWithTLSAndSASL(t *testing.T) {
	pf := startPostfix(t)
	p := newTestPool(t, PoolConfig{RootCAs: pf.Cert.CAPool})
	tests := []struct {
		name string
		sec  Security
		mech Mechanism
	}{
		{"STARTTLS with AUTH PLAIN", SecurityStartTLS, MechanismPlain},
		{"STARTTLS with AUTH LOGIN", SecurityStartTLS, MechanismLogin},
		{"implicit TLS with AUTH PLAIN", SecurityTLS, MechanismPlain},
		{"implicit TLS with AUTH LOGIN", SecurityTLS, MechanismLogin},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			to := fmt.Sprintf("rcpt%d@example.org", i)
			res, err := p.Send(context.Background(), pf.relay(tt.sec, tt.mech, postfixPassword), testMsg(to))
			if err != nil {
				t.Fatalf("Send: %v\nPostfix log:\n%s", err, pf.Log())
			}
			if !res.TLS || res.Recipients[0].Err != nil || res.Data.Code != 250 || !strings.Contains(res.Data.Text, "queued as") {
				t.Fatalf("result = %+v", res)
			}
			// Postfix's own log confirms what the client did: the TLS
			// handshake, the mechanism and the user, then our recipient.
			queueID := strings.TrimSpace(res.Data.Text[strings.LastIndex(res.Data.Text, " ")+1:])
			line := pf.WaitLog(t, queueID+": client=localhost[127.0.0.1]")
			if want := "sasl_method=" + string(tt.mech) + ", sasl_username=" + postfixUser; !strings.Contains(line, want) {
				t.Errorf("Postfix logged %q, want it to contain %q", line, want)
			}
			// The same smtpd process established TLS.
			smtpd, _, _ := strings.Cut(line[strings.Index(line, "postfix/smtpd["):], " ")
			pf.WaitLog(t, smtpd, "TLS connection established from localhost[127.0.0.1]: TLSv1.")
			pf.WaitLog(t, queueID+": to=<"+to+">", "status=sent")
		})
	}
}

func TestPool_reportsPostfixsWordsForAWrongPassword(t *testing.T) {
	pf := startPostfix(t)
	p := newTestPool(t, PoolConfig{RootCAs: pf.Cert.CAPool})
	for _, mech := range []Mechanism{MechanismPlain, MechanismLogin} {
		t.Run(string(mech), func(t *testing.T) {
			_, err := p.Send(context.Background(), pf.relay(SecurityStartTLS, mech, "wrong"), testMsg("x@example.org"))
			var re *RelayError
			if !errors.As(err, &re) {
				t.Fatalf("Send = %v, want a RelayError", err)
			}
			if re.Err.Code != 535 || re.Err.Enhanced != "5.7.8" || re.Err.Stage != "auth" ||
				re.Err.Message != "Error: authentication failed: authentication failure" {
				t.Errorf("error = %+v, want Postfix's 535 5.7.8 at auth", re.Err)
			}
			pf.WaitLog(t, "SASL "+string(mech)+" authentication failed")
		})
	}
}

func TestTestRelay_showsPostfixsWords(t *testing.T) {
	pf := startPostfix(t)
	steps := TestRelay(context.Background(), pf.relay(SecurityStartTLS, MechanismPlain, postfixPassword), "someone@example.org",
		TestOptions{RootCAs: pf.Cert.CAPool, HeloName: "client.test"})
	var b bytes.Buffer
	for _, s := range steps {
		fmt.Fprintf(&b, "%s ok=%v %s\n", s.Name, s.OK, s.Detail)
		if !s.OK {
			t.Errorf("step %s failed", s.Name)
		}
	}
	for _, want := range []string{"greeting ok=true 220 postfix.test ESMTP mailbus test Postfix", "auth ok=true 235 2.7.0 Authentication successful", "quit ok=true 221 2.0.0 Bye"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("steps lack %q:\n%s", want, b.String())
		}
	}
}

func TestPool_pipelinesThroughPostfixAndMapsEachRcptReply(t *testing.T) {
	pf := postfixServer{testkit.StartPostfix(t, testkit.PostfixOptions{
		Hostname:  postfixDomain,
		SASLUsers: map[string]string{postfixUser: postfixPassword},
		MainCF: map[string]string{
			"smtpd_recipient_restrictions": "check_recipient_access inline:{nobody@example.org=REJECT}, permit",
		},
	})}
	p := newTestPool(t, PoolConfig{RootCAs: pf.Cert.CAPool})
	// Postfix offers PIPELINING; its refusal of the second recipient must
	// land on that recipient only.
	res, err := p.Send(context.Background(), pf.relay(SecurityStartTLS, MechanismPlain, postfixPassword),
		testMsg("first@example.org", "nobody@example.org", "third@example.org"))
	if err != nil {
		t.Fatalf("Send: %v\nPostfix log:\n%s", err, pf.Log())
	}
	for i, rc := range res.Recipients {
		refused := i == 1
		if (rc.Err != nil) != refused || (refused && (rc.Err.Code/100 != 5 || rc.Err.Stage != "rcpt")) || (!refused && rc.Rcpt.Code != 250) {
			t.Errorf("%s: RCPT reply %v, error %+v", rc.Address, rc.Rcpt, rc.Err)
		}
	}
	if res.Data.Code != 250 {
		t.Fatalf("final reply %v", res.Data)
	}
	queueID := strings.TrimSpace(res.Data.Text[strings.LastIndex(res.Data.Text, " ")+1:])
	pf.WaitLog(t, queueID+": to=<first@example.org>", "status=sent")
	pf.WaitLog(t, queueID+": to=<third@example.org>", "status=sent")
	if strings.Contains(pf.Log(), "improper command pipelining") {
		t.Errorf("Postfix saw improper pipelining:\n%s", pf.Log())
	}
}
