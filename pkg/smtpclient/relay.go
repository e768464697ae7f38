package smtpclient

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Security is how a connection is protected.
type Security int

const (
	// SecurityNone speaks plaintext and never tries STARTTLS.
	SecurityNone Security = iota
	// SecurityStartTLS requires STARTTLS: a relay that does not offer it,
	// or whose handshake fails, is a relay failure.
	SecurityStartTLS
	// SecurityTLS is implicit TLS from the first byte (port 465).
	SecurityTLS
	// SecurityOpportunistic uses STARTTLS when the server offers it and
	// plaintext when it does not, as MTAs do for direct MX delivery (RFC
	// 3207, Postfix's "may" level). A failed handshake falls back to a new
	// plaintext connection only when Relay.PlaintextFallback allows it.
	SecurityOpportunistic
)

func (s Security) String() string {
	switch s {
	case SecurityNone:
		return "none"
	case SecurityStartTLS:
		return "starttls"
	case SecurityTLS:
		return "tls"
	case SecurityOpportunistic:
		return "opportunistic"
	}
	return "security(" + strconv.Itoa(int(s)) + ")"
}

// Mechanism is a SASL mechanism name as it appears in EHLO.
type Mechanism string

// The mechanisms the client speaks. MechanismNone sends no AUTH (a relay
// that authorizes by IP or by TLS client certificate).
const (
	MechanismNone    Mechanism = ""
	MechanismPlain   Mechanism = "PLAIN"
	MechanismLogin   Mechanism = "LOGIN"
	MechanismCRAMMD5 Mechanism = "CRAM-MD5"
	MechanismXOAUTH2 Mechanism = "XOAUTH2"
)

// Auth is how the client proves who it is to a relay.
type Auth struct {
	Mechanism Mechanism
	Username  string
	// Password is for PLAIN, LOGIN and CRAM-MD5.
	Password string
	// Token is the XOAUTH2 bearer token.
	Token string
	// TokenRefresh, when set, gets a new bearer token: the client calls it
	// once when the relay rejects Token, retries AUTH with the new token,
	// and keeps using that token for later connections to the relay.
	TokenRefresh func(ctx context.Context) (token string, err error)
	// Tokens, when set, replaces Token and TokenRefresh: each connection
	// asks it for the current token, and a rejected one is handed back
	// once for another (a relay signing in with OAuth, whose access tokens
	// expire within the hour; see pkg/oauthtoken).
	Tokens TokenProvider
	// ClientCert, when it holds a certificate, is presented in the TLS
	// handshake (a relay that authenticates by client certificate).
	ClientCert tls.Certificate
}

// TokenProvider hands out XOAUTH2 access tokens that expire.
type TokenProvider interface {
	// Token returns a current token.
	Token(ctx context.Context) (string, error)
	// Refresh returns a token other than rejected, which the relay refused.
	Refresh(ctx context.Context, rejected string) (string, error)
}

func (a Auth) hasClientCert() bool { return len(a.ClientCert.Certificate) > 0 }

// Relay is one SMTP server to deliver through: a tenant's relay, the
// platform's system relay, or one MX host. The sender service fills it from
// mailbusv1.Relay.
type Relay struct {
	// Host is the name or IP address to connect to.
	Host string
	// Port defaults to 465 for SecurityTLS and 25 otherwise.
	Port     int
	Security Security
	// SkipVerify turns certificate verification off; only when the relay's
	// configuration says so.
	SkipVerify bool
	// ServerName is the name the certificate must carry and the SNI sent;
	// defaults to Host. Direct MX delivery dials an address and sets the MX
	// host name here.
	ServerName string
	Auth       Auth
	// AllowPlaintextAuth lets credentials go over an unencrypted
	// connection. Without it the client refuses to send them.
	AllowPlaintextAuth bool
	// PlaintextFallback lets SecurityOpportunistic retry in plaintext on a
	// new connection when the TLS handshake fails.
	PlaintextFallback bool
	// HeloName is the EHLO name; defaults to PoolConfig.HeloName.
	HeloName string
	// MaxConns caps the connections to this relay (over every process
	// sharing PoolConfig.Slots, else in this one); 0 means
	// PoolConfig.MaxConnsPerRelay. The relay's max_connections.
	MaxConns int
	// MaxMessagesPerConn caps the messages sent over one connection; 0
	// means PoolConfig.MaxMessagesPerConn.
	MaxMessagesPerConn int
	// Budget names the connection budget this relay's connections count
	// against in PoolConfig.Slots, MaxConns in all; default Key(). The MX
	// hosts of one provider share one budget ("site:google"): a provider
	// limits connections per sending IP, not per host.
	Budget string
}

