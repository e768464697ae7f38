// Package signer is the DKIM stage of mailbus: it consumes admitted
// deliveries from mail.admitted, signs each with the keys of its route's
// DKIM domain (the From domain, or the alias domain after a From rewrite;
// RSA and Ed25519 both when the domain has both), and publishes it to
// mail.signed with the signatures beside the message. Signing lives in
// internal/dkim.
package signer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/signer/internal/dkim"
)

// Config configures the signer.
type Config struct {
	Bus bus.Config
}

// Keys is the source of DKIM keys: the configuration cache.
type Keys interface {
	DKIMKeys(domain string) []configclient.SigningKey
	// Revision changes whenever the configuration does, which is when
	// cached signers must be rebuilt.
	Revision() int64
}

// Deps are the signer's collaborators.
type Deps struct {
	Log     *slog.Logger
	Metrics prometheus.Registerer
	Keys    Keys
	// Redis holds the cancel markers (pkg/cancelled); nil leaves the
	// check to quota and the sender.
	Redis redis.UniversalClient
}

// Service is the signer.
type Service struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	pub    message.Publisher
	signed *prometheus.CounterVec

	mu      sync.Mutex
	rev     int64
	signers map[string]*dkim.Signer // domain → signer; nil = no keys
}

// New builds the signer.
func New(cfg Config, deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg: cfg, deps: deps, log: deps.Log.With("service", "signer"), signers: map[string]*dkim.Signer{},
		signed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mailbus", Subsystem: "signer", Name: "deliveries_total",
			Help: "Deliveries handled, by result (signed, unsigned, cancelled).",
		}, []string{"result"}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.signed)
	}
	return s
}

// Run consumes until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	r, err := bus.NewRouter(s.cfg.Bus, "signer", s.log)
	if err != nil {
		return err
	}
	s.pub = r.Publisher()
	// A signed delivery too large for mail.signed fails with a status
	// instead of going round to the poison topic.
	h := events.FailTooLarge(s.pub, events.StageSigner, nil, s.handle)
	if err := r.Handle("sign", bus.TopicAdmitted, bus.Handle(h)); err != nil {
		return err
	}
	return r.Run(ctx)
}

// signer returns the cached signer of a domain, rebuilding the cache when
// the configuration changed (a key was added, rotated or removed).
func (s *Service) signer(domain string) (*dkim.Signer, error) {
	domain = strings.ToLower(domain)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev := s.deps.Keys.Revision(); rev != s.rev {
		s.rev, s.signers = rev, map[string]*dkim.Signer{}
	}
	if sg, ok := s.signers[domain]; ok {
		return sg, nil
	}
	var keys []dkim.Key
	for _, k := range s.deps.Keys.DKIMKeys(domain) {
		keys = append(keys, dkim.Key{Domain: k.Domain, Selector: k.Selector, Signer: k.Signer})
	}
	var sg *dkim.Signer
	if len(keys) > 0 {
		var err error
		if sg, err = dkim.NewSigner(keys); err != nil {
			return nil, fmt.Errorf("prepare DKIM keys of %s: %w", domain, err)
		}
	}
	s.signers[domain] = sg
	return sg, nil
}

// handle signs a delivery. Signing is a pure function of the message and
// the keys, so a redelivered record is signed again to the same effect.
func (s *Service) handle(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
	if s.deps.Redis != nil {
		if stop, err := cancelled.Is(ctx, s.deps.Redis, d); err != nil {
			return err
		} else if stop {
			s.signed.WithLabelValues("cancelled").Inc()
			return bus.Publish(s.pub, bus.TopicEvents, cancelled.Event(d, events.StageSigner, time.Now()), bus.MetaFrom(msg))
		}
	}
	domain := d.GetRoute().GetDkimDomain()
	sg, err := s.signer(domain)
	if err != nil {
		// A broken key is an operator's problem; mail goes out unsigned
		// rather than stuck, and the log says why.
		s.log.Error("cannot sign, sending unsigned", "domain", domain, "err", err)
	}
	d.DkimSignature = nil
	if sg != nil {
		sig, err := sg.Signatures(d.GetMessage())
		if err != nil {
			return bus.Permanent(fmt.Errorf("sign delivery %s for %s: %w", d.GetDeliveryId(), domain, err))
		}
		d.DkimSignature = sig
		s.signed.WithLabelValues("signed").Inc()
	} else {
		s.signed.WithLabelValues("unsigned").Inc()
	}
	return bus.Publish(s.pub, bus.TopicSigned, d, bus.MetaFrom(msg))
}
