// Package catcher is the local mail catcher of `mailbus dev`: an SMTP server
// that accepts everything sent to it and a small web page that lists what it
// received, headers included, so a newcomer can see what mailbus delivered
// without a real relay.
package catcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/mail"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one message the catcher received.
type Message struct {
	ID       int64     `json:"id"`
	Received time.Time `json:"received"`
	From     string    `json:"mail_from"`
	To       []string  `json:"rcpt_to"`
	Subject  string    `json:"subject"`
	Header   string    `json:"header"`
	Size     int       `json:"size"`
	Raw      []byte    `json:"-"`
}

// Config configures the catcher.
type Config struct {
	SMTPAddr string // default 127.0.0.1:1025
	HTTPAddr string // default 127.0.0.1:8025
	// Keep is how many messages to keep in memory (oldest dropped first).
	Keep int
	// MaxMessageBytes bounds one message.
	MaxMessageBytes int64
}

// Catcher holds received messages in memory.
type Catcher struct {
	cfg            Config
	log            *slog.Logger
	mu             sync.Mutex
	msgs           []Message
	next           atomic.Int64
	smtp           *smtp.Server
	smtpLn, httpLn net.Listener
	http           *http.Server
}

// New builds a catcher and binds its listeners, so that the addresses are
// known (and in use) before Run.
func New(cfg Config, log *slog.Logger) (*Catcher, error) {
	if cfg.SMTPAddr == "" {
		cfg.SMTPAddr = "127.0.0.1:1025"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:8025"
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 1000
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 50 << 20
	}
	c := &Catcher{cfg: cfg, log: log}
	var err error
	if c.smtpLn, err = net.Listen("tcp", cfg.SMTPAddr); err != nil {
		return nil, fmt.Errorf("listen for catcher smtp on %s: %w", cfg.SMTPAddr, err)
	}
	if c.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		c.smtpLn.Close()
		return nil, fmt.Errorf("listen for catcher web on %s: %w", cfg.HTTPAddr, err)
	}
	c.smtp = smtp.NewServer(backend{c})
	c.smtp.Domain = "catcher.mailbus.local"
	c.smtp.MaxMessageBytes = cfg.MaxMessageBytes
	c.smtp.MaxRecipients = 1000
	c.smtp.ReadTimeout = time.Minute
	c.smtp.WriteTimeout = time.Minute
	c.smtp.EnableSMTPUTF8 = true
	c.http = &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return c, nil
}

// SMTPAddr is the address the SMTP server listens on.
func (c *Catcher) SMTPAddr() string { return c.smtpLn.Addr().String() }

// HTTPAddr is the address the web page listens on.
func (c *Catcher) HTTPAddr() string { return c.httpLn.Addr().String() }

// Run serves SMTP and HTTP until ctx ends.
func (c *Catcher) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- c.smtp.Serve(c.smtpLn) }()
	go func() { errc <- c.http.Serve(c.httpLn) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, http.ErrServerClosed) {
			c.shutdown()
			return fmt.Errorf("mail catcher: %w", err)
		}
	}
	c.shutdown()
	return nil
}

func (c *Catcher) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = c.smtp.Shutdown(sctx)
	_ = c.http.Shutdown(sctx)
}

// Messages returns what was received, newest first.
func (c *Catcher) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Message, len(c.msgs))
	for i := range c.msgs {
		out[len(c.msgs)-1-i] = c.msgs[i]
	}
	return out
}

// Message returns one message by id.
func (c *Catcher) Message(id int64) (Message, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.msgs {
		if m.ID == id {
			return m, true
		}
	}
	return Message{}, false
}

func (c *Catcher) add(from string, to []string, raw []byte) {
	m := Message{ID: c.next.Add(1), Received: time.Now().UTC(), From: from, To: to, Raw: raw, Size: len(raw)}
	hdrEnd := bytes.Index(raw, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		hdrEnd = len(raw)
	}
	m.Header = string(raw[:hdrEnd])
	if pm, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		dec := new(mimeWordDecoder)
		m.Subject = dec.decode(pm.Header.Get("Subject"))
	}
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	if len(c.msgs) > c.cfg.Keep {
		c.msgs = c.msgs[len(c.msgs)-c.cfg.Keep:]
	}
	c.mu.Unlock()
	c.log.Debug("mail catcher received a message", "id", m.ID, "from", from, "to", to, "size", m.Size)
}

type backend struct{ c *Catcher }

func (b backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{c: b.c}, nil }

type session struct {
	c    *Catcher
	from string
	to   []string
}

func (s *session) AuthMechanisms() []string { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}
func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read message data: %w", err)
	}
	s.c.add(s.from, append([]string(nil), s.to...), raw)
	return nil
}
func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
