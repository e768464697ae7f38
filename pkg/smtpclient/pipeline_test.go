package smtpclient

import (
	"context"
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestSend_pipelinesMailRcptsAndDataAndMapsEachRcptReply(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPAwaitPipelining(), testkit.SMTPReplies(
		testkit.SMTPReplyToRcpt("nobody@dest.test", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}),
	))
	p := newTestPool(t, PoolConfig{})
	r := relayFor(srv, SecurityNone)
	res := mustSend(t, p, r, testMsg("a@dest.test", "nobody@dest.test", "c@dest.test"))

	got := srv.WaitMessages(t, 1)[0]
	// MAIL's reply was held until DATA came: the client sent three RCPTs
	// and DATA without waiting.
	if got.Pipelined != 4 {
		t.Errorf("server had %d commands after MAIL FROM before replying to it, want 4 (3 RCPT + DATA)", got.Pipelined)
	}
	if len(got.To) != 2 || got.To[0] != "a@dest.test" || got.To[1] != "c@dest.test" {
		t.Errorf("server delivered to %v, want a and c", got.To)
	}
	for i, want := range []struct {
		addr string
		code int
	}{{"a@dest.test", 0}, {"nobody@dest.test", 550}, {"c@dest.test", 0}} {
		rc := res.Recipients[i]
		if rc.Address != want.addr {
			t.Fatalf("recipient %d is %s, want %s", i, rc.Address, want.addr)
		}
		switch {
		case want.code == 0 && (rc.Err != nil || rc.Rcpt.Code != 250):
			t.Errorf("%s: RCPT reply %v, error %v; want 250 and no error", rc.Address, rc.Rcpt, rc.Err)
		case want.code != 0 && (rc.Err == nil || rc.Err.Code != want.code || rc.Err.Enhanced != "5.1.1" || rc.Err.Stage != "rcpt" || rc.Rcpt.Code != want.code):
			t.Errorf("%s: RCPT reply %v, error %+v; want %d 5.1.1 at rcpt", rc.Address, rc.Rcpt, rc.Err, want.code)
		}
	}
	if res.Data.Code != 250 || res.Mail.Code != 250 {
		t.Errorf("MAIL reply %v, final reply %v", res.Mail, res.Data)
	}
}

func TestSend_waitsForEveryReplyWhenPipeliningIsNotOffered(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPHideExtensions("PIPELINING"), testkit.SMTPReplies(
		testkit.SMTPReplyToRcpt("nobody@dest.test", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}),
	))
	p := newTestPool(t, PoolConfig{})
	res := mustSend(t, p, relayFor(srv, SecurityNone), testMsg("a@dest.test", "nobody@dest.test"))
	got := srv.WaitMessages(t, 1)[0]
	if got.Pipelined != 0 {
		t.Errorf("the client sent %d commands before the reply to MAIL FROM to a server without PIPELINING", got.Pipelined)
	}
	if res.Recipients[0].Err != nil || res.Recipients[1].Err == nil || res.Recipients[1].Err.Code != 550 {
		t.Errorf("recipient outcomes %+v, %+v", res.Recipients[0].Err, res.Recipients[1].Err)
	}
}

func TestSend_pipelinedTransactionsKeepTheConnectionInStepAfterRefusals(t *testing.T) {
	tests := []struct {
		name    string
		replies testkit.SMTPReplyFunc
		to      []string
		relay   bool // the refusal is a relay failure
	}{
		{"every recipient refused", inFirstMessage(testkit.SMTPStepRcpt, testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}),
			[]string{"x@dest.test", "y@dest.test"}, false},
		{"sender refused", inFirstMessage(testkit.SMTPStepMail, testkit.SMTPReply{Code: 553, Enhanced: "5.7.1", Text: "Sender not allowed"}),
			[]string{"x@dest.test"}, true},
		{"DATA refused", inFirstMessage(testkit.SMTPStepData, testkit.SMTPReply{Code: 554, Enhanced: "5.5.1", Text: "No thanks"}),
			[]string{"x@dest.test"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := testkit.StartSMTP(t, testkit.SMTPReplies(tt.replies))
			p := newTestPool(t, PoolConfig{})
			r := relayFor(srv, SecurityNone)
			res, err := p.Send(context.Background(), r, testMsg(tt.to...))
			if IsRelayFailure(err) != tt.relay {
				t.Fatalf("Send: %v; want a relay failure: %v", err, tt.relay)
			}
			for _, rc := range res.Recipients {
				if rc.Err == nil {
					t.Errorf("%s was not refused", rc.Address)
				}
			}
			// The next message goes over the same connection and its
			// replies are its own.
			res = mustSend(t, p, r, testMsg("ok@dest.test"))
			if res.Recipients[0].Err != nil || res.Data.Code != 250 {
				t.Errorf("next message: %+v, final reply %v", res.Recipients[0].Err, res.Data)
			}
			if m := srv.WaitMessages(t, 1)[0]; len(m.To) != 1 || m.To[0] != "ok@dest.test" {
				t.Errorf("server delivered to %v", m.To)
			}
			if n := srv.Connections(); n != 1 {
				t.Errorf("%d connections, want 1", n)
			}
		})
	}
}

// inFirstMessage gives r at every occurrence of step in the first
// transaction of the first connection.
func inFirstMessage(step testkit.SMTPStep, r testkit.SMTPReply) testkit.SMTPReplyFunc {
	return func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if c.Step == step && c.Conn == 1 && c.Message == 1 {
			return &r
		}
		return nil
	}
}
