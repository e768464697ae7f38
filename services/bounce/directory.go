package bounce

import (
	"context"
	"fmt"
	"strings"
	"sync"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// Directory finds the tenant a bounce domain belongs to.
type Directory interface {
	// BounceTenants returns the tenants whose bounce_domain is domain
	// (lower case, no trailing dot).
	BounceTenants(ctx context.Context, domain string) ([]*mailbusv1.Tenant, error)
}

// TenantIndex is a Directory over the config service. The configuration
// cache (pkg/configclient) looks tenants up by id only, so the index lists
// the tenants itself, again whenever the cache's revision moves: bounces are
// rare next to submissions, and a listing per configuration change is
// cheap. (A TenantsByBounceDomain in configclient would make this
// unnecessary.)
type TenantIndex struct {
	rpc      mailbusv1.ConfigServiceClient
	revision func() int64

	mu       sync.Mutex
	at       int64
	loaded   bool
	byDomain map[string][]*mailbusv1.Tenant
}

// NewTenantIndex returns an index that lists tenants with rpc (a caller
// that may read all tenants: the pipeline role) and reloads when revision
// (the configuration cache's Revision) changes.
func NewTenantIndex(rpc mailbusv1.ConfigServiceClient, revision func() int64) *TenantIndex {
	return &TenantIndex{rpc: rpc, revision: revision}
}

// BounceTenants implements Directory.
func (x *TenantIndex) BounceTenants(ctx context.Context, domain string) ([]*mailbusv1.Tenant, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	rev := x.revision()
	if !x.loaded || rev != x.at {
		idx, err := x.load(ctx)
		if err != nil {
			return nil, err
		}
		x.byDomain, x.at, x.loaded = idx, rev, true
	}
	return x.byDomain[normalizeDomain(domain)], nil
}

func (x *TenantIndex) load(ctx context.Context) (map[string][]*mailbusv1.Tenant, error) {
	idx := map[string][]*mailbusv1.Tenant{}
	token := ""
	for {
		resp, err := x.rpc.ListTenants(ctx, &mailbusv1.ListTenantsRequest{PageSize: 500, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list tenants for their bounce domains: %w", err)
		}
		for _, t := range resp.GetTenants() {
			if d := normalizeDomain(t.GetBounceDomain()); d != "" {
				idx[d] = append(idx[d], t)
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return idx, nil
		}
	}
}

func normalizeDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}
