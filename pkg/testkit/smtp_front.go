package testkit

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// smtpFront sits between the client's TCP connection and go-smtp. go-smtp's
// server has no hook for its greeting, for the reply to the DATA command, or
// for the EHLO keyword list, and it does STARTTLS inside its own connection
// where nothing above the TLS layer can watch the commands. So the front
// owns TLS (implicit and STARTTLS) and reads the client's commands in
// plaintext, one line at a time: it answers the ones a test overrides
// itself, hands every other line to go-smtp, and edits go-smtp's replies
// (greeting, EHLO keywords, closing after a 421) on the way out. Handing
// over one line per Read keeps replies in command order even when the
// client pipelines, because go-smtp asks for the next line only after it
// answered the previous one.
//
// All of its state except raw and killed belongs to the connection's
// goroutine (go-smtp calls Read and Write from one goroutine).
type smtpFront struct {
	s   *SMTPServer
	id  int
	raw net.Conn

	tr       net.Conn // raw, or the TLS connection over it
	br       *bufio.Reader
	tlsState *tls.ConnectionState
	tlsErr   error
	session  *smtpSession

	in        []byte // the line go-smtp is reading
	out       []byte // go-smtp's reply bytes not yet ending a line
	bdatLeft  int64  // raw BDAT chunk bytes still to hand over
	inData    bool   // between 354 and the final dot
	expect    string // "EHLO" or "DATA": go-smtp's next reply needs editing
	ehlo      []string
	greeted   bool
	refusing  bool // a non-2xx greeting was given: only QUIT works
	delayNext bool // SMTPLatency: the next write answers a client line
	messages  int
	pipelined int // commands sent before the current MAIL FROM's reply

	killOnce  sync.Once
	closeOnce sync.Once
}

func newSMTPFront(s *SMTPServer, c net.Conn, id int) *smtpFront {
	f := &smtpFront{s: s, id: id, raw: c, tr: c, delayNext: true}
	f.br = bufio.NewReader(c)
	return f
}

func (f *smtpFront) command(step SMTPStep, arg string) SMTPCommand {
	return SMTPCommand{Step: step, Arg: arg, Conn: f.id, Message: f.messages, TLS: f.tlsState != nil}
}

func (f *smtpFront) clientCertCN() string {
	if f.tlsState == nil || len(f.tlsState.VerifiedChains) == 0 {
		return ""
	}
	return f.tlsState.VerifiedChains[0][0].Subject.CommonName
}

// startImplicitTLS does the handshake of an implicit-TLS server before the
// greeting.
func (f *smtpFront) startImplicitTLS() error {
	if f.s.cfg.security != smtpImplicitTLS || f.tlsState != nil || f.tlsErr != nil {
		return f.tlsErr
	}
	f.tlsErr = f.handshake()
	return f.tlsErr
}

func (f *smtpFront) handshake() error {
	tc := tls.Server(f.raw, f.s.tlsConfig())
	_ = f.raw.SetDeadline(time.Now().Add(smtpWaitTimeout))
	err := tc.Handshake()
	_ = f.raw.SetDeadline(time.Time{})
	if err != nil {
		f.kill()
		return err
	}
	st := tc.ConnectionState()
	f.tr, f.tlsState = tc, &st
	f.br = bufio.NewReader(tc)
	return nil
}

// Read hands go-smtp the next client line that the front does not answer
// itself.
func (f *smtpFront) Read(p []byte) (int, error) {
	if err := f.startImplicitTLS(); err != nil {
		return 0, err
	}
	if len(f.in) == 0 {
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.in)
	f.in = f.in[n:]
	return n, nil
}

func (f *smtpFront) next() error {
	if f.bdatLeft > 0 {
		chunk := make([]byte, min(f.bdatLeft, 32<<10))
		n, err := io.ReadFull(f.br, chunk)
		f.bdatLeft -= int64(n)
		f.in = chunk[:n]
		f.delayNext = true
		if n > 0 {
			return nil
		}
		return err
	}
	for {
		line, err := f.br.ReadBytes('\n')
		if err != nil {
			return err
		}
		f.delayNext = true
		if f.inData {
			if string(line) == ".\r\n" || string(line) == ".\n" {
				f.inData = false
			}
			f.in = line
			return nil
		}
		handled, err := f.intercept(line)
		if err != nil {
			return err
		}
		if !handled {
			f.in = line
			return nil
		}
	}
}

