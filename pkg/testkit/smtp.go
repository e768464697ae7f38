package testkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpWaitTimeout bounds how long the Wait helpers block before failing the
// test (see WaitTimeout).
const smtpWaitTimeout = WaitTimeout

// SMTPStep names a point of an SMTP session where a test can make the server
// give another reply than its normal one.
type SMTPStep string

// The steps a SMTPReplyFunc is asked about.
const (
	// SMTPStepGreeting is the 220 banner; a non-2xx greeting makes the server
	// refuse every later command except QUIT (RFC 5321 3.1).
	SMTPStepGreeting SMTPStep = "greeting"
	// SMTPStepEHLO is EHLO or HELO; Arg is the client's name.
	SMTPStepEHLO SMTPStep = "ehlo"
	// SMTPStepAuth is the AUTH command; Arg is the mechanism.
	SMTPStepAuth SMTPStep = "auth"
	// SMTPStepMail is MAIL FROM; Arg is the reverse path.
	SMTPStepMail SMTPStep = "mail"
	// SMTPStepRcpt is RCPT TO; Arg is the recipient.
	SMTPStepRcpt SMTPStep = "rcpt"
	// SMTPStepData is the DATA command itself, before any message byte.
	SMTPStepData SMTPStep = "data"
	// SMTPStepDot is the reply after the message's final dot; a 2xx reply
	// here still stores the message, with the server saying Text.
	SMTPStepDot SMTPStep = "dot"
)

// SMTPCommand is what the client asked for at one step.
type SMTPCommand struct {
	Step SMTPStep
	// Arg is the EHLO name, AUTH mechanism, MAIL FROM or RCPT TO address
	// (without angle brackets); empty for the other steps.
	Arg string
	// Conn numbers the connection in accept order, from 1.
	Conn int
	// Message numbers the MAIL transaction on this connection, from 1 (0
	// before the first MAIL).
	Message int
	// TLS says whether the connection is encrypted at this point.
	TLS bool
}

// SMTPReply is a reply the server gives instead of its own.
type SMTPReply struct {
	Code int
	// Enhanced is the RFC 3463 status such as "5.1.1"; empty for none.
	Enhanced string
	// Text is the server's words; "\n" separates the lines of a multi-line
	// reply.
	Text string
	// Drop closes the connection without replying, like a crashing server
	// or a broken network.
	Drop bool
}

