// Package bounce is the bounce stage of mailbus. It receives the mail that
// comes back to the tenants' VERP return paths (and to configured
// feedback-loop addresses) over SMTP, reads it with pkg/bounce, matches
// every record to the message and recipient it is about, publishes the
// outcome to mail.events (bounced, hard or soft, or complained), and keeps
// each tenant's suppression list (pkg/suppress): hard bounces and
// complaints suppress the address at once, soft bounces once the tenant's
// threshold is reached within its window. The same rule applies to the
// refusals the sender met itself at RCPT or DATA, which no DSN follows: the
// service reads the sender's bounced events from mail.events (RunSync). It
// also serves SuppressionService (see NewSuppressionServer).
//
// The listener never relays. It accepts RCPT only for well-formed VERP
// addresses whose MAC verifies for a tenant that owns the address's bounce
// domain (the MAC covers the tenant of the delivery, so one tenant's
// return path is refused at another tenant's bounce domain), and for the
// configured feedback-loop addresses; everything else is refused with 550
// 5.1.1 before any data is sent, so forged or stale addresses cost nothing
// and nobody can make mailbus suppress an address by sending it mail, or
// one tenant's bounce land on another tenant's suppression list.
//
// Connections are limited where they are accepted, before the greeting (in
// all, per address, and new ones per address per minute; see Config): a
// connection over a limit is told 421 and closed, and a session idle for
// longer than IdleTimeout is closed with 421.
package bounce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/suppress"
)

// Config configures the bounce service.
type Config struct {
	Bus bus.Config
	// Addr is the SMTP listen address; default 127.0.0.1:2525.
	Addr string
	// Hostname is the name in the greeting; default "mailbus-bounce".
	Hostname string
	// VERPKeys verify VERP addresses: the router's current key first, then
	// retired keys whose mail may still bounce.
	VERPKeys [][]byte
	// FeedbackAddresses maps feedback-loop addresses (where providers send
	// ARF complaint reports) to the tenant they belong to.
	FeedbackAddresses map[string]string
	// MaxMessageBytes bounds one message; default 10 MiB (a bounce may
	// return the whole original).
	MaxMessageBytes int64
	// MaxRecipients bounds one transaction; default 20.
	MaxRecipients int
	// MaxConns bounds concurrent connections in all; default 100. A
	// connection over a limit is told 421 and closed before the greeting.
	MaxConns int
	// MaxConnsPerIP bounds concurrent connections from one address (an
	// IPv6 /64); default 10.
	MaxConnsPerIP int
	// ConnsPerMinute bounds new connections from one address per minute;
	// default 120.
	ConnsPerMinute int
	// MessagesPerConn bounds the messages of one connection; default 100.
	MessagesPerConn int
	// IdleTimeout is how long the listener waits for the client's next
	// command before it closes the session with 421; default 5 minutes,
	// as Postfix's smtpd_timeout. go-smtp arms it at each command line, so
	// it also bounds the transfer of a whole message after DATA.
	IdleTimeout time.Duration
	// Timeout bounds each write to the client and the processing of one
	// message; default 2 minutes.
	Timeout time.Duration
	// UnsubscribeAddr is where the one-click unsubscribe links are served
	// over HTTP (behind the deployment's TLS terminator, whose https://
	// address is the router's MAILBUS_UNSUBSCRIBE_URL); empty serves none.
	UnsubscribeAddr string
	// Mailboxes are tenants' own bounce mailboxes that NewApplication
	// polls over IMAP, for return paths that are not VERP addresses on a
	// bounce domain.
	Mailboxes []Mailbox
}

func (c Config) withDefaults() Config {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:2525"
	}
	if c.Hostname == "" {
		c.Hostname = "mailbus-bounce"
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 10 << 20
	}
	if c.MaxRecipients <= 0 {
		c.MaxRecipients = 20
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 100
	}
	if c.MaxConnsPerIP <= 0 {
		c.MaxConnsPerIP = 10
	}
	if c.ConnsPerMinute <= 0 {
		c.ConnsPerMinute = 120
	}
	if c.MessagesPerConn <= 0 {
		c.MessagesPerConn = 100
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	return c
}