// intercept answers line itself when the test says so, or when the line is
// about TLS, which go-smtp does not see.
func (f *smtpFront) intercept(line []byte) (bool, error) {
	verb, arg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	if f.refusing {
		if verb == "QUIT" {
			_ = f.write([]byte("221 2.0.0 Bye\r\n"))
			f.kill()
			return true, net.ErrClosed
		}
		return true, f.write([]byte("503 5.5.1 Bad sequence of commands\r\n"))
	}
	var step SMTPStep
	switch verb {
	case "STARTTLS":
		if f.s.cfg.security != smtpStartTLS || f.tlsState != nil {
			return true, f.write([]byte("502 5.5.1 TLS not available\r\n"))
		}
		if err := f.write([]byte("220 2.0.0 Ready to start TLS\r\n")); err != nil {
			return true, err
		}
		if f.br.Buffered() > 0 {
			// Plaintext pipelined after STARTTLS would be read as if it came
			// over TLS (CVE-2011-0411); refuse like a careful server.
			f.kill()
			return true, errors.New("testkit: plaintext after STARTTLS")
		}
		if err := f.handshake(); err != nil {
			return true, err
		}
		// RFC 3207: forget everything learnt before TLS.
		if f.session != nil {
			f.session.authMech, f.session.authUser = "", ""
		}
		return true, nil
	case "EHLO", "HELO":
		step = SMTPStepEHLO
	case "AUTH":
		step = SMTPStepAuth
		arg, _, _ = strings.Cut(arg, " ")
	case "MAIL":
		step = SMTPStepMail
		f.messages++
		arg = smtpPath(arg, "FROM:")
		f.pipelined = f.commandsAhead()
	case "RCPT":
		step = SMTPStepRcpt
		arg = smtpPath(arg, "TO:")
	case "DATA":
		step = SMTPStepData
	case "BDAT":
		fields := strings.Fields(arg)
		if len(fields) > 0 {
			n, err := strconv.ParseInt(fields[0], 10, 64)
			if err == nil && n > 0 {
				f.bdatLeft = n
			}
		}
		return false, nil
	default:
		return false, nil
	}
	if r := f.s.reply(f.command(step, arg)); r != nil {
		if r.Drop {
			f.kill()
			return true, net.ErrClosed
		}
		if err := f.write(formatReply(*r)); err != nil {
			return true, err
		}
		if r.Code == 421 {
			f.kill()
			return true, net.ErrClosed
		}
		return true, nil
	}
	switch verb {
	case "EHLO":
		f.expect = "EHLO"
	case "DATA":
		f.expect = "DATA"
	}
	return false, nil
}

// commandsAhead counts the complete command lines the client sent after
// the one being handled, before any reply to it; with SMTPAwaitPipelining
// it first waits until they include DATA.
func (f *smtpFront) commandsAhead() int {
	if f.s.cfg.awaitPipelining {
		_ = f.raw.SetReadDeadline(time.Now().Add(smtpWaitTimeout))
		for !hasDataLine(f.buffered()) {
			if _, err := f.br.Peek(f.br.Buffered() + 1); err != nil {
				break
			}
		}
		_ = f.raw.SetReadDeadline(time.Time{})
	}
	return bytes.Count(f.buffered(), []byte("\n"))
}

func (f *smtpFront) buffered() []byte {
	b, _ := f.br.Peek(f.br.Buffered())
	return b
}

func hasDataLine(b []byte) bool {
	for _, l := range bytes.SplitAfter(b, []byte("\n")) {
		if strings.EqualFold(strings.TrimRight(string(l), "\r\n"), "DATA") && bytes.HasSuffix(l, []byte("\n")) {
			return true
		}
	}
	return false
}

// smtpPath returns the address of "FROM:<a@b> PARAMS" or "TO:<a@b>".
func smtpPath(arg, prefix string) string {
	if len(arg) >= len(prefix) && strings.EqualFold(arg[:len(prefix)], prefix) {
		arg = strings.TrimSpace(arg[len(prefix):])
	}
	if i := strings.IndexByte(arg, '<'); i >= 0 {
		if j := strings.IndexByte(arg[i:], '>'); j >= 0 {
			return arg[i+1 : i+j]
		}
	}
	addr, _, _ := strings.Cut(arg, " ")
	return addr
}

