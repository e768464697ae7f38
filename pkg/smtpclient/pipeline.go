package smtpclient

import (
	"fmt"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// pipelinedTransaction runs one transaction with SMTP PIPELINING (RFC
// 2920): MAIL FROM, every RCPT TO and DATA leave in one write, and their
// replies are read afterwards in the same order, so a transaction costs two
// round trips (the group, then the message and its final reply) whatever
// the number of recipients, instead of one per command. Each RCPT reply
// belongs to the recipient in the same position.
//
// go-smtp's client cannot do this: every command method writes its command
// and waits for the reply before returning, and its textproto connection,
// which could write several commands first, is private. So this function
// writes and reads the whole transaction on the session's connection
// itself, and go-smtp keeps EHLO, AUTH, NOOP, RSET and QUIT. The two can
// share the connection because between transactions neither side has
// bytes in flight: go-smtp's reader has nothing buffered after the reply
// it last read, and this one after the final reply.
//
// The outcomes are the same as transaction's: a refused MAIL FROM, a 421 or
// a broken connection is a relay failure; a refused RCPT TO is that
// recipient's; a refused DATA or final reply is every accepted recipient's.
func (s *session) pipelinedTransaction(m *Message, res *Result) error {
	s.messages++
	s.dirty = true
	if s.pipe == nil {
		s.pipe = textproto.NewConn(s.conn)
	}
	defer func() { _ = s.raw.SetDeadline(time.Time{}) }()

	var group strings.Builder
	group.WriteString(s.mailCommand(m))
	group.WriteString("\r\n")
	notify := s.rcptParams(m)
	for _, to := range m.To {
		group.WriteString("RCPT TO:<" + to + ">" + notify + "\r\n")
	}
	group.WriteString("DATA\r\n")
	start := time.Now()
	_ = s.raw.SetDeadline(start.Add(s.t.Mail))
	// The group is written while its replies are read: with many
	// recipients a server that answers each RCPT as it reads it could fill
	// the socket's buffers with replies and stop reading, while a client
	// that writes everything first stops reading too (RFC 2920 section 4
	// warns of this deadlock).
	wrote := make(chan error, 1)
	go func() {
		_, err := s.pipe.W.WriteString(group.String())
		if err == nil {
			err = s.pipe.W.Flush()
		}
		wrote <- err
	}()

	// Every reply of the group is read before deciding, so that the
	// connection stays in step whatever the server refused. A broken
	// connection or a 421 ends the reading: nothing more will come.
	var mailErr, rcptErr, dataErr error
	res.Mail, mailErr = s.readReply(s.t.Mail)
	ended := mailErr != nil || res.Mail.Code == 421
	rcpts := make([]Reply, len(m.To))
	failedAt := -1
	for i := range m.To {
		if ended {
			break
		}
		rcpts[i], rcptErr = s.readReply(s.t.Rcpt)
		if rcptErr != nil || rcpts[i].Code == 421 {
			ended, failedAt = true, i
		}
	}
	var data Reply
	if !ended {
		data, dataErr = s.readReply(s.t.Data)
	}
	if ended || dataErr != nil {
		// The connection is done for; closing it ends a write that the
		// server stopped reading.
		_ = s.raw.Close()
	}
	if err := <-wrote; err != nil && !ended && dataErr == nil {
		return s.relayFailure("mail", Reply{}, err)
	}

	if res.Mail.Code/100 != 2 {
		// Whatever the code, a relay that refuses the sender cannot carry
		// this mail: fall back rather than bounce. The replies to the
		// RCPTs that followed only say there was no transaction.
		if !ended {
			s.endData(data)
		}
		err := s.relayFailure("mail", res.Mail, mailErr)
		s.trace.step("mail", start, res.Mail, err, "")
		return err
	}
	accepted := 0
	for i, rep := range rcpts {
		if i == failedAt {
			break
		}
		res.Recipients[i].Rcpt = rep
		switch {
		case rep.Code/100 == 2:
			accepted++
		case rep.Code != 0:
			res.Recipients[i].Err = rep.smtpError("rcpt")
		}
	}
	s.trace.step("mail", start, res.Mail, nil, "")
	for i, rc := range res.Recipients {
		if i == failedAt {
			res.Recipients[i].Rcpt = rcpts[i]
			err := s.relayFailure("rcpt", rcpts[i], rcptErr)
			s.trace.step("rcpt", start, rcpts[i], err, "")
			return err
		}
		if rc.Err != nil {
			s.trace.step("rcpt", start, rc.Rcpt, rc.Err, "")
		} else {
			s.trace.step("rcpt", start, rc.Rcpt, nil, "")
		}
	}
	if dataErr != nil || data.Code == 421 {
		err := s.relayFailure("data", data, dataErr)
		s.trace.step("data", start, data, err, "")
		return err
	}
	if accepted == 0 {
		// RFC 2920 3.1: a DATA that was accepted although every recipient
		// was refused gets an empty message.
		s.endData(data)
		return nil
	}
	if data.Code != 354 {
		res.failUndecided(data.smtpError("data"))
		s.trace.step("data", start, data, data.smtpError("data"), "")
		return nil
	}

	dw := s.pipe.DotWriter()
	w := &deadlineWriter{w: dw, conn: s.raw, timeout: s.t.DataXfer}
	for _, part := range [][]byte{m.Prefix, m.Data} {
		if _, err := w.Write(part); err != nil {
			err = s.relayFailure("data", Reply{}, err)
			s.trace.step("data", start, Reply{}, err, "")
			return err
		}
	}
	_ = s.raw.SetDeadline(time.Now().Add(s.t.DataXfer))
	if err := dw.Close(); err != nil {
		err = s.relayFailure("data", Reply{}, err)
		s.trace.step("data", start, Reply{}, err, "")
		return err
	}
	rep, err := s.readReply(s.t.DataDone)
	res.Data = rep
	if err != nil || rep.Code == 421 {
		err = s.relayFailure("dot", rep, err)
		s.trace.step("data", start, rep, err, "")
		return err
	}
	s.dirty = false
	if rep.Code/100 != 2 {
		res.failUndecided(rep.smtpError("dot"))
		s.trace.step("data", start, rep, rep.smtpError("dot"), "")
		return nil
	}
	s.trace.step("data", start, rep, nil, "")
	return nil
}

// readReply reads the next reply within timeout.
func (s *session) readReply(timeout time.Duration) (Reply, error) {
	_ = s.raw.SetDeadline(time.Now().Add(timeout))
	// With no expected code any reply is one; an error is the connection
	// failing or the server talking nonsense.
	code, msg, err := s.pipe.ReadResponse(0)
	if err != nil {
		return Reply{}, err
	}
	return parseReply(code, msg), nil
}

// endData ends a DATA that the server accepted but that will carry no
// message, with an empty one; the transaction stays dirty, so the
// connection is reset before its next use.
func (s *session) endData(data Reply) {
	if data.Code != 354 {
		return
	}
	_ = s.raw.SetDeadline(time.Now().Add(s.t.DataXfer))
	if _, err := s.pipe.W.WriteString(".\r\n"); err != nil {
		s.broken = true
		return
	}
	if err := s.pipe.W.Flush(); err != nil {
		s.broken = true
		return
	}
	if _, err := s.readReply(s.t.DataDone); err != nil {
		s.broken = true
	}
}

// mailCommand is MAIL FROM with the parameters go-smtp's Client.Mail would
// send: BODY=8BITMIME and SIZE when offered, SMTPUTF8 when needed (the
// extension check already refused it when not offered), RET and ENVID
// when DSN is offered.
func (s *session) mailCommand(m *Message) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + m.From + ">")
	if ok, _ := s.c.Extension("8BITMIME"); ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := s.c.Extension("SIZE"); ok && m.Size() > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(m.Size(), 10))
	}
	if a, h := m.needsSMTPUTF8(); a || h {
		b.WriteString(" SMTPUTF8")
	}
	if ok, _ := s.c.Extension("DSN"); ok {
		if ret := strings.ToUpper(m.DSN.Return); ret != "" {
			b.WriteString(" RET=" + ret)
		}
		if isPrintableASCII(m.DSN.EnvelopeID) {
			b.WriteString(" ENVID=" + xtext(m.DSN.EnvelopeID))
		}
	}
	return b.String()
}

// rcptParams is what follows every RCPT TO address: NOTIFY when the server
// offers DSN and the message asks for it.
func (s *session) rcptParams(m *Message) string {
	if len(m.DSN.Notify) == 0 {
		return ""
	}
	if ok, _ := s.c.Extension("DSN"); !ok {
		return ""
	}
	vs := make([]string, len(m.DSN.Notify))
	for i, n := range m.DSN.Notify {
		vs[i] = strings.ToUpper(n)
	}
	return " NOTIFY=" + strings.Join(vs, ",")
}

// xtext encodes s as RFC 3461 xtext: '+', '=' and bytes outside '!'..'~'
// become "+XX".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