// LimitsFromEnv sets the listener's connection limits and idle timeout
// from the variables that the bounce command and mailbus dev document
// (MAILBUS_BOUNCE_MAX_CONNS, MAILBUS_BOUNCE_MAX_CONNS_PER_IP,
// MAILBUS_BOUNCE_CONNS_PER_MINUTE, MAILBUS_BOUNCE_IDLE_TIMEOUT), read with
// getenv; unset ones keep the defaults.
func LimitsFromEnv(c *Config, getenv func(string) string) error {
	for _, v := range []struct {
		env string
		to  *int
	}{
		{"MAILBUS_BOUNCE_MAX_CONNS", &c.MaxConns},
		{"MAILBUS_BOUNCE_MAX_CONNS_PER_IP", &c.MaxConnsPerIP},
		{"MAILBUS_BOUNCE_CONNS_PER_MINUTE", &c.ConnsPerMinute},
	} {
		s := getenv(v.env)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("%s: want a positive number, got %q", v.env, s)
		}
		*v.to = n
	}
	if s := getenv("MAILBUS_BOUNCE_IDLE_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return fmt.Errorf("MAILBUS_BOUNCE_IDLE_TIMEOUT: want a positive duration such as 5m, got %q", s)
		}
		c.IdleTimeout = d
	}
	return nil
}

// Suppressions is where hard bounces, complaints and soft bounces go
// (pkg/suppress.Store).
type Suppressions interface {
	Add(ctx context.Context, tenantID string, e suppress.Entry) (suppress.Entry, error)
	SoftBounce(ctx context.Context, tenantID, addr, id, reason string, rule suppress.SoftRule, at time.Time) (int, bool, error)
}

// Tenants looks tenants up by id (pkg/configclient).
type Tenants interface {
	Tenant(id string) (*mailbusv1.Tenant, bool)
}

// Deps are the service's collaborators.
type Deps struct {
	Log *slog.Logger
	// Metrics registers the service's metrics; nil means none.
	Metrics prometheus.Registerer
	// Directory maps bounce domains to tenants.
	Directory Directory
	// Tenants resolves the tenants of feedback-loop addresses.
	Tenants Tenants
	// Suppressions may be nil: then nothing is suppressed.
	Suppressions Suppressions
	// Redis keeps the tenants' complaint counters (pkg/complaints), which
	// the quota stage pauses mass mail by; nil counts none.
	Redis redis.UniversalClient
	// Publisher publishes to mail.events; nil makes one from Config.Bus.
	Publisher message.Publisher
	Now       func() time.Time
}

// Service is the bounce service.
type Service struct {
	cfg     Config
	log     *slog.Logger
	dir     Directory
	tenants Tenants
	supp    Suppressions
	rdb     redis.UniversalClient
	pub     message.Publisher
	ownPub  bool
	now     func() time.Time
	limiter *connLimiter
	metrics metrics

	mu       sync.Mutex
	lis      net.Listener
	unsubLis net.Listener
}

type metrics struct {
	messages   *prometheus.CounterVec
	records    *prometheus.CounterVec
	rcpts      *prometheus.CounterVec
	suppressed *prometheus.CounterVec
	complaints prometheus.Counter
	refused    *prometheus.CounterVec
	open       prometheus.GaugeFunc
}

// New builds the service; Listen or Run opens the SMTP port.
func New(cfg Config, deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	cfg = cfg.withDefaults()
	s := &Service{
		cfg: cfg, log: deps.Log.With("service", "bounce"), dir: deps.Directory, tenants: deps.Tenants,
		supp: deps.Suppressions, rdb: deps.Redis, pub: deps.Publisher, now: deps.Now,
		limiter: newConnLimiter(cfg.MaxConns, cfg.MaxConnsPerIP, cfg.ConnsPerMinute, deps.Now),
		metrics: metrics{
			messages: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "messages_total",
				Help: "Messages received on the bounce listener, by what they were (bounce, not_a_bounce, parse_error).",
			}, []string{"kind"}),
			records: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "records_total",
				Help: "Bounce records, by outcome (hard, soft, delayed, complaint, ignored, unmatched).",
			}, []string{"outcome"}),
			rcpts: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "rcpt_total",
				Help: "RCPT commands, by verdict (verp, feedback, refused, forged: a VERP address that does not verify for the tenant of its bounce domain).",
			}, []string{"verdict"}),
			suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "suppressed_total",
				Help: "Addresses put on a suppression list, by source.",
			}, []string{"source"}),
			complaints: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "complaints_counted_total",
				Help: "Complaints counted towards their tenant's complaint rate (each message and recipient once a day).",
			}),
			refused: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "mailbus", Subsystem: "bounce", Name: "connections_refused_total",
				Help: "Connections refused with 421 before the greeting, by limit (total, per_address, rate).",
			}, []string{"limit"}),
		},
	}
	s.metrics.open = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mailbus", Subsystem: "bounce", Name: "connections_open",
		Help: "Connections open on the bounce listener.",
	}, func() float64 { return float64(s.limiter.open()) })
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.metrics.messages, s.metrics.records, s.metrics.rcpts, s.metrics.suppressed,
			s.metrics.complaints, s.metrics.refused, s.metrics.open)
	}
	return s
}

