package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailbus/mailbus/pkg/mail"
)

// dialer opens sessions; the pool and TestRelay share it.
type dialer struct {
	timeouts Timeouts
	rootCAs  *x509.CertPool
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	helo     string
	tlsCache tls.ClientSessionCache
}

// tracer receives the steps of a session as they finish; nil when nobody
// listens (pooled sends).
type tracer func(Step)

func (t tracer) step(name string, start time.Time, reply Reply, err error, detail string) {
	if t == nil {
		return
	}
	s := Step{Name: name, OK: err == nil, Reply: reply, Duration: time.Since(start), Detail: detail}
	var se *mail.SMTPError
	switch {
	case s.Detail != "":
	case reply.Code != 0:
		s.Detail = reply.String()
	case errors.As(err, &se):
		// The local error verbatim, without the stage prefix.
		s.Detail = se.Message
	case err != nil:
		s.Detail = err.Error()
	}
	t(s)
}

// tokenSource hands out the XOAUTH2 token of a relay, remembering a
// refreshed one for later connections.
type tokenSource interface {
	token(r Relay) string
	refreshed(r Relay, token string)
}

// session is one SMTP connection, after EHLO and AUTH, between
// transactions. It is used by one goroutine at a time.
type session struct {
	relay Relay
	fp    string
	raw   net.Conn // TCP: deadlines and abrupt close
	conn  net.Conn // what go-smtp speaks over: raw, or TLS over it
	c     *smtp.Client
	// pipe reads and writes pipelined transactions on conn (see
	// pipelinedTransaction); made at the first one.
	pipe *textproto.Conn
	rec  *recorder
	t    Timeouts
	// greeting is the banner as read, for replaying to go-smtp.
	greeting []byte
	tls      bool
	created  time.Time
	// lastUsed is when the last transaction ended.
	lastUsed time.Time
	// messages counts the transactions started (MAIL FROM sent).
	messages int
	// dirty means a transaction was left open (no final dot), so RSET is
	// due before the next MAIL FROM.
	dirty bool
	// broken means the connection cannot be used again: an I/O error, a
	// timeout, a 421, or a cancelled context closed it.
	broken bool
	// trace reports the steps of a relay test; nil for pooled sends.
	trace tracer
	// lease is the connection's shared slot (PoolConfig.Slots), given
	// back when it closes.
	lease ConnLease
}

// open connects to r and gets the session ready for MAIL FROM, falling back
// to a plaintext connection where SecurityOpportunistic allows.
func (d *dialer) open(ctx context.Context, r Relay, toks tokenSource, trace tracer) (*session, error) {
	s, err := d.openAs(ctx, r, r.Security, toks, trace)
	if err != nil && r.Security == SecurityOpportunistic && r.PlaintextFallback && stageOf(err) == "starttls" && ctx.Err() == nil {
		// As Postfix at its "may" level: a server whose TLS is broken still
		// gets mail, in plaintext, on a new connection.
		return d.openAs(ctx, r, SecurityNone, toks, trace)
	}
	return s, err
}

