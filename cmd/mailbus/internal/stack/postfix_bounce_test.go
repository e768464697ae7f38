package stack_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// TestBounce_postfixsOwnDSNMarksTheRecipientBouncedUserUnknown closes the
// loop with a real MTA: the tenant's relay is a private Postfix that accepts
// the message and only then fails the recipient, so Postfix writes the DSN
// itself and delivers it, as it would across the internet, to the VERP
// return path's domain, which its transport table sends to mailbus's bounce
// listener. Nothing in the test writes or hands over the bounce. The cases
// are the ways Postfix fails a recipient after taking the message, each with
// its own words in the DSN.
func TestBounce_postfixsOwnDSNMarksTheRecipientBouncedUserUnknown(t *testing.T) {
	const rcpt = "gone@example.net"
	tests := []struct {
		name string
		// setup returns the Postfix options that fail rcpt after accepting.
		setup func(t *testing.T) testkit.PostfixOptions
		// detail is in the DSN's diagnostic, so in the recipient's detail.
		detail string
	}{
		{
			name: "error transport",
			setup: func(*testing.T) testkit.PostfixOptions {
				return testkit.PostfixOptions{
					Transport: map[string]string{"example.net": "error:5.1.1 User unknown"},
					// Otherwise smtpd refuses at RCPT what the error
					// transport would fail.
					MainCF: map[string]string{"smtpd_reject_unlisted_recipient": "no"},
				}
			},
			detail: "User unknown",
		},
		{
			name: "local delivery to a user that does not exist",
			setup: func(*testing.T) testkit.PostfixOptions {
				// With no local_recipient_maps smtpd accepts any local
				// part; local(8) then finds no such user.
				return testkit.PostfixOptions{MainCF: map[string]string{
					"mydestination": "example.net", "local_transport": "local",
				}}
			},
			detail: `unknown user: "gone"`,
		},
		{
			name: "next hop refuses the recipient",
			setup: func(t *testing.T) testkit.PostfixOptions {
				mx := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyToRcpt(rcpt, testkit.SMTPReply{
					Code: 550, Enhanced: "5.1.1", Text: "<" + rcpt + ">: Recipient address rejected: User unknown in virtual mailbox table"})))
				return testkit.PostfixOptions{Transport: map[string]string{
					"example.net": fmt.Sprintf("smtp:[127.0.0.1]:%d", mx.Port()),
				}}
			},
			detail: "User unknown in virtual mailbox table",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Postfix must know the bounce listener's port before the
			// pipeline, which needs Postfix's port, starts; so the listener
			// gets a port picked here.
			bounceAddr := pickLoopbackAddr(t)
			_, bouncePort, _ := net.SplitHostPort(bounceAddr)
			opts := tt.setup(t)
			opts.Hostname = "relay.postfix.test"
			if opts.Transport == nil {
				opts.Transport = map[string]string{}
			}
			opts.Transport["bounce.acme.example"] = "smtp:[127.0.0.1]:" + bouncePort
			pf := testkit.StartPostfix(t, opts)
			seed := filepath.Join(t.TempDir(), "postfix-seed.yaml")
			if err := os.WriteFile(seed, []byte(fmt.Sprintf(seedTemplate, pf.SMTPPort, pf.SMTPPort)), 0o600); err != nil {
				t.Fatal(err)
			}
			p := startPipeline(t, nil, func(o *stack.Options) {
				o.SeedFile = seed
				o.BounceAddr = bounceAddr
			})

			id := submit(t, p, "postfix-bounce-1", rcpt)
			// Postfix took the message (250 queued as ...): the send
			// succeeded ...
			pf.WaitLog(t, "to=<"+rcpt+">", "status=bounced")
			// ... and afterwards Postfix failed the recipient and returned
			// its own DSN to the bounce listener. The sender's event of
			// the send and the listener's of the bounce take separate
			// ways to the tracker: wait for both.
			bounced := recipientIs(mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "userunknown")
			m := p.waitMessage(t, id, func(m *mailbusv1.Message) bool {
				if !bounced(m) {
					return false
				}
				for _, ev := range m.GetHistory() {
					if ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
						return true
					}
				}
				return false
			})
			pf.WaitLog(t, "@bounce.acme.example>", "relay=127.0.0.1[127.0.0.1]:"+bouncePort, "status=sent")
			rc := m.GetRecipients()[0]
			if rc.GetAddress() != rcpt || rc.GetReply().GetEnhancedCode() != "5.1.1" || !strings.Contains(rc.GetDetail(), tt.detail) {
				t.Errorf("bounced recipient does not carry Postfix's status 5.1.1 and words %q: %v", tt.detail, rc)
			}
			var sent, hard bool
			for _, ev := range m.GetHistory() {
				sent = sent || ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT
				hard = hard || ev.GetStage() == "bounce" && ev.GetPermanent() && ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
			}
			if !sent || !hard {
				t.Errorf("history lacks the send Postfix accepted (%v) or the hard bounce after it (%v): %v", sent, hard, m.GetHistory())
			}
			got, err := p.Suppressions.Suppressed(context.Background(), "acme", []string{rcpt})
			if err != nil || len(got) != 1 {
				t.Errorf("a hard bounce from Postfix must suppress %s: %v %v", rcpt, got, err)
			}
		})
	}
}

// pickLoopbackAddr returns a loopback address with a port free a moment
// ago, for a listener whose address another process must be told before
// it starts.
func pickLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