// Listen opens the SMTP port and returns its address, so that a caller
// that asked for port 0 learns which one it got. Run calls it when it has
// not been called.
func (s *Service) Listen() (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lis != nil {
		return s.lis.Addr(), nil
	}
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("bounce: listen for SMTP on %s: %w", s.cfg.Addr, err)
	}
	s.lis = &limitListener{Listener: lis, lim: s.limiter, refuse: s.refuseConn}
	return lis.Addr(), nil
}

// ListenUnsubscribe opens the unsubscribe HTTP port (Config.UnsubscribeAddr)
// and returns its address; Run calls it when it has not been called.
func (s *Service) ListenUnsubscribe() (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsubLis != nil {
		return s.unsubLis.Addr(), nil
	}
	lis, err := net.Listen("tcp", s.cfg.UnsubscribeAddr)
	if err != nil {
		return nil, fmt.Errorf("bounce: listen for unsubscribe links on %s: %w", s.cfg.UnsubscribeAddr, err)
	}
	s.unsubLis = lis
	return lis.Addr(), nil
}

// refuseConn tells a connection over a limit to come back later, as
// Postfix does, and closes it.
func (s *Service) refuseConn(c net.Conn, addr, limit string, first bool) {
	s.metrics.refused.WithLabelValues(limit).Inc()
	if first {
		s.log.Warn("refusing connections over a limit (logged once a minute per address)", "addr", addr, "limit", limit)
	}
	_ = c.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
	_, _ = io.WriteString(c, "421 4.7.0 "+s.cfg.Hostname+" too many connections, try again later\r\n")
	_ = c.Close()
}

// Run serves SMTP until ctx is cancelled, then stops accepting and waits
// (briefly) for transactions in progress.
func (s *Service) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	if s.pub == nil {
		pub, err := bus.NewPublisher(s.cfg.Bus, s.log)
		if err != nil {
			_ = s.lis.Close()
			return err
		}
		s.pub, s.ownPub = pub, true
	}
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = s.cfg.Hostname
	srv.MaxMessageBytes = s.cfg.MaxMessageBytes
	srv.MaxRecipients = s.cfg.MaxRecipients
	srv.ReadTimeout, srv.WriteTimeout = s.cfg.IdleTimeout, s.cfg.Timeout
	srv.ErrorLog = slogAdapter{s.log}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(s.lis) }()
	s.log.InfoContext(ctx, "bounce listener serving", "addr", s.lis.Addr().String())
	var web *http.Server
	if s.cfg.UnsubscribeAddr != "" {
		if _, err := s.ListenUnsubscribe(); err != nil {
			_ = srv.Close()
			return err
		}
		s.mu.Lock()
		lis := s.unsubLis
		s.mu.Unlock()
		mux := http.NewServeMux()
		mux.Handle("/unsubscribe/", s.UnsubscribeHandler())
		web = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
		go func() {
			if err := web.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve unsubscribe links: %w", err)
			}
		}()
		s.log.InfoContext(ctx, "unsubscribe links served", "addr", lis.Addr().String())
	}
	var err error
	select {
	case <-ctx.Done():
		shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if web != nil {
			_ = web.Shutdown(shCtx)
		}
		if serr := srv.Shutdown(shCtx); serr != nil {
			_ = srv.Close()
		}
		cancel()
		<-errc
	case err = <-errc:
		if errors.Is(err, smtp.ErrServerClosed) {
			err = nil
		}
	}
	if s.ownPub {
		_ = s.pub.Close()
	}
	if err != nil {
		return fmt.Errorf("bounce: serve SMTP: %w", err)
	}
	return nil
}

// publish sends one event to mail.events.
func (s *Service) publish(_ context.Context, ev *mailbusv1.DeliveryEvent) error {
	return bus.Publish(s.pub, bus.TopicEvents, ev, message.Metadata{})
}

// slogAdapter gives go-smtp's logger interface to slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.l.Warn(fmt.Sprint(v...)) }