// String formats the reply as the server writes its last line.
func (r SMTPReply) String() string {
	if r.Enhanced == "" {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// SMTPReplyFunc decides the reply for a command; nil means the server's
// normal behaviour. It is called from the server's connection goroutines,
// so it must be safe for concurrent use.
type SMTPReplyFunc func(SMTPCommand) *SMTPReply

// SMTPReplyAt gives r at every occurrence of step.
func SMTPReplyAt(step SMTPStep, r SMTPReply) SMTPReplyFunc {
	return func(c SMTPCommand) *SMTPReply {
		if c.Step == step {
			return &r
		}
		return nil
	}
}

// SMTPReplyToRcpt gives r to RCPT TO for addr (compared case-insensitively).
func SMTPReplyToRcpt(addr string, r SMTPReply) SMTPReplyFunc {
	return func(c SMTPCommand) *SMTPReply {
		if c.Step == SMTPStepRcpt && strings.EqualFold(c.Arg, addr) {
			return &r
		}
		return nil
	}
}

// SMTPReplyOnce gives f's reply the first time f has one, and the normal
// reply afterwards.
func SMTPReplyOnce(f SMTPReplyFunc) SMTPReplyFunc {
	var mu sync.Mutex
	done := false
	return func(c SMTPCommand) *SMTPReply {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		r := f(c)
		if r != nil {
			done = true
		}
		return r
	}
}

// SMTPMessage is one message the server accepted, with what the session
// looked like when it did.
type SMTPMessage struct {
	// Conn is the connection number (see SMTPCommand.Conn); messages that
	// share it came over one connection.
	Conn int
	// Helo is the client's EHLO/HELO name.
	Helo string
	From string
	To   []string
	// Data is the message as received (dot-unstuffed, CRLF line ends); nil
	// when the server runs with SMTPDiscard.
	Data []byte
	// MailOptions are the MAIL FROM parameters (SIZE, BODY, SMTPUTF8, RET,
	// ENVID).
	MailOptions smtp.MailOptions
	// RcptOptions are the RCPT TO parameters (NOTIFY, ORCPT), one per To.
	RcptOptions []smtp.RcptOptions
	// TLS is whether the message came over an encrypted connection, with
	// the negotiated version and the SNI name the client sent.
	TLS           bool
	TLSVersion    uint16
	TLSServerName string
	// ClientCertCN is the subject common name of the verified client
	// certificate, if the client presented one.
	ClientCertCN string
	// AuthMechanism and AuthUser say how the client authenticated; empty
	// when it did not.
	AuthMechanism string
	AuthUser      string
	// Pipelined counts the commands the client had already sent when the
	// server got to answer its MAIL FROM: RCPT TO and DATA for a client
	// that pipelines (RFC 2920), 0 for one that waits for every reply.
	// SMTPAwaitPipelining makes the count exact.
	Pipelined int
}

type smtpSecurity int

const (
	smtpPlain smtpSecurity = iota
	smtpStartTLS
	smtpImplicitTLS
)

type smtpConfig struct {
	domain            string
	security          smtpSecurity
	cert              *Cert
	clientCAs         *x509.CertPool
	passwords         map[string]string
	tokens            map[string]string
	tokenCheck        func(user, token string) bool
	mechanisms        []string
	allowInsecureAuth bool
	requireAuth       bool
	latency           time.Duration
	maxSize           int64
	hidden            map[string]bool
	dsn               bool
	smtputf8          bool
	replies           []SMTPReplyFunc
	discard           bool
	awaitPipelining   bool
}

// SMTPOption configures StartSMTP.
type SMTPOption func(*smtpConfig)

// SMTPImplicitTLS makes the server speak TLS from the first byte (port 465
// style) with cert's leaf.
func SMTPImplicitTLS(cert *Cert) SMTPOption {
	return func(c *smtpConfig) { c.security, c.cert = smtpImplicitTLS, cert }
}

// SMTPStartTLS makes the server offer STARTTLS with cert's leaf.
func SMTPStartTLS(cert *Cert) SMTPOption {
	return func(c *smtpConfig) { c.security, c.cert = smtpStartTLS, cert }
}

// SMTPClientCAs makes the server ask for a client certificate during the
// TLS handshake and verify it against pool (a client may still send none).
func SMTPClientCAs(pool *x509.CertPool) SMTPOption {
	return func(c *smtpConfig) { c.clientCAs = pool }
}

// SMTPAuth lets username log in with password through PLAIN, LOGIN and
// CRAM-MD5. Like a real server it offers AUTH only over TLS unless
// SMTPAllowInsecureAuth is given.
func SMTPAuth(username, password string) SMTPOption {
	return func(c *smtpConfig) { c.passwords[username] = password }
}

// SMTPBearerToken lets username log in with token through XOAUTH2 and
// OAUTHBEARER.
func SMTPBearerToken(username, token string) SMTPOption {
	return func(c *smtpConfig) { c.tokens[username] = token }
}

// SMTPBearerTokenFunc lets a user log in through XOAUTH2 and OAUTHBEARER
// with any token valid says is current, as Gmail checks a token with its
// issuer (see OAuthServer.Valid).
func SMTPBearerTokenFunc(valid func(user, token string) bool) SMTPOption {
	return func(c *smtpConfig) { c.tokenCheck = valid }
}

// SMTPAuthMechanisms sets the mechanisms the server offers, in order, instead
// of every one it can check. Known: PLAIN, LOGIN, CRAM-MD5, XOAUTH2,
// OAUTHBEARER.
func SMTPAuthMechanisms(mechs ...string) SMTPOption {
	return func(c *smtpConfig) { c.mechanisms = mechs }
}

// SMTPAllowInsecureAuth offers AUTH on unencrypted connections too.
func SMTPAllowInsecureAuth() SMTPOption {
	return func(c *smtpConfig) { c.allowInsecureAuth = true }
}

// SMTPRequireAuth refuses MAIL FROM with "530 5.7.0 Authentication
// required" until the client has authenticated with AUTH or a verified
// client certificate.
func SMTPRequireAuth() SMTPOption {
	return func(c *smtpConfig) { c.requireAuth = true }
}

// SMTPLatency delays every reply (and the greeting) by d, counted from the
// moment the client's command arrived, like a remote server d away.
func SMTPLatency(d time.Duration) SMTPOption {
	return func(c *smtpConfig) { c.latency = d }
}

// SMTPMaxSize advertises "SIZE n" and refuses larger messages with 552 5.3.4.
func SMTPMaxSize(n int64) SMTPOption {
	return func(c *smtpConfig) { c.maxSize = n }
}

// SMTPHideExtensions removes EHLO keywords (for example "8BITMIME",
// "PIPELINING", "SIZE", "DSN", "SMTPUTF8", "AUTH") from the server's EHLO
// reply, to play an older or stricter server.
func SMTPHideExtensions(keywords ...string) SMTPOption {
	return func(c *smtpConfig) {
		for _, k := range keywords {
			c.hidden[strings.ToUpper(k)] = true
		}
	}
}

// SMTPDSN advertises and accepts DSN parameters (RFC 3461).
func SMTPDSN() SMTPOption { return func(c *smtpConfig) { c.dsn = true } }

// SMTPUTF8 advertises and accepts SMTPUTF8 (RFC 6531).
func SMTPUTF8() SMTPOption { return func(c *smtpConfig) { c.smtputf8 = true } }

// SMTPDomain sets the name the server greets with.
func SMTPDomain(name string) SMTPOption { return func(c *smtpConfig) { c.domain = name } }

// SMTPReplies installs reply overrides; the first function with a reply
// wins. SMTPServer.SetReplies replaces them while the server runs.
func SMTPReplies(fs ...SMTPReplyFunc) SMTPOption {
	return func(c *smtpConfig) { c.replies = append(c.replies, fs...) }
}

// SMTPAwaitPipelining makes the server hold its reply to MAIL FROM until
// the client has sent DATA too (for 20 seconds at most), as a client that
// pipelines does without waiting, so that SMTPMessage.Pipelined does not
// depend on how the network cut the client's writes. A client that does
// not pipeline waits out the 20 seconds at every MAIL FROM.
func SMTPAwaitPipelining() SMTPOption { return func(c *smtpConfig) { c.awaitPipelining = true } }

// SMTPDiscard keeps envelopes but not message bytes, for benchmarks that
// send many messages.
func SMTPDiscard() SMTPOption { return func(c *smtpConfig) { c.discard = true } }

// SMTPServer is an SMTP server on 127.0.0.1 built on go-smtp, private to one
// test. It records every message it accepts and can be told to misbehave at
// any step. Its methods are safe for concurrent use.
type SMTPServer struct {
	t    testing.TB
	cfg  smtpConfig
	srv  *smtp.Server
	ln   net.Listener
	addr string

	mu       sync.Mutex
	replies  []SMTPReplyFunc
	msgs     []SMTPMessage
	received int
	fronts   map[*smtpFront]struct{}
	peakOpen int
	accepted int
	closed   bool
	changed  chan struct{}

	serveDone chan struct{}
	fronts0   sync.WaitGroup
	closeOnce sync.Once
}

// StartSMTP starts an SMTP server on 127.0.0.1:0 for t and stops it when t
// ends. Without options it accepts any message over plaintext.
func StartSMTP(t testing.TB, opts ...SMTPOption) *SMTPServer {
	t.Helper()
	cfg := smtpConfig{
		domain:    "mx.testkit.local",
		passwords: map[string]string{},
		tokens:    map[string]string{},
		hidden:    map[string]bool{},
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.security != smtpPlain && cfg.cert == nil {
		t.Fatal("testkit: SMTP TLS option without a certificate")
	}
	if cfg.mechanisms == nil {
		if len(cfg.passwords) > 0 {
			cfg.mechanisms = append(cfg.mechanisms, sasl.Plain, sasl.Login, "CRAM-MD5")
		}
		if len(cfg.tokens) > 0 || cfg.tokenCheck != nil {
			cfg.mechanisms = append(cfg.mechanisms, "XOAUTH2", sasl.OAuthBearer)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testkit: listen for SMTP: %v", err)
	}
	s := &SMTPServer{
		t:         t,
		cfg:       cfg,
		ln:        ln,
		addr:      ln.Addr().String(),
		replies:   cfg.replies,
		fronts:    map[*smtpFront]struct{}{},
		changed:   make(chan struct{}),
		serveDone: make(chan struct{}),
	}
	srv := smtp.NewServer(smtpBackend{s})
	srv.Domain = cfg.domain
	// The front (smtp_front.go) does TLS and decides who may AUTH, so
	// go-smtp sees plaintext and must not refuse AUTH on its own.
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = cfg.maxSize
	srv.EnableDSN = cfg.dsn
	srv.EnableSMTPUTF8 = cfg.smtputf8
	srv.ReadTimeout = 5 * time.Minute
	srv.ErrorLog = log.New(smtpTestLog{s}, "testkit smtp: ", 0)
	s.srv = srv
	go func() {
		defer close(s.serveDone)
		_ = srv.Serve(smtpListener{Listener: ln, s: s})
	}()
	t.Cleanup(s.Close)
	return s
}

// Addr is the server's "127.0.0.1:port".
func (s *SMTPServer) Addr() string { return s.addr }

// Host is "127.0.0.1".
func (s *SMTPServer) Host() string { h, _, _ := net.SplitHostPort(s.addr); return h }

// Port is the server's port.
func (s *SMTPServer) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// SetReplies replaces the reply overrides; with no arguments the server
// behaves normally again.
func (s *SMTPServer) SetReplies(fs ...SMTPReplyFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replies = fs
}

// Messages returns the messages accepted so far, in order.
func (s *SMTPServer) Messages() []SMTPMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SMTPMessage(nil), s.msgs...)
}

// Received is the number of messages accepted so far.
func (s *SMTPServer) Received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

// WaitMessages waits until the server has accepted at least n messages and
// returns them all; it fails t if that does not happen in 20 seconds.
func (s *SMTPServer) WaitMessages(t testing.TB, n int) []SMTPMessage {
	t.Helper()
	s.waitFor(t, fmt.Sprintf("%d messages", n), func() bool { return s.received >= n })
	return s.Messages()
}

// WaitMessage waits for an accepted message for which match is true and
// returns the first such message.
func (s *SMTPServer) WaitMessage(t testing.TB, match func(SMTPMessage) bool) SMTPMessage {
	t.Helper()
	var found SMTPMessage
	s.waitFor(t, "a matching message", func() bool {
		for _, m := range s.msgs {
			if match(m) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// Connections is the number of connections accepted so far.
func (s *SMTPServer) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// OpenConnections is the number of connections open now.
func (s *SMTPServer) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fronts)
}

// PeakOpenConnections is the most connections that were open at once.
func (s *SMTPServer) PeakOpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakOpen
}

// WaitOpenConnections waits until exactly n connections are open (for
// instance 0 after a client pool closed its idle connections).
func (s *SMTPServer) WaitOpenConnections(t testing.TB, n int) {
	t.Helper()
	s.waitFor(t, fmt.Sprintf("%d open connections", n), func() bool { return len(s.fronts) == n })
}

// KillConnections closes every open connection at once, without a 421 or
// a TLS close, as a crash or a network failure would; the server keeps
// accepting new ones.
func (s *SMTPServer) KillConnections() {
	s.mu.Lock()
	fronts := make([]*smtpFront, 0, len(s.fronts))
	for f := range s.fronts {
		fronts = append(fronts, f)
	}
	s.mu.Unlock()
	for _, f := range fronts {
		f.kill()
	}
}

// Close stops the server and waits for its connections to end. StartSMTP
// registers it with t.Cleanup; calling it earlier is allowed.
func (s *SMTPServer) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		// Shutdown closes the listener and waits for go-smtp's connection
		// goroutines, which end once KillConnections has closed their
		// sockets; waiting for them (not only for the sockets) keeps
		// go-smtp's error log from writing to t after t has ended.
		shutdown := make(chan struct{})
		go func() {
			defer close(shutdown)
			_ = s.srv.Shutdown(context.Background())
		}()
		s.KillConnections()
		<-shutdown
		<-s.serveDone
		s.fronts0.Wait()
	})
}

