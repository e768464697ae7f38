// Package console is the administrators' web page: a server-rendered
// console over the same gRPC services every other client uses
// (ConfigService, MessageService, SuppressionService).
//
// The console holds no data and decides nothing about who may see what. A
// person signs in by pasting one of the project's API tokens; the console
// keeps it sealed (AES-GCM) in an HttpOnly, SameSite=Strict cookie and
// forwards it as the bearer token of every gRPC call it makes on that
// person's behalf. So the services' own authorization applies unchanged: a
// tenant administrator's token reads the tenant's configuration and
// messages, a user's token only the user's messages, and a page that asks
// for more shows the service's refusal. The generated gRPC clients are the
// one typed API; there is no second REST layer to keep in step with it.
//
// Pages are html/template with an embedded stylesheet, and the overview's
// charts are inline SVG drawn on the server: the console works without
// JavaScript, a CDN or the internet. Every form that changes something
// carries a CSRF token bound to the session.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Config configures the console.
type Config struct {
	// Addr is where the console listens, for example 127.0.0.1:8080.
	Addr string
	// SessionKey seals the session cookie and derives the CSRF tokens; 32
	// bytes. Empty generates one at start, which signs everyone out when
	// the process restarts (fine for one replica; give replicas one key).
	SessionKey []byte
	// SecureCookies marks the cookie Secure: set it when the console is
	// reached over HTTPS (behind an ingress), leave it off on loopback.
	SecureCookies bool
	// SessionTTL is how long a sign-in lasts; default 12 hours.
	SessionTTL time.Duration
	// ScanLimit bounds how many messages one page reads from the message
	// log to filter or chart; default 5000.
	ScanLimit int
}

// API is the typed gRPC API the console calls as the signed-in person.
type API struct {
	Config       mailbusv1.ConfigServiceClient
	Messages     mailbusv1.MessageServiceClient
	Suppressions mailbusv1.SuppressionServiceClient
	// Webhooks is nil when the console is given no WebhookService address;
	// the webhooks page says so.
	Webhooks mailbusv1.WebhookServiceClient
}

// NewAPI returns the API over connections to the three services; in
// `mailbus dev` one server serves all of them and the three are the same.
// The connections carry no credentials of their own: each call carries the
// signed-in person's token.
func NewAPI(configConn, messagesConn, suppressionsConn grpc.ClientConnInterface) API {
	return API{
		Config:       mailbusv1.NewConfigServiceClient(configConn),
		Messages:     mailbusv1.NewMessageServiceClient(messagesConn),
		Suppressions: mailbusv1.NewSuppressionServiceClient(suppressionsConn),
	}
}

// Deps are the console's collaborators.
type Deps struct {
	Log *slog.Logger
	API API
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service is the console.
type Service struct {
	cfg     Config
	log     *slog.Logger
	api     API
	now     func() time.Time
	sealer  *seal.Sealer
	csrfKey []byte
	pages   *pages
	lis     net.Listener
}

// New builds the console.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.ScanLimit <= 0 {
		cfg.ScanLimit = 5000
	}
	key := cfg.SessionKey
	if len(key) == 0 {
		k, err := seal.GenerateKey()
		if err != nil {
			return nil, fmt.Errorf("generate console session key: %w", err)
		}
		key = k
	}
	sealer, err := seal.New(map[byte][]byte{1: key}, 1)
	if err != nil {
		return nil, fmt.Errorf("console session key: %w", err)
	}
	p, err := loadPages()
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg: cfg, log: deps.Log.With("service", "console"), api: deps.API, now: deps.Now,
		sealer: sealer, csrfKey: deriveKey(key, "csrf"), pages: p,
	}, nil
}

// Listen binds the console's address, so that the caller knows it (a
// ":0" port) before Run; Run calls it when the caller did not.
func (s *Service) Listen() (net.Addr, error) {
	if s.lis != nil {
		return s.lis.Addr(), nil
	}
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen for the console on %s: %w", s.cfg.Addr, err)
	}
	s.lis = lis
	return lis.Addr(), nil
}

// Run serves the console until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve the console: %w", err)
	}
	return nil
}