// Write takes go-smtp's replies and passes them on, edited where needed.
func (f *smtpFront) Write(p []byte) (int, error) {
	if err := f.startImplicitTLS(); err != nil {
		return 0, err
	}
	f.out = append(f.out, p...)
	for {
		i := bytes.IndexByte(f.out, '\n')
		if i < 0 {
			break
		}
		line := string(f.out[:i+1])
		f.out = f.out[i+1:]
		if err := f.reply(line); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (f *smtpFront) reply(line string) error {
	code, _ := strconv.Atoi(line[:min(3, len(line))])
	final := len(line) < 4 || line[3] != '-'
	if !f.greeted {
		f.greeted = true
		if r := f.s.reply(f.command(SMTPStepGreeting, "")); r != nil {
			if r.Drop {
				f.kill()
				return net.ErrClosed
			}
			if err := f.write(formatReply(*r)); err != nil {
				return err
			}
			if r.Code == 421 {
				f.kill()
				return net.ErrClosed
			}
			f.refusing = r.Code/100 != 2
			return nil
		}
		return f.write([]byte(line))
	}
	switch f.expect {
	case "EHLO":
		if code == 250 {
			f.ehlo = append(f.ehlo, line)
			if !final {
				return nil
			}
			f.expect = ""
			lines := f.ehlo
			f.ehlo = nil
			return f.write(f.editEHLO(lines))
		}
		f.expect = ""
	case "DATA":
		f.expect = ""
		f.inData = code == 354
	}
	if err := f.write([]byte(line)); err != nil {
		return err
	}
	if code == 421 && final {
		// A server that says 421 closes the connection (RFC 5321 3.8);
		// go-smtp keeps it open, so the front does it.
		f.kill()
	}
	return nil
}

// editEHLO removes hidden keywords and adds STARTTLS before TLS.
func (f *smtpFront) editEHLO(lines []string) []byte {
	var texts []string
	for _, l := range lines {
		texts = append(texts, strings.TrimRight(l[min(4, len(l)):], "\r\n"))
	}
	keep := []string{texts[0]}
	if f.s.cfg.security == smtpStartTLS && f.tlsState == nil && !f.s.cfg.hidden["STARTTLS"] {
		keep = append(keep, "STARTTLS")
	}
	for _, t := range texts[1:] {
		kw, _, _ := strings.Cut(t, " ")
		if !f.s.cfg.hidden[strings.ToUpper(kw)] {
			keep = append(keep, t)
		}
	}
	var b bytes.Buffer
	for i, t := range keep {
		sep := "-"
		if i == len(keep)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + t + "\r\n")
	}
	return b.Bytes()
}

// write sends b to the client, after the test's latency when b answers a
// client line.
func (f *smtpFront) write(b []byte) error {
	if f.delayNext && f.s.cfg.latency > 0 {
		time.Sleep(f.s.cfg.latency)
	}
	f.delayNext = false
	_ = f.tr.SetWriteDeadline(time.Now().Add(smtpWaitTimeout))
	_, err := f.tr.Write(b)
	return err
}

// kill closes the TCP connection at once; safe from any goroutine.
func (f *smtpFront) kill() {
	f.killOnce.Do(func() {
		_ = f.raw.Close()
		f.s.frontClosed(f)
	})
}

// Close is go-smtp ending the connection: QUIT, an error, or server close.
func (f *smtpFront) Close() error {
	f.closeOnce.Do(func() { f.kill() })
	return nil
}

func (f *smtpFront) LocalAddr() net.Addr  { return f.raw.LocalAddr() }
func (f *smtpFront) RemoteAddr() net.Addr { return f.raw.RemoteAddr() }

// Deadlines go to the raw connection: the TLS layer reads and writes
// through it, and unlike f.tr it never changes, so another goroutine
// (go-smtp's Close path) may call these safely.
func (f *smtpFront) SetDeadline(t time.Time) error      { return f.raw.SetDeadline(t) }
func (f *smtpFront) SetReadDeadline(t time.Time) error  { return f.raw.SetReadDeadline(t) }
func (f *smtpFront) SetWriteDeadline(t time.Time) error { return f.raw.SetWriteDeadline(t) }