func (d *dialer) openAs(ctx context.Context, r Relay, sec Security, toks tokenSource, trace tracer) (_ *session, err error) {
	t := d.timeouts
	helo := r.HeloName
	if helo == "" {
		helo = d.helo
	}

	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, t.Connect)
	raw, err := d.dial(cctx, "tcp", r.Addr())
	cancel()
	if err != nil {
		err = relayErr("connect", Reply{}, err)
		trace.step("connect", start, Reply{}, err, "")
		return nil, err
	}
	trace.step("connect", start, Reply{}, nil, "connected to "+raw.RemoteAddr().String())

	// Cancelling ctx closes the connection, which ends any blocked read or
	// write; go-smtp's own deadlines cannot see ctx.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	defer func() {
		if err != nil {
			raw.Close()
			if ctx.Err() != nil {
				// Our own cancellation says nothing about the relay.
				err = fmt.Errorf("%s at %s: %w (%v)", r.Addr(), stageOf(err), ctx.Err(), err)
			}
		}
	}()

	s := &session{relay: r, fp: r.fingerprint(helo), raw: raw, rec: &recorder{}, t: t, created: time.Now()}
	conn := raw
	tlsCfg := d.tlsConfig(r)

	if sec == SecurityTLS {
		start = time.Now()
		tc := tls.Client(raw, tlsCfg)
		hctx, cancel := context.WithTimeout(ctx, t.StartTLS)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			err = relayErr("tls", Reply{}, err)
			trace.step("tls", start, Reply{}, err, "")
			return nil, err
		}
		trace.step("tls", start, Reply{}, nil, describeTLS(tc.ConnectionState()))
		conn, s.tls = tc, true
	}

	// The greeting is read here rather than by go-smtp so that its failures
	// and its words are the greeting's, and so that STARTTLS can follow
	// (see handOver).
	start = time.Now()
	br := bufio.NewReader(conn)
	tp := textproto.NewConn(struct {
		io.Reader
		io.WriteCloser
	}{br, conn})
	_ = raw.SetDeadline(time.Now().Add(t.Greeting))
	code, msg, rerr := tp.ReadResponse(220)
	greeting := parseReply(code, msg)
	s.greeting = replayLines(code, msg)
	if rerr != nil {
		err := protoErr("greeting", greeting, rerr)
		trace.step("greeting", start, greeting, err, "")
		return nil, err
	}
	trace.step("greeting", start, greeting, nil, "")

	if sec == SecurityStartTLS || sec == SecurityOpportunistic {
		tc, err := d.startTLS(r, sec, helo, raw, br, tp, tlsCfg, trace)
		if err != nil {
			return nil, err
		}
		if tc != nil {
			conn, s.tls = tc, true
		}
	}
	_ = raw.SetDeadline(time.Time{})
	// Anything the server sent after the replies read here belongs to
	// go-smtp too (never the case after STARTTLS, checked there).
	buffered, _ := br.Peek(br.Buffered())
	s.greeting = append(s.greeting, buffered...)

	if err := s.handOver(conn, helo, trace); err != nil {
		return nil, err
	}
	if err := s.auth(ctx, toks, trace); err != nil {
		return nil, err
	}
	s.lastUsed = time.Now()
	return s, nil
}

// startTLS does EHLO and STARTTLS on the plaintext connection and returns
// the TLS connection, or nil when SecurityOpportunistic finds no STARTTLS.
//
// go-smtp's client can only start TLS through NewClientStartTLS, which
// says EHLO as "localhost" (the name cannot be set before it) and leaves
// the handshake to the next command, so its errors would look like EHLO's.
// These two commands are therefore written here, and the session is handed
// to go-smtp after the handshake.
func (d *dialer) startTLS(r Relay, sec Security, helo string, raw net.Conn, br *bufio.Reader, tp *textproto.Conn, cfg *tls.Config, trace tracer) (*tls.Conn, error) {
	t := d.timeouts
	start := time.Now()
	_ = raw.SetDeadline(time.Now().Add(t.Helo))
	rep, err := command(tp, 250, "EHLO "+helo)
	if err != nil {
		err = protoErr("ehlo", rep, err)
		trace.step("ehlo", start, rep, err, "")
		if sec == SecurityOpportunistic && (rep.Code == 500 || rep.Code == 502) {
			// An old server without EHLO has no STARTTLS either; go-smtp
			// falls back to HELO after the hand-over.
			return nil, nil
		}
		return nil, err
	}
	trace.step("ehlo", start, rep, nil, "")
	offered := false
	for _, l := range strings.Split(rep.Text, "\n")[1:] {
		kw, _, _ := strings.Cut(l, " ")
		offered = offered || strings.EqualFold(kw, "STARTTLS")
	}
	start = time.Now()
	if !offered {
		if sec == SecurityOpportunistic {
			return nil, nil
		}
		err := relayErr("starttls", Reply{}, fmt.Errorf("%s does not offer STARTTLS", r.Addr()))
		trace.step("starttls", start, Reply{}, err, "")
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(t.StartTLS))
	rep, err = command(tp, 220, "STARTTLS")
	if err != nil {
		err = protoErr("starttls", rep, err)
		trace.step("starttls", start, rep, err, "")
		return nil, err
	}
	if br.Buffered() > 0 {
		// Bytes that came before the handshake would be read as if they
		// were protected by it (CVE-2011-0411).
		err := relayErr("starttls", rep, errors.New("server sent data after its STARTTLS reply"))
		trace.step("starttls", start, rep, err, "")
		return nil, err
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		err = relayErr("starttls", Reply{}, err)
		trace.step("starttls", start, Reply{}, err, "")
		return nil, err
	}
	trace.step("starttls", start, rep, nil, rep.String()+" ("+describeTLS(tc.ConnectionState())+")")
	return tc, nil
}

