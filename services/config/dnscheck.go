package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/events"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/services/config/internal/dnscheck"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

// ReasonDomainDNSError is the warning of the event the periodic DNS check
// publishes when a record that was right goes missing or wrong.
const ReasonDomainDNSError = "domain_dns_error"

// CheckDomain runs the DNS check of one domain; a tenant's roles may check
// their own domains, as they may read them (GetDomain).
func (s *server) CheckDomain(ctx context.Context, req *pb.CheckDomainRequest) (*pb.CheckDomainResponse, error) {
	if _, err := identity(ctx); err != nil {
		return nil, err
	}
	id := req.GetDomainId()
	if id == "" && req.GetName() != "" {
		var err error
		if id, err = s.store.DomainIDByName(ctx, strings.TrimSuffix(strings.ToLower(strings.TrimSpace(req.GetName())), ".")); err != nil {
			return nil, s.fail(ctx, err)
		}
	}
	d, err := s.domainFor(ctx, id, false)
	if err != nil {
		return nil, err
	}
	res, err := s.checkDomain(ctx, d)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.CheckDomainResponse{Domain: d.GetName(), Items: res.Items, CheckTime: timestamppb.Now()}, nil
}

// checkDomain gathers what decides d's mail path — its tenant, the
// tenant's relays, the default server, the alias domain — and checks it.
func (s *server) checkDomain(ctx context.Context, d *pb.Domain) (dnscheck.Result, error) {
	t, err := s.store.GetTenant(ctx, d.GetTenantId())
	if err != nil {
		return dnscheck.Result{}, err
	}
	var relays []*pb.Relay
	for p := (store.Page{Limit: 500}); ; {
		page, next, err := s.store.ListRelays(ctx, t.GetId(), p)
		if err != nil {
			return dnscheck.Result{}, err
		}
		relays = append(relays, page...)
		if next == "" {
			break
		}
		p.After = next
	}
	ds, err := s.store.GetDefaultServer(ctx)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return dnscheck.Result{}, err
	}
	in := dnscheck.Input{Domain: d, Tenant: t, Relays: relays, Default: ds}
	if alias := strings.ToLower(t.GetDomainAlias()); alias != "" && alias != d.GetName() {
		if id, err := s.store.DomainIDByName(ctx, alias); err == nil {
			if a, err := s.store.GetDomain(ctx, id); err == nil && a.GetTenantId() == t.GetId() {
				in.Alias = a
			}
		}
	}
	return s.checker.Check(ctx, in), nil
}

// dnsMonitor is the periodic DNS check. It lives in the config service
// because the config service owns everything the check reads (domains,
// keys, relays, the default server) and runs the same check as
// CheckDomain; it only needed a publisher for the events.
//
// It remembers each item's last status in memory: the first round after a
// start is the baseline, and an item that was never right does not warn
// (the tenant is still setting up; CheckDomain tells them what to publish).
// Replicas each check, but an event's id is derived from the domain, the
// item and the check period, so the tracker and webhook receivers see one.
type dnsMonitor struct {
	srv      *server
	pub      message.Publisher
	interval time.Duration
	log      *slog.Logger
	now      func() time.Time

	mu   sync.Mutex
	prev map[string]map[string]pb.DnsCheckStatus // domain id -> item key -> status
}

func (m *dnsMonitor) run(ctx context.Context, stopping <-chan struct{}) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-stopping:
			return
		case <-t.C:
		}
	}
}

// round checks every domain once.
func (m *dnsMonitor) round(ctx context.Context) {
	seen := map[string]bool{}
	for p := (store.Page{Limit: 200}); ; {
		domains, next, err := m.srv.store.ListDomains(ctx, "", p)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.log.ErrorContext(ctx, "periodic DNS check: listing domains", "err", err)
			return
		}
		for _, d := range domains {
			seen[d.GetId()] = true
			res, err := m.srv.checkDomain(ctx, d)
			if ctx.Err() != nil {
				return // shutting down; the round's results are partial
			}
			if err != nil {
				m.log.WarnContext(ctx, "periodic DNS check", "domain", d.GetName(), "err", err)
				continue
			}
			m.compare(ctx, d, res)
		}
		if next == "" {
			break
		}
		p.After = next
	}
	m.mu.Lock()
	for id := range m.prev {
		if !seen[id] {
			delete(m.prev, id) // deleted domains
		}
	}
	m.mu.Unlock()
}

// compare publishes domain_dns_error for each item that was found last
// time and is missing or wrong now, and remembers the new statuses. An
// item that is right again counts as right from then on, so a record that
// breaks twice warns twice. An item a failed lookup decided keeps its last
// status: a resolver's bad minute is not the tenant's broken record.
func (m *dnsMonitor) compare(ctx context.Context, d *pb.Domain, res dnscheck.Result) {
	m.mu.Lock()
	prev := m.prev[d.GetId()]
	cur := make(map[string]pb.DnsCheckStatus, len(res.Items))
	for _, it := range res.Items {
		key := dnscheck.Key(it)
		cur[key] = it.GetStatus()
		if res.Inconclusive[key] {
			if st, ok := prev[key]; ok {
				cur[key] = st
			} else {
				delete(cur, key)
			}
		}
	}
	m.prev[d.GetId()] = cur
	m.mu.Unlock()

	now := m.now()
	for _, it := range res.Items {
		key := dnscheck.Key(it)
		if res.Inconclusive[key] || prev[key] != pb.DnsCheckStatus_DNS_CHECK_STATUS_FOUND || it.GetStatus() == pb.DnsCheckStatus_DNS_CHECK_STATUS_FOUND {
			continue
		}
		status := strings.ToLower(strings.TrimPrefix(it.GetStatus().String(), "DNS_CHECK_STATUS_"))
		ev := &pb.DeliveryEvent{
			TenantId: d.GetTenantId(), Stage: events.StageConfig, Reason: ReasonDomainDNSError, Warning: ReasonDomainDNSError,
			Detail:    fmt.Sprintf("%s: %s %s was right and is now %s: %s", d.GetName(), it.GetKind(), it.GetName(), status, it.GetDetail()),
			OccurTime: timestamppb.New(now),
			Attributes: map[string]string{
				"domain": d.GetName(), "domain_id": d.GetId(), "kind": it.GetKind(), "name": it.GetName(),
				"status": status, "publish": it.GetPublish(),
			},
		}
		period := now.Truncate(m.interval).UTC().Format(time.RFC3339)
		ev.EventId = ids.EventID("domain:"+d.GetId(), events.StageConfig, ReasonDomainDNSError, 0, key, period)
		if err := bus.Publish(m.pub, bus.TopicEvents, ev, nil); err != nil {
			m.log.ErrorContext(ctx, "publishing domain_dns_error", "domain", d.GetName(), "item", key, "err", err)
			continue
		}
		m.log.WarnContext(ctx, "a DNS record went wrong", "domain", d.GetName(), "item", key, "status", status, "detail", it.GetDetail())
	}
}