func (s *SMTPServer) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(smtpWaitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("testkit: SMTP server at %s: waited %v for %s; have %d messages, %d open connections",
				s.addr, smtpWaitTimeout, what, s.Received(), s.OpenConnections())
		}
	}
}

// notifyLocked wakes the waiters; s.mu must be held.
func (s *SMTPServer) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *SMTPServer) reply(c SMTPCommand) *SMTPReply {
	s.mu.Lock()
	fs := s.replies
	s.mu.Unlock()
	for _, f := range fs {
		if r := f(c); r != nil {
			return r
		}
	}
	return nil
}

func (s *SMTPServer) store(m SMTPMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.discard {
		m.Data = nil
	}
	s.msgs = append(s.msgs, m)
	s.received++
	s.notifyLocked()
}

// smtpTestLog sends go-smtp's internal error log to the test log. Close
// waits for every connection before t ends, so it never logs late.
type smtpTestLog struct{ s *SMTPServer }

func (l smtpTestLog) Write(p []byte) (int, error) {
	l.s.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

type smtpListener struct {
	net.Listener
	s *SMTPServer
}

func (l smtpListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := l.s
	s.mu.Lock()
	s.accepted++
	f := newSMTPFront(s, c, s.accepted)
	s.fronts[f] = struct{}{}
	s.peakOpen = max(s.peakOpen, len(s.fronts))
	s.fronts0.Add(1)
	closed := s.closed
	s.notifyLocked()
	s.mu.Unlock()
	if closed {
		f.kill()
	}
	return f, nil
}

func (s *SMTPServer) frontClosed(f *smtpFront) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.fronts[f]; ok {
		delete(s.fronts, f)
		s.fronts0.Done()
		s.notifyLocked()
	}
}

