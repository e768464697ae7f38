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
	"github.com/mailbus/mailbus/pkg/unsub"
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
	mailFrom string
	targets  []target
	messages int
}

func (x *session) Reset() { x.targets = nil }

func (x *session) Logout() error { return nil }

// Mail accepts any sender: bounces come from the null sender, complaint
// reports from anyone.
func (x *session) Mail(from string, _ *smtp.MailOptions) error {
	if x.messages >= x.s.cfg.MessagesPerConn {
		return errTooManyMsg
	}
	x.targets, x.mailFrom = nil, from
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
	if local := addr[:at]; unsub.IsMailto(local) {
		// Whose address it is shows only with the message (its sender),
		// so DATA checks it; nothing is relayed either way.
		for _, t := range owners {
			x.targets = append(x.targets, target{tenant: t, unsubscribe: local})
		}
		x.s.metrics.rcpts.WithLabelValues("unsubscribe").Inc()
		return nil
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

// unsubscribe acts on mail to unsubscribe addresses: one of them must
// have been made for its sender.
func (x *session) unsubscribe(ctx context.Context, targets []target, raw []byte) error {
	for _, t := range targets {
		err := x.s.mailtoUnsubscribe(ctx, t, x.mailFrom, raw)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errNotTheRecipient):
			continue
		default:
			x.s.log.Error("could not act on an unsubscribe; asking the sender to retry", "err", err)
			return errTempFail
		}
	}
	x.s.metrics.rcpts.WithLabelValues("forged").Inc()
	return errNotYours
}

var errNotYours = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
	Message: "this unsubscribe address was issued to another recipient; unsubscribe with the link in the message you received"}

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
	bounces := x.targets[:0:0]
	var unsubs []target
	for _, t := range x.targets {
		if t.unsubscribe != "" {
			unsubs = append(unsubs, t)
		} else {
			bounces = append(bounces, t)
		}
	}
	if len(unsubs) > 0 {
		if err := x.unsubscribe(ctx, unsubs, raw); err != nil {
			return err
		}
		if len(bounces) == 0 {
			return nil
		}
	}
	if _, err := x.s.Process(ctx, bounces, raw); err != nil {
		x.s.log.Error("could not act on a bounce; asking the sender to retry", "err", err)
		return errTempFail
	}
	return nil
}
