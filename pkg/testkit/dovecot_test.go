package testkit

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// imapExchange sends one tagged command over a raw connection and returns
// every line up to and including the tagged reply: pkg does not depend on
// an IMAP client, and a few lines of the protocol check the server.
func imapExchange(t *testing.T, conn net.Conn, r *bufio.Reader, tag, cmd string) []string {
	t.Helper()
	if _, err := fmt.Fprintf(conn, "%s %s\r\n", tag, cmd); err != nil {
		t.Fatalf("send %s: %v", cmd, err)
	}
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read the reply to %s: %v (so far %q)", cmd, err, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if strings.HasPrefix(line, tag+" ") {
			return lines
		}
	}
}

func TestStartDovecot_servesDeliveredMailToTheUserAfterLogin(t *testing.T) {
	d := StartDovecot(t, "bounces", "s3cret-imap")
	d.Deliver(t, "INBOX", []byte("From: a@example.net\r\nSubject: one\r\n\r\nbody\r\n"))
	d.Deliver(t, "Junk", []byte("From: b@example.net\r\nSubject: two\r\n\r\nbody\r\n"))
	d.Deliver(t, "Junk", []byte("From: c@example.net\r\nSubject: three\r\n\r\nbody\r\n"))

	conn, err := net.DialTimeout("tcp", d.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(WaitTimeout))
	r := bufio.NewReader(conn)
	if greet, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	tests := []struct {
		cmd  string
		want string
	}{
		{`LOGIN bounces s3cret-imap`, "a1 OK"},
		{`LIST "" "*" RETURN (SPECIAL-USE)`, `* LIST (\Junk) "/" Junk`},
		{`SELECT INBOX`, "* 1 EXISTS"},
		{`SELECT Junk`, "* 2 EXISTS"},
	}
	for i, tt := range tests {
		lines := imapExchange(t, conn, r, fmt.Sprintf("a%d", i+1), tt.cmd)
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, tt.want)
		}
		if !found {
			t.Errorf("%s: no line starting %q in %q\nlog:\n%s", tt.cmd, tt.want, lines, d.Log())
		}
	}
}