type smtpBackend struct{ s *SMTPServer }

func (b smtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	f, ok := c.Conn().(*smtpFront)
	if !ok {
		return nil, errors.New("testkit: connection without front")
	}
	sess := &smtpSession{s: b.s, f: f, helo: c.Hostname()}
	f.session = sess
	return sess, nil
}

// smtpSession is the go-smtp side of one connection: it checks credentials,
// enforces SMTPRequireAuth and stores messages.
type smtpSession struct {
	s    *SMTPServer
	f    *smtpFront
	helo string

	authMech, authUser string

	from     string
	mailOpts smtp.MailOptions
	to       []string
	rcptOpts []smtp.RcptOptions
}

func (ss *smtpSession) authAllowed() bool {
	return ss.f.tlsState != nil || ss.s.cfg.allowInsecureAuth
}

func (ss *smtpSession) AuthMechanisms() []string {
	if !ss.authAllowed() {
		return nil
	}
	return ss.s.cfg.mechanisms
}

func (ss *smtpSession) Auth(mech string) (sasl.Server, error) {
	if !ss.authAllowed() {
		return nil, &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	}
	offered := false
	for _, m := range ss.s.cfg.mechanisms {
		offered = offered || strings.EqualFold(m, mech)
	}
	if !offered {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	cfg := ss.s.cfg
	succeed := func(user string) {
		ss.authMech, ss.authUser = mech, user
	}
	checkPassword := func(user, pass string) error {
		if want, ok := cfg.passwords[user]; ok && want == pass {
			succeed(user)
			return nil
		}
		return errSMTPAuthFailed
	}
	checkToken := func(user, token string) error {
		if want, ok := cfg.tokens[user]; ok && want == token {
			succeed(user)
			return nil
		}
		if cfg.tokenCheck != nil && cfg.tokenCheck(user, token) {
			succeed(user)
			return nil
		}
		return errSMTPAuthFailed
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errSMTPAuthFailed
			}
			return checkPassword(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: checkPassword}, nil
	case "CRAM-MD5":
		return &cramMD5Server{
			password:  func(u string) (string, bool) { p, ok := cfg.passwords[u]; return p, ok },
			onSuccess: succeed,
		}, nil
	case "XOAUTH2":
		return &xoauth2Server{check: checkToken}, nil
	case sasl.OAuthBearer:
		return sasl.NewOAuthBearerServer(func(o sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
			if checkToken(o.Username, o.Token) != nil {
				return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
			}
			return nil
		}), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.cfg.requireAuth && ss.authUser == "" && ss.f.clientCertCN() == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	ss.from = from
	if opts != nil {
		ss.mailOpts = *opts
	}
	return nil
}

func (ss *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	ss.rcptOpts = append(ss.rcptOpts, o)
	return nil
}

func (ss *smtpSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := SMTPMessage{
		Conn:          ss.f.id,
		Helo:          ss.helo,
		From:          ss.from,
		To:            append([]string(nil), ss.to...),
		Data:          data,
		MailOptions:   ss.mailOpts,
		RcptOptions:   append([]smtp.RcptOptions(nil), ss.rcptOpts...),
		ClientCertCN:  ss.f.clientCertCN(),
		AuthMechanism: ss.authMech,
		AuthUser:      ss.authUser,
		Pipelined:     ss.f.pipelined,
	}
	if st := ss.f.tlsState; st != nil {
		m.TLS, m.TLSVersion, m.TLSServerName = true, st.Version, st.ServerName
	}
	if rep := ss.s.reply(ss.f.command(SMTPStepDot, "")); rep != nil {
		if rep.Drop {
			ss.f.kill()
			return net.ErrClosed
		}
		if rep.Code/100 == 2 {
			ss.s.store(m)
		}
		return rep.smtpError()
	}
	ss.s.store(m)
	return nil
}

func (ss *smtpSession) Reset() {
	ss.from, ss.mailOpts, ss.to, ss.rcptOpts = "", smtp.MailOptions{}, nil, nil
}

func (ss *smtpSession) Logout() error { return nil }

func (r SMTPReply) smtpError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: parseEnhanced(r.Enhanced), Message: r.Text}
}

func parseEnhanced(s string) smtp.EnhancedCode {
	if s == "" {
		return smtp.NoEnhancedCode
	}
	var e smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.NoEnhancedCode
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return smtp.NoEnhancedCode
		}
		e[i] = n
	}
	return e
}

// formatReply renders r as wire lines, repeating the enhanced code on each
// line as RFC 2034 asks.
func formatReply(r SMTPReply) []byte {
	var b bytes.Buffer
	lines := strings.Split(r.Text, "\n")
	for i, l := range lines {
		sep := '-'
		if i == len(lines)-1 {
			sep = ' '
		}
		fmt.Fprintf(&b, "%03d%c", r.Code, sep)
		if r.Enhanced != "" {
			b.WriteString(r.Enhanced)
			b.WriteByte(' ')
		}
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// tlsConfig is the server side of TLS for this server.
func (s *SMTPServer) tlsConfig() *tls.Config {
	cfg := s.cfg.cert.ServerTLSConfig()
	if s.cfg.clientCAs != nil {
		cfg.ClientCAs = s.cfg.clientCAs
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg
}
