package testkit_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// TestStartPostfix_acceptsThenBouncesToTheReturnPathThroughTheTransportTable
// is the setup the end-to-end bounce test relies on: Postfix accepts mail
// for a domain whose transport is error:, writes the DSN itself, and sends
// it from the null sender to the return path's domain through its smtp
// transport.
func TestStartPostfix_acceptsThenBouncesToTheReturnPathThroughTheTransportTable(t *testing.T) {
	returns := testkit.StartSMTP(t)
	pf := testkit.StartPostfix(t, testkit.PostfixOptions{
		Transport: map[string]string{
			"example.net":  "error:5.1.1 User unknown",
			"returns.test": fmt.Sprintf("smtp:[127.0.0.1]:%d", returns.Port()),
		},
		// Otherwise smtpd refuses at RCPT what the error transport would
		// bounce.
		MainCF: map[string]string{"smtpd_reject_unlisted_recipient": "no"},
	})
	c, err := smtp.Dial(pf.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail("sender@returns.test", []string{"gone@example.net"},
		strings.NewReader("From: sender@returns.test\r\nTo: gone@example.net\r\nSubject: hi\r\nMessage-ID: <pf-1@returns.test>\r\n\r\nhello\r\n")); err != nil {
		t.Fatalf("Postfix refused the message it should accept and bounce later: %v\n%s", err, pf.Log())
	}
	dsn := returns.WaitMessage(t, func(m testkit.SMTPMessage) bool {
		return len(m.To) == 1 && m.To[0] == "sender@returns.test"
	})
	if dsn.From != "" {
		t.Errorf("the DSN came from <%s>, want the null sender", dsn.From)
	}
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; gone@example.net", "Status: 5.1.1", "<pf-1@returns.test>"} {
		if !strings.Contains(string(dsn.Data), want) {
			t.Errorf("Postfix's DSN lacks %q:\n%s", want, dsn.Data)
		}
	}
	pf.WaitLog(t, "to=<gone@example.net>", "status=bounced")
}
