package bounce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
)

var (
	errNoSuchUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox here; this server only takes bounces for mail it sent"}
	errNotIssued  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox: this return path was not issued for this bounce domain (altered, expired, or another tenant's)"}
	errTempFail   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure, try again later"}
	errTooManyMsg = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many messages on one connection, reconnect"}
	errNoRcpt     = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "no valid recipients"}
)

type backend struct{ s *Service }

// NewSession starts a session on a connection that the listener admitted
// (see limitListener): the connection limits apply before the greeting,
// so that idle connections which never say EHLO count too.
func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, ip: remoteIP(c.Conn().RemoteAddr())}, nil
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// session is one SMTP connection.
type session struct {
	s        *Service
	ip       string
	targets  []target
	messages int
}

func (x *session) Reset() { x.targets = nil }

func (x *session) Logout() error { return nil }

// Mail accepts any sender: bounces come from the null sender, complaint
// reports from anyone.
func (x *session) Mail(string, *smtp.MailOptions) error {
	if x.messages >= x.s.cfg.MessagesPerConn {
		return errTooManyMsg
	}
	x.targets = nil
	return nil
}

// Rcpt accepts only what this server exists for; see the package comment.
// A VERP address is accepted at a bounce domain only when it verifies for
// a tenant that owns the domain: the MAC binds it to the tenant of its
// delivery, and that tenant, never merely the domain's owner, is whose
// suppression list and message the bounce is about.
func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ctx := context.Background()
	addr := suppress.Normalize(to)
	if tenantID, ok := x.feedbackTenant(addr); ok {
		t, found := x.s.tenants.Tenant(tenantID)
		if !found {
			x.s.log.Error("feedback-loop address configured for an unknown tenant", "address", addr, "tenant", tenantID)
			x.s.metrics.rcpts.WithLabelValues("refused").Inc()
			return errNoSuchUser
		}
		x.targets = append(x.targets, target{tenant: t})
		x.s.metrics.rcpts.WithLabelValues("feedback").Inc()
		return nil
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		x.s.metrics.rcpts.WithLabelValues("refused").Inc()
		return errNoSuchUser
	}
	domain := normalizeDomain(addr[at+1:])
	owners, err := x.s.dir.BounceTenants(ctx, domain)
	if err != nil {
		x.s.log.Error("cannot look up bounce domains", "err", err)
		return errTempFail
	}
	if len(owners) == 0 {
		x.s.metrics.rcpts.WithLabelValues("refused").Inc()
		return errNoSuchUser
	}
	tenant, id, hash, err := verifyVERP(x.s.cfg.VERPKeys, owners, addr)
	switch {
	case errors.Is(err, mail.ErrVERPForged):
		x.s.metrics.rcpts.WithLabelValues("forged").Inc()
		x.s.log.Warn("refusing a VERP address that does not verify for the tenant of its bounce domain", "rcpt", addr, "domain", domain, "ip", x.ip)
		return errNotIssued
	case err != nil:
		x.s.metrics.rcpts.WithLabelValues("refused").Inc()
		return errNoSuchUser
	}
	x.targets = append(x.targets, target{tenant: tenant, deliveryID: id, rcptHash: hash})
	x.s.metrics.rcpts.WithLabelValues("verp").Inc()
	return nil
}

func (x *session) feedbackTenant(addr string) (string, bool) {
	for a, t := range x.s.cfg.FeedbackAddresses {
		if suppress.Normalize(a) == addr {
			return t, true
		}
	}
	return "", false
}

// Data reads the message and processes it before answering, so that a 250
// means the outcome is published: a failure answers 451 and the sending
// MTA tries again later.
func (x *session) Data(r io.Reader) error {
	if len(x.targets) == 0 {
		return errNoRcpt
	}
	x.messages++
	raw, err := io.ReadAll(r)
	if err != nil {
		// Too large or cut off: go-smtp already answers for
		// ErrDataTooLarge; anything else is the connection's failure.
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("reading message: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), x.s.cfg.Timeout)
	defer cancel()
	if _, err := x.s.Process(ctx, x.targets, raw); err != nil {
		x.s.log.Error("could not act on a bounce; asking the sender to retry", "err", err)
		return errTempFail
	}
	return nil
}