func (r Relay) port() int {
	if r.Port != 0 {
		return r.Port
	}
	if r.Security == SecurityTLS {
		return 465
	}
	return 25
}

// Addr is "host:port".
func (r Relay) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.port())) }

func (r Relay) serverName() string {
	if r.ServerName != "" {
		return r.ServerName
	}
	return r.Host
}

// Key identifies the connections the pool may share between sends:
// host:port:security:user.
func (r Relay) Key() string {
	return fmt.Sprintf("%s:%s:%s", r.Addr(), r.Security, r.Auth.Username)
}

// fingerprint covers everything else a connection was set up with, so a
// pooled connection is not reused after the relay's password, token,
// certificate or TLS settings changed; such connections are closed instead.
func (r Relay) fingerprint(helo string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%t\x00%s\x00%s\x00%s\x00%s\x00%t\x00%t\x00%s\x00",
		r.Key(), r.SkipVerify, r.serverName(), r.Auth.Mechanism, r.Auth.Password, r.Auth.Token,
		r.AllowPlaintextAuth, r.PlaintextFallback, helo)
	for _, c := range r.Auth.ClientCert.Certificate {
		h.Write(c)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// Timeouts bound each SMTP phase, as Postfix's smtp_*_timeout parameters
// do; each is a deadline on the connection for that phase. Zero fields take
// the defaults from DefaultTimeouts.
type Timeouts struct {
	Connect  time.Duration // TCP connect (smtp_connect_timeout 30s)
	Greeting time.Duration // the 220 banner (smtp_helo_timeout 300s)
	Helo     time.Duration // EHLO/HELO, and AUTH (smtp_helo_timeout 300s)
	StartTLS time.Duration // STARTTLS and the TLS handshake (smtp_starttls_timeout 300s)
	Mail     time.Duration // MAIL FROM (smtp_mail_timeout 300s)
	Rcpt     time.Duration // each RCPT TO (smtp_rcpt_timeout 300s)
	Data     time.Duration // DATA until 354 (smtp_data_init_timeout 120s)
	DataXfer time.Duration // each write of the message (smtp_data_xfer_timeout 180s)
	DataDone time.Duration // the reply after the final dot (smtp_data_done_timeout 600s)
	Rset     time.Duration // RSET and NOOP (smtp_rset_timeout 20s)
	Quit     time.Duration // QUIT (smtp_quit_timeout 300s)
}

// DefaultTimeouts are Postfix's defaults.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Connect:  30 * time.Second,
		Greeting: 300 * time.Second,
		Helo:     300 * time.Second,
		StartTLS: 300 * time.Second,
		Mail:     300 * time.Second,
		Rcpt:     300 * time.Second,
		Data:     120 * time.Second,
		DataXfer: 180 * time.Second,
		DataDone: 600 * time.Second,
		Rset:     20 * time.Second,
		Quit:     300 * time.Second,
	}
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Connect, &d.Connect}, {&t.Greeting, &d.Greeting}, {&t.Helo, &d.Helo},
		{&t.StartTLS, &d.StartTLS}, {&t.Mail, &d.Mail}, {&t.Rcpt, &d.Rcpt},
		{&t.Data, &d.Data}, {&t.DataXfer, &d.DataXfer}, {&t.DataDone, &d.DataDone},
		{&t.Rset, &d.Rset}, {&t.Quit, &d.Quit},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}