func command(tp *textproto.Conn, expect int, line string) (Reply, error) {
	id, err := tp.Cmd("%s", line)
	if err != nil {
		return Reply{}, err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	code, msg, err := tp.ReadResponse(expect)
	return parseReply(code, msg), err
}

// handOver gives the connection to go-smtp and says EHLO through it. The
// greeting, already read, is replayed to go-smtp, which insists on reading
// one; after STARTTLS this is the EHLO that RFC 3207 requires.
func (s *session) handOver(conn net.Conn, helo string, trace tracer) error {
	s.conn = conn
	s.c = smtp.NewClient(&replayConn{Conn: conn, pending: s.greeting})
	s.greeting = nil
	s.c.DebugWriter = s.rec
	s.c.CommandTimeout = s.t.Helo
	s.c.SubmissionTimeout = s.t.DataDone
	start := time.Now()
	s.rec.reset()
	err := s.c.Hello(helo)
	rep := s.reply(err)
	if err != nil {
		err = protoErr("ehlo", rep, err)
		trace.step("ehlo", start, rep, err, "")
		return err
	}
	trace.step("ehlo", start, rep, nil, "")
	return nil
}

// auth logs in with the relay's mechanism, refusing to send credentials
// over plaintext unless the relay allows it.
func (s *session) auth(ctx context.Context, toks tokenSource, trace tracer) error {
	r := s.relay
	start := time.Now()
	if r.Auth.Mechanism == MechanismNone {
		if r.Auth.hasClientCert() {
			if !s.tls {
				err := relayErr("auth", Reply{}, fmt.Errorf("a TLS client certificate is configured but the connection to %s is not encrypted", r.Addr()))
				trace.step("auth", start, Reply{}, err, "")
				return err
			}
			trace.step("auth", start, Reply{}, nil, "TLS client certificate "+certName(r.Auth.ClientCert)+" presented")
		}
		return nil
	}
	if !s.tls && !r.AllowPlaintextAuth {
		err := relayErr("auth", Reply{}, fmt.Errorf("refusing to send %s credentials to %s over an unencrypted connection (the relay does not allow plaintext authentication)", r.Auth.Mechanism, r.Addr()))
		trace.step("auth", start, Reply{}, err, "")
		return err
	}
	if !s.c.SupportsAuth(string(r.Auth.Mechanism)) {
		_, offered := s.c.Extension("AUTH")
		msg := fmt.Sprintf("%s does not offer AUTH %s", r.Addr(), r.Auth.Mechanism)
		if offered != "" {
			msg += " (it offers " + offered + ")"
		}
		err := relayErr("auth", Reply{}, errors.New(msg))
		trace.step("auth", start, Reply{}, err, "")
		return err
	}
	if r.Auth.Mechanism == MechanismXOAUTH2 && r.Auth.Tokens != nil {
		return s.authWithProvider(ctx, trace, start)
	}
	token := ""
	if r.Auth.Mechanism == MechanismXOAUTH2 {
		token = toks.token(r)
		if token == "" && r.Auth.TokenRefresh != nil {
			t, err := s.refreshToken(ctx, toks)
			if err != nil {
				trace.step("auth", start, Reply{}, err, "")
				return err
			}
			token = t
		}
	}
	rep, err := s.authWith(token)
	if err != nil && r.Auth.Mechanism == MechanismXOAUTH2 && r.Auth.TokenRefresh != nil && rep.Code == 535 {
		// Provider tokens expire within the hour: renew and try once more.
		t, rerr := s.refreshToken(ctx, toks)
		if rerr != nil {
			trace.step("auth", start, rep, rerr, "")
			return rerr
		}
		rep, err = s.authWith(t)
	}
	if err != nil {
		trace.step("auth", start, rep, err, "")
		return err
	}
	trace.step("auth", start, rep, nil, "")
	return nil
}

// authWithProvider logs in with XOAUTH2 and a token from the relay's
// TokenProvider; a token the relay refuses (535, after the 334 error
// challenge) is exchanged once for another.
func (s *session) authWithProvider(ctx context.Context, trace tracer, start time.Time) error {
	p := s.relay.Auth.Tokens
	token, err := p.Token(ctx)
	if err != nil {
		err = relayErr("auth", Reply{}, fmt.Errorf("get XOAUTH2 token for %s: %w", s.relay.Auth.Username, err))
		trace.step("auth", start, Reply{}, err, "")
		return err
	}
	rep, err := s.authWith(token)
	if err != nil && rep.Code == 535 {
		t, rerr := p.Refresh(ctx, token)
		if rerr != nil {
			rerr = relayErr("auth", rep, fmt.Errorf("refresh XOAUTH2 token for %s after %d %s: %w", s.relay.Auth.Username, rep.Code, rep.Text, rerr))
			trace.step("auth", start, rep, rerr, "")
			return rerr
		}
		rep, err = s.authWith(t)
	}
	trace.step("auth", start, rep, err, "")
	return err
}

func (s *session) authWith(token string) (Reply, error) {
	client, err := saslClient(s.relay.Auth, token)
	if err != nil {
		return Reply{}, relayErr("auth", Reply{}, err)
	}
	s.c.CommandTimeout = s.t.Helo
	s.rec.reset()
	err = s.c.Auth(client)
	rep := s.reply(err)
	if err != nil {
		return rep, protoErr("auth", rep, err)
	}
	return rep, nil
}

func (s *session) refreshToken(ctx context.Context, toks tokenSource) (string, error) {
	t, err := s.relay.Auth.TokenRefresh(ctx)
	if err != nil {
		return "", relayErr("auth", Reply{}, fmt.Errorf("refresh XOAUTH2 token for %s: %w", s.relay.Auth.Username, err))
	}
	toks.refreshed(s.relay, t)
	return t, nil
}

// reply is the server's reply to the command that just returned err: go-smtp's
// error when it is a reply, else (success) the last reply in the debug
// stream. The stream is not used for failures because go-smtp may say more
// after one (it answers a failed AUTH with "*", which the server refuses).
func (s *session) reply(err error) Reply {
	if err != nil {
		r, _ := replyFromError(err)
		return r
	}
	r, _ := s.rec.take()
	return r
}

// send runs one transaction. A nil error means the transaction reached its
// end; the recipients' outcomes are in res.
func (s *session) send(ctx context.Context, m *Message, res *Result) error {
	res.TLS = s.tls
	if err := s.checkExtensions(m); err != nil {
		res.failUndecided(err)
		return err
	}
	stop := context.AfterFunc(ctx, func() { s.raw.Close() })
	defer stop()
	var err error
	if ok, _ := s.c.Extension("PIPELINING"); ok {
		err = s.pipelinedTransaction(m, res)
	} else {
		err = s.transaction(ctx, m, res)
	}
	s.lastUsed = time.Now()
	if err != nil && ctx.Err() != nil {
		s.broken = true
		se := &mail.SMTPError{Stage: stageOf(err), Message: "cancelled: " + ctx.Err().Error(), Err: ctx.Err()}
		res.failUndecided(se)
		return fmt.Errorf("send to %s: %w", s.relay.Addr(), ctx.Err())
	}
	if err != nil {
		var re *RelayError
		if errors.As(err, &re) {
			res.failUndecided(re.Err)
		}
	}
	return err
}

// checkExtensions refuses, before MAIL FROM, what the server said it
// cannot take; these are permanent for this message on this server but say
// nothing against the server.
func (s *session) checkExtensions(m *Message) *mail.SMTPError {
	if max, ok := s.c.MaxMessageSize(); ok && max > 0 && m.Size() > int64(max) {
		return &mail.SMTPError{Code: 552, Enhanced: "5.3.4", Stage: "mail",
			Message: fmt.Sprintf("message size %d exceeds the %d bytes %s accepts", m.Size(), max, s.relay.Addr())}
	}
	addrs, headers := m.needsSMTPUTF8()
	if ok, _ := s.c.Extension("SMTPUTF8"); (addrs || headers) && !ok {
		if addrs {
			return &mail.SMTPError{Code: 553, Enhanced: "5.6.7", Stage: "mail",
				Message: fmt.Sprintf("non-ASCII addresses need SMTPUTF8, which %s does not offer", s.relay.Addr())}
		}
		return &mail.SMTPError{Code: 554, Enhanced: "5.6.9", Stage: "mail",
			Message: fmt.Sprintf("UTF-8 header fields need SMTPUTF8, which %s does not offer", s.relay.Addr())}
	}
	if ok, _ := s.c.Extension("8BITMIME"); m.eightBit() && !ok {
		// A signed message cannot be converted to 7 bits without breaking
		// its DKIM signature.
		return &mail.SMTPError{Code: 554, Enhanced: "5.6.3", Stage: "mail",
			Message: fmt.Sprintf("8-bit message and %s does not offer 8BITMIME", s.relay.Addr())}
	}
	return nil
}

func (s *session) transaction(ctx context.Context, m *Message, res *Result) error {
	s.messages++
	s.dirty = true

	opts := &smtp.MailOptions{Size: m.Size(), Return: smtp.DSNReturn(strings.ToUpper(m.DSN.Return))}
	if a, h := m.needsSMTPUTF8(); a || h {
		opts.UTF8 = true
	}
	if isPrintableASCII(m.DSN.EnvelopeID) {
		opts.EnvelopeID = m.DSN.EnvelopeID
	}
	s.c.CommandTimeout = s.t.Mail
	s.rec.reset()
	start := time.Now()
	err := s.c.Mail(m.From, opts)
	res.Mail = s.reply(err)
	if err != nil {
		// Whatever the code, a relay that refuses the sender cannot carry
		// this mail: fall back rather than bounce.
		err = s.relayFailure("mail", res.Mail, err)
		s.trace.step("mail", start, res.Mail, err, "")
		return err
	}
	s.trace.step("mail", start, res.Mail, nil, "")

	var ropts *smtp.RcptOptions
	if len(m.DSN.Notify) > 0 {
		ropts = &smtp.RcptOptions{}
		for _, n := range m.DSN.Notify {
			ropts.Notify = append(ropts.Notify, smtp.DSNNotify(strings.ToUpper(n)))
		}
	}
	accepted := 0
	s.c.CommandTimeout = s.t.Rcpt
	for i, to := range m.To {
		s.rec.reset()
		start := time.Now()
		err := s.c.Rcpt(to, ropts)
		rep := s.reply(err)
		res.Recipients[i].Rcpt = rep
		if err == nil {
			s.trace.step("rcpt", start, rep, nil, "")
			accepted++
			continue
		}
		if rep.Code == 0 || rep.Code == 421 {
			err = s.relayFailure("rcpt", rep, err)
			s.trace.step("rcpt", start, rep, err, "")
			return err
		}
		res.Recipients[i].Err = rep.smtpError("rcpt")
		s.trace.step("rcpt", start, rep, res.Recipients[i].Err, "")
	}
	if accepted == 0 {
		return nil
	}

	s.c.CommandTimeout = s.t.Data
	s.rec.reset()
	start = time.Now()
	w, err := s.c.Data()
	if err != nil {
		rep := s.reply(err)
		if rep.Code == 0 || rep.Code == 421 {
			err = s.relayFailure("data", rep, err)
			s.trace.step("data", start, rep, err, "")
			return err
		}
		res.failUndecided(rep.smtpError("data"))
		s.trace.step("data", start, rep, rep.smtpError("data"), "")
		return nil
	}
	dw := &deadlineWriter{w: w, conn: s.raw, timeout: s.t.DataXfer}
	for _, part := range [][]byte{m.Prefix, m.Data} {
		if _, err := dw.Write(part); err != nil {
			err = s.relayFailure("data", Reply{}, err)
			s.trace.step("data", start, Reply{}, err, "")
			return err
		}
	}
	s.rec.reset()
	_, err = w.CloseWithResponse()
	rep := s.reply(err)
	res.Data = rep
	s.dirty = false
	if err != nil {
		if rep.Code == 0 || rep.Code == 421 {
			err = s.relayFailure("dot", rep, err)
			s.trace.step("data", start, rep, err, "")
			return err
		}
		res.failUndecided(rep.smtpError("dot"))
		s.trace.step("data", start, rep, rep.smtpError("dot"), "")
		return nil
	}
	s.trace.step("data", start, rep, nil, "")
	return nil
}

// relayFailure wraps a failure that ends the transaction; without a reply
// (I/O error, timeout) or with a 421 the connection is gone.
func (s *session) relayFailure(stage string, rep Reply, err error) error {
	if rep.Code == 0 || rep.Code == 421 {
		s.broken = true
	}
	return relayErr(stage, rep, err)
}

// check makes sure a pooled connection still works before it carries
// another message: RSET when the last transaction was left open, NOOP
// otherwise.
func (s *session) check(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.raw.Close() })
	defer stop()
	s.c.CommandTimeout = s.t.Rset
	s.rec.reset()
	var err error
	if s.dirty {
		// go-smtp says EHLO again with the next command after RSET.
		err = s.c.Reset()
	} else {
		err = s.c.Noop()
	}
	if err != nil {
		s.broken = true
		return err
	}
	s.dirty = false
	return nil
}

