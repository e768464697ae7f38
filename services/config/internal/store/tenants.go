package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

const tenantColumns = `id, name, time_zone, daily_limit, default_from, domain_alias, bounce_domain,
	max_relays_per_domain, max_domains, over_limit_policy, admin_emails,
	soft_bounce_threshold, soft_bounce_window_days, active, create_time, update_time`

func timestamp(us int64) *timestamppb.Timestamp { return timestamppb.New(time.UnixMicro(us)) }

type scanner interface{ Scan(dest ...any) error }

func scanTenant(row scanner) (*pb.Tenant, error) {
	var (
		t                  pb.Tenant
		maxRelays, maxDoms int32
		policy             int32
		emails             string
		created, updated   int64
	)
	err := row.Scan(&t.Id, &t.Name, &t.TimeZone, &t.DailyLimit, &t.DefaultFrom, &t.DomainAlias, &t.BounceDomain,
		&maxRelays, &maxDoms, &policy, &emails, &t.SoftBounceThreshold, &t.SoftBounceWindowDays, &t.Active,
		&created, &updated)
	if err != nil {
		return nil, err
	}
	t.Plan = &pb.PlanCaps{MaxRelaysPerDomain: maxRelays, MaxDomains: maxDoms}
	t.OverLimitPolicy = pb.OverLimitPolicy(policy)
	if t.AdminEmails, err = parseJSONList[string](emails); err != nil {
		return nil, err
	}
	t.CreateTime, t.UpdateTime = timestamp(created), timestamp(updated)
	return &t, nil
}

func getTenant(ctx context.Context, q sqlstore.Querier, id string) (*pb.Tenant, error) {
	t, err := scanTenant(q.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("tenant", id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading tenant %q: %w", id, err)
	}
	return t, nil
}

// GetTenant returns a tenant.
func (s *Store) GetTenant(ctx context.Context, id string) (*pb.Tenant, error) {
	return getTenant(ctx, s.db, id)
}

// ListTenants returns a page of tenants ordered by id, and the After value
// of the next page ("" at the end).
func (s *Store) ListTenants(ctx context.Context, page Page) ([]*pb.Tenant, string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id > ? ORDER BY id LIMIT ?`, page.After, page.Limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("listing tenants: %w", err)
	}
	defer rows.Close()
	var out []*pb.Tenant
	for rows.Next() {
		t, err := scanTenant(rows)
		if err != nil {
			return nil, "", fmt.Errorf("listing tenants: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("listing tenants: %w", err)
	}
	items, next := pageOf(out, page.Limit, func(t *pb.Tenant) string { return t.Id })
	return items, next, nil
}

func tenantArgs(t *pb.Tenant) []any {
	plan := t.GetPlan()
	return []any{t.Name, t.TimeZone, t.DailyLimit, t.DefaultFrom, t.DomainAlias, t.BounceDomain,
		plan.GetMaxRelaysPerDomain(), plan.GetMaxDomains(), int32(t.OverLimitPolicy), jsonList(t.AdminEmails),
		t.SoftBounceThreshold, t.SoftBounceWindowDays, t.Active}
}

// CreateTenant stores a new tenant; t.Id must be set.
func (s *Store) CreateTenant(ctx context.Context, t *pb.Tenant) (*pb.Tenant, error) {
	var out *pb.Tenant
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		if _, err := getTenant(ctx, w.tx, t.Id); err == nil {
			return &ConflictError{Field: "tenant.id", Reason: fmt.Sprintf("tenant %q already exists", t.Id)}
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		args := append([]any{t.Id}, tenantArgs(t)...)
		args = append(args, micros(w.now), micros(w.now))
		if _, err := w.tx.ExecContext(ctx, `INSERT INTO tenants (`+tenantColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
			return fmt.Errorf("creating tenant: %w", err)
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_TENANT, t.Id, t.Id, false); err != nil {
			return err
		}
		var err error
		out, err = getTenant(ctx, w.tx, t.Id)
		return err
	})
	return out, err
}

// UpdateTenant replaces a tenant's fields. When nothing differs it writes
// nothing and records no change.
func (s *Store) UpdateTenant(ctx context.Context, t *pb.Tenant) (*pb.Tenant, error) {
	var out *pb.Tenant
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getTenant(ctx, w.tx, t.Id)
		if err != nil {
			return err
		}
		if sameTenant(old, t) {
			out = old
			return nil
		}
		args := append(tenantArgs(t), micros(w.now), t.Id)
		_, err = w.tx.ExecContext(ctx, `UPDATE tenants SET name = ?, time_zone = ?, daily_limit = ?, default_from = ?,
			domain_alias = ?, bounce_domain = ?, max_relays_per_domain = ?, max_domains = ?, over_limit_policy = ?,
			admin_emails = ?, soft_bounce_threshold = ?, soft_bounce_window_days = ?, active = ?, update_time = ?
			WHERE id = ?`, args...)
		if err != nil {
			return fmt.Errorf("updating tenant: %w", err)
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_TENANT, t.Id, t.Id, false); err != nil {
			return err
		}
		out, err = getTenant(ctx, w.tx, t.Id)
		return err
	})
	return out, err
}

func sameTenant(stored, update *pb.Tenant) bool {
	a, b := proto.Clone(stored).(*pb.Tenant), proto.Clone(update).(*pb.Tenant)
	a.CreateTime, a.UpdateTime, b.CreateTime, b.UpdateTime = nil, nil, nil, nil
	if b.Plan == nil {
		b.Plan = &pb.PlanCaps{}
	}
	return proto.Equal(a, b)
}

// DeleteTenant deletes a tenant with its domains, keys and relays,
// recording a change for each.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	return s.write(ctx, func(ctx context.Context, w *writer) error {
		if _, err := getTenant(ctx, w.tx, id); err != nil {
			return err
		}
		relayIDs, err := queryStrings(ctx, w.tx, `SELECT id FROM relays WHERE tenant_id = ? ORDER BY id`, id)
		if err != nil {
			return err
		}
		for _, r := range relayIDs {
			if err := w.deleteRelay(ctx, r, id); err != nil {
				return err
			}
		}
		domainIDs, err := queryStrings(ctx, w.tx, `SELECT id FROM domains WHERE tenant_id = ? ORDER BY id`, id)
		if err != nil {
			return err
		}
		for _, d := range domainIDs {
			if err := w.deleteDomain(ctx, d, id); err != nil {
				return err
			}
		}
		if _, err := w.tx.ExecContext(ctx, `DELETE FROM tenants WHERE id = ?`, id); err != nil {
			return fmt.Errorf("deleting tenant: %w", err)
		}
		return w.change(ctx, pb.ChangeKind_CHANGE_KIND_TENANT, id, id, true)
	})
}

func queryStrings(ctx context.Context, q sqlstore.Querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("querying: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("querying: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// planCaps returns a tenant's effective caps.
func planCaps(t *pb.Tenant) (maxRelaysPerDomain, maxDomains int) {
	maxRelaysPerDomain, maxDomains = DefaultMaxRelaysPerDomain, DefaultMaxDomains
	if n := t.GetPlan().GetMaxRelaysPerDomain(); n > 0 {
		maxRelaysPerDomain = int(n)
	}
	if n := t.GetPlan().GetMaxDomains(); n > 0 {
		maxDomains = int(n)
	}
	return maxRelaysPerDomain, maxDomains
}