// close says QUIT when the connection is healthy and closes it.
func (s *session) close(quit bool) {
	if quit && !s.broken {
		s.c.CommandTimeout = s.t.Quit
		if err := s.c.Quit(); err == nil {
			return
		}
	}
	_ = s.raw.Close()
}

// deadlineWriter renews the connection's deadline before each write of the
// message, as Postfix's smtp_data_xfer_timeout bounds each write; go-smtp
// clears its deadline once DATA's 354 has arrived.
type deadlineWriter struct {
	w       io.Writer
	conn    net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	const chunk = 64 << 10
	written := 0
	for len(p) > 0 {
		n := min(len(p), chunk)
		_ = d.conn.SetDeadline(time.Now().Add(d.timeout))
		m, err := d.w.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// replayLines renders a reply back into its wire form.
func replayLines(code int, msg string) []byte {
	var b []byte
	lines := strings.Split(msg, "\n")
	for i, l := range lines {
		sep := byte('-')
		if i == len(lines)-1 {
			sep = ' '
		}
		b = strconv.AppendInt(b, int64(code), 10)
		b = append(b, sep)
		b = append(b, l...)
		b = append(b, '\r', '\n')
	}
	return b
}

// replayConn returns pending before reading from the connection.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (d *dialer) tlsConfig(r Relay) *tls.Config {
	cfg := &tls.Config{
		ServerName:         r.serverName(),
		InsecureSkipVerify: r.SkipVerify, //nolint:gosec // only when the relay's configuration says so
		MinVersion:         tls.VersionTLS12,
		RootCAs:            d.rootCAs,
		ClientSessionCache: d.tlsCache,
	}
	if r.Auth.hasClientCert() {
		cfg.Certificates = []tls.Certificate{r.Auth.ClientCert}
	}
	return cfg
}

func describeTLS(st tls.ConnectionState) string {
	return tls.VersionName(st.Version) + ", " + tls.CipherSuiteName(st.CipherSuite)
}

func certName(c tls.Certificate) string {
	leaf := c.Leaf
	if leaf == nil && len(c.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	if leaf == nil {
		return ""
	}
	return strconv.Quote(leaf.Subject.CommonName)
}

func isPrintableASCII(s string) bool {
	return s != "" && !slices.ContainsFunc([]byte(s), func(b byte) bool { return b < ' ' || b > '~' })
}

// relayErr makes a relay failure at stage from the server's reply, or from
// a local error when there was no reply.
func relayErr(stage string, rep Reply, err error) *RelayError {
	if rep.Code != 0 {
		se := rep.smtpError(stage)
		if _, ok := replyFromError(err); !ok {
			se.Err = err
		}
		return &RelayError{Err: se}
	}
	return &RelayError{Err: &mail.SMTPError{Stage: stage, Message: err.Error(), Err: err}}
}

// protoErr is relayErr for errors from textproto or go-smtp, whose replies
// arrive as *textproto.Error or *smtp.SMTPError.
func protoErr(stage string, rep Reply, err error) *RelayError {
	var te *textproto.Error
	if rep.Code == 0 && errors.As(err, &te) {
		rep = parseReply(te.Code, te.Msg)
	}
	if rep.Code != 0 {
		return &RelayError{Err: rep.smtpError(stage)}
	}
	return relayErr(stage, rep, err)
}

func stageOf(err error) string {
	var se *mail.SMTPError
	if errors.As(err, &se) {
		return se.Stage
	}
	return ""
}
