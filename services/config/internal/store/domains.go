package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

const domainColumns = `id, tenant_id, name, return_path_mode, custom_return_path, create_time, update_time`

// NewDKIMKey is a DKIM key to store.
type NewDKIMKey struct {
	// Selector is a valid, lower-case selector.
	Selector  string
	Algorithm pb.DkimAlgorithm
	// PrivateKey is the PKCS#8 DER private key; it is sealed before storage.
	PrivateKey []byte
	// PublicKey is the p= value of the DNS record.
	PublicKey string
	Active    bool
}

// KeyUpdate is what UpdateDomain does to the key under Selector: store New
// (replacing an existing key when it differs), or, when New is nil, set the
// active flag of the stored key.
type KeyUpdate struct {
	Selector string
	Active   bool
	New      *NewDKIMKey
	// KeepExisting stores New only when there is no key under Selector yet;
	// otherwise only Active is applied. The seed's "generate: true" uses it
	// so that replicas seeding at once do not replace each other's keys.
	KeepExisting bool
}

func scanDomain(row scanner) (*pb.Domain, error) {
	var (
		d                pb.Domain
		mode             int32
		created, updated int64
	)
	if err := row.Scan(&d.Id, &d.TenantId, &d.Name, &mode, &d.CustomReturnPath, &created, &updated); err != nil {
		return nil, err
	}
	d.ReturnPathMode = pb.ReturnPathMode(mode)
	d.CreateTime, d.UpdateTime = timestamp(created), timestamp(updated)
	return &d, nil
}

// storedKey is a dkim_keys row.
type storedKey struct {
	domainID string
	key      *pb.DkimKey
	sealed   string
}

// loadKeys returns the keys of the given domains (all domains when ids is
// nil), ordered by selector.
func loadKeys(ctx context.Context, q sqlstore.Querier, domainNames map[string]string, ids []string) (map[string][]storedKey, error) {
	query := `SELECT domain_id, selector, algorithm, public_key, sealed_private_key, active, create_time FROM dkim_keys`
	var args []any
	if ids != nil {
		if len(ids) == 0 {
			return map[string][]storedKey{}, nil
		}
		query += ` WHERE domain_id IN (` + placeholders(len(ids)) + `)`
		for _, id := range ids {
			args = append(args, id)
		}
	}
	query += ` ORDER BY domain_id, selector`
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("reading DKIM keys: %w", err)
	}
	defer rows.Close()
	out := map[string][]storedKey{}
	for rows.Next() {
		var (
			k       storedKey
			key     pb.DkimKey
			alg     int32
			pub     string
			created int64
		)
		if err := rows.Scan(&k.domainID, &key.Selector, &alg, &pub, &k.sealed, &key.Active, &created); err != nil {
			return nil, fmt.Errorf("reading DKIM keys: %w", err)
		}
		key.Algorithm = pb.DkimAlgorithm(alg)
		key.DnsName = dkimkey.DNSName(key.Selector, domainNames[k.domainID])
		key.DnsTxtValue = dkimkey.TXTValue(key.Algorithm, pub)
		key.CreateTime = timestamp(created)
		k.key = &key
		out[k.domainID] = append(out[k.domainID], k)
	}
	return out, rows.Err()
}

func placeholders(n int) string {
	b := make([]byte, 0, 2*n)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '?')
	}
	return string(b)
}

// withKeys attaches the keys (without private parts) to domains.
func withKeys(ctx context.Context, q sqlstore.Querier, domains []*pb.Domain) error {
	names := make(map[string]string, len(domains))
	ids := make([]string, 0, len(domains))
	for _, d := range domains {
		names[d.Id] = d.Name
		ids = append(ids, d.Id)
	}
	keys, err := loadKeys(ctx, q, names, ids)
	if err != nil {
		return err
	}
	for _, d := range domains {
		for _, k := range keys[d.Id] {
			d.DkimKeys = append(d.DkimKeys, k.key)
		}
	}
	return nil
}

func getDomain(ctx context.Context, q sqlstore.Querier, id string) (*pb.Domain, error) {
	d, err := scanDomain(q.QueryRowContext(ctx, `SELECT `+domainColumns+` FROM domains WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("domain", id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading domain %q: %w", id, err)
	}
	if err := withKeys(ctx, q, []*pb.Domain{d}); err != nil {
		return nil, err
	}
	return d, nil
}

// GetDomain returns a domain with its keys' public parts.
func (s *Store) GetDomain(ctx context.Context, id string) (*pb.Domain, error) {
	return getDomain(ctx, s.db, id)
}

// DomainIDByName returns the id of the domain with a name.
func (s *Store) DomainIDByName(ctx context.Context, name string) (string, error) {
	var id string
	err := s.db.QueryRowContext(ctx, `SELECT id FROM domains WHERE name = ?`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", notFound("domain", name)
	}
	if err != nil {
		return "", fmt.Errorf("reading domain %q: %w", name, err)
	}
	return id, nil
}

// ListDomains returns a page of domains ordered by id, of one tenant or of
// all tenants when tenantID is empty.
func (s *Store) ListDomains(ctx context.Context, tenantID string, page Page) ([]*pb.Domain, string, error) {
	query := `SELECT ` + domainColumns + ` FROM domains WHERE id > ?`
	args := []any{page.After}
	if tenantID != "" {
		query += ` AND tenant_id = ?`
		args = append(args, tenantID)
	}
	query += ` ORDER BY id LIMIT ?`
	args = append(args, page.Limit+1)
	out, err := queryDomains(ctx, s.db, query, args...)
	if err != nil {
		return nil, "", err
	}
	items, next := pageOf(out, page.Limit, func(d *pb.Domain) string { return d.Id })
	if err := withKeys(ctx, s.db, items); err != nil {
		return nil, "", err
	}
	return items, next, nil
}

func queryDomains(ctx context.Context, q sqlstore.Querier, query string, args ...any) ([]*pb.Domain, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	defer rows.Close()
	var out []*pb.Domain
	for rows.Next() {
		d, err := scanDomain(rows)
		if err != nil {
			return nil, fmt.Errorf("listing domains: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// CreateDomain stores a new domain with keys; d.Id must be set. d.DkimKeys
// is ignored.
func (s *Store) CreateDomain(ctx context.Context, d *pb.Domain, keys []NewDKIMKey) (*pb.Domain, error) {
	var out *pb.Domain
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		tenant, err := getTenant(ctx, w.tx, d.TenantId)
		if errors.Is(err, ErrNotFound) {
			return &FieldError{Field: "domain.tenant_id", Reason: fmt.Sprintf("unknown tenant %q", d.TenantId)}
		}
		if err != nil {
			return err
		}
		if err := w.checkNewDomain(ctx, d); err != nil {
			return err
		}
		_, maxDomains := planCaps(tenant)
		var n int
		if err := w.tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM domains WHERE tenant_id = ?`, d.TenantId).Scan(&n); err != nil {
			return fmt.Errorf("counting domains: %w", err)
		}
		if n >= maxDomains {
			return &PreconditionError{
				Type:    "PLAN_CAP",
				Subject: "tenant/" + d.TenantId,
				Description: fmt.Sprintf("tenant %q already has %d domains, the most its plan allows (plan.max_domains = %d); delete a domain or raise the cap",
					d.TenantId, n, maxDomains),
			}
		}
		_, err = w.tx.ExecContext(ctx, `INSERT INTO domains (`+domainColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			d.Id, d.TenantId, d.Name, int32(d.ReturnPathMode), d.CustomReturnPath, micros(w.now), micros(w.now))
		if err != nil {
			return fmt.Errorf("creating domain: %w", err)
		}
		for _, k := range keys {
			if err := w.insertKey(ctx, d.Id, d.Name, k); err != nil {
				return err
			}
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, d.Id, d.TenantId, false); err != nil {
			return err
		}
		out, err = getDomain(ctx, w.tx, d.Id)
		return err
	})
	return out, err
}

func (w *writer) checkNewDomain(ctx context.Context, d *pb.Domain) error {
	var owner string
	err := w.tx.QueryRowContext(ctx, `SELECT id FROM domains WHERE id = ?`, d.Id).Scan(&owner)
	if err == nil {
		return &ConflictError{Field: "domain.id", Reason: fmt.Sprintf("domain %q already exists", d.Id)}
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("checking domain id: %w", err)
	}
	err = w.tx.QueryRowContext(ctx, `SELECT tenant_id FROM domains WHERE name = ?`, d.Name).Scan(&owner)
	if err == nil {
		reason := fmt.Sprintf("domain %s already exists", d.Name)
		if owner != d.TenantId {
			reason = fmt.Sprintf("domain %s belongs to another tenant", d.Name)
		}
		return &ConflictError{Field: "domain.name", Reason: reason}
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("checking domain name: %w", err)
	}
	return nil
}

func (w *writer) insertKey(ctx context.Context, domainID, domainName string, k NewDKIMKey) error {
	sealed, err := w.s.sealer.Seal(k.PrivateKey, configclient.DKIMKeyAAD(domainName, k.Selector))
	if err != nil {
		return fmt.Errorf("sealing DKIM key: %w", err)
	}
	_, err = w.tx.ExecContext(ctx, `INSERT INTO dkim_keys (domain_id, selector, algorithm, public_key, sealed_private_key, active, create_time)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		domainID, k.Selector, int32(k.Algorithm), k.PublicKey, encode(sealed), k.Active, micros(w.now))
	if err != nil {
		return fmt.Errorf("storing DKIM key %s: %w", k.Selector, err)
	}
	return nil
}

// UpdateDomain replaces a domain's return path settings and applies key
// updates. The tenant and the name cannot change. When nothing differs it
// writes nothing and records no change.
func (s *Store) UpdateDomain(ctx context.Context, d *pb.Domain, keys []KeyUpdate) (*pb.Domain, error) {
	var out *pb.Domain
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getDomain(ctx, w.tx, d.Id)
		if err != nil {
			return err
		}
		if d.TenantId != old.TenantId {
			return &FieldError{Field: "domain.tenant_id", Reason: "cannot be changed; create the domain in the other tenant"}
		}
		if d.Name != old.Name {
			return &FieldError{Field: "domain.name", Reason: "cannot be changed because DNS records and keys are bound to it; create a new domain"}
		}
		changed := false
		if d.ReturnPathMode != old.ReturnPathMode || d.CustomReturnPath != old.CustomReturnPath {
			_, err := w.tx.ExecContext(ctx, `UPDATE domains SET return_path_mode = ?, custom_return_path = ? WHERE id = ?`,
				int32(d.ReturnPathMode), d.CustomReturnPath, d.Id)
			if err != nil {
				return fmt.Errorf("updating domain: %w", err)
			}
			changed = true
		}
		stored, err := loadKeys(ctx, w.tx, map[string]string{d.Id: d.Name}, []string{d.Id})
		if err != nil {
			return err
		}
		bySelector := map[string]storedKey{}
		for _, k := range stored[d.Id] {
			bySelector[k.key.Selector] = k
		}
		for i, u := range keys {
			k, exists := bySelector[u.Selector]
			c, err := w.applyKeyUpdate(ctx, d, i, u, k, exists)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		if changed {
			if _, err := w.tx.ExecContext(ctx, `UPDATE domains SET update_time = ? WHERE id = ?`, micros(w.now), d.Id); err != nil {
				return fmt.Errorf("updating domain: %w", err)
			}
			if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, d.Id, d.TenantId, false); err != nil {
				return err
			}
		}
		out, err = getDomain(ctx, w.tx, d.Id)
		return err
	})
	return out, err
}

func (w *writer) applyKeyUpdate(ctx context.Context, d *pb.Domain, i int, u KeyUpdate, k storedKey, exists bool) (bool, error) {
	if u.KeepExisting && exists {
		u.New = nil
	}
	if u.New == nil {
		if !exists {
			return false, &FieldError{
				Field:  fmt.Sprintf("domain.dkim_keys[%d].selector", i),
				Reason: fmt.Sprintf("no key under selector %q; give private_key_pem to import one or use GenerateDkimKey", u.Selector),
			}
		}
		if k.key.Active == u.Active {
			return false, nil
		}
		_, err := w.tx.ExecContext(ctx, `UPDATE dkim_keys SET active = ? WHERE domain_id = ? AND selector = ?`, u.Active, d.Id, u.Selector)
		if err != nil {
			return false, fmt.Errorf("updating DKIM key: %w", err)
		}
		return true, nil
	}
	if exists {
		same, err := w.s.sameKey(k, d.Name, u.New.PrivateKey)
		if err != nil {
			return false, err
		}
		if same && k.key.Active == u.New.Active {
			return false, nil
		}
		if _, err := w.tx.ExecContext(ctx, `DELETE FROM dkim_keys WHERE domain_id = ? AND selector = ?`, d.Id, u.Selector); err != nil {
			return false, fmt.Errorf("replacing DKIM key: %w", err)
		}
	}
	return true, w.insertKey(ctx, d.Id, d.Name, *u.New)
}

func (s *Store) sameKey(k storedKey, domain string, der []byte) (bool, error) {
	plain, err := s.sealer.Open(unbase64(k.sealed), configclient.DKIMKeyAAD(domain, k.key.Selector))
	if err != nil {
		return false, fmt.Errorf("opening stored DKIM key %s: %w", k.key.Selector, err)
	}
	return bytes.Equal(plain, der), nil
}

// PutDKIMKey adds a key to a domain. A key under the same selector is a
// ConflictError: replacing it would break the published DNS record.
func (s *Store) PutDKIMKey(ctx context.Context, domainID string, k NewDKIMKey) (*pb.DkimKey, error) {
	var out *pb.DkimKey
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		d, err := getDomain(ctx, w.tx, domainID)
		if err != nil {
			return err
		}
		for _, existing := range d.DkimKeys {
			if existing.Selector == k.Selector {
				return &ConflictError{Field: "selector", Reason: fmt.Sprintf(
					"domain %s already has a key under selector %q; delete it first or use a new selector", d.Name, k.Selector)}
			}
		}
		if err := w.insertKey(ctx, d.Id, d.Name, k); err != nil {
			return err
		}
		if _, err := w.tx.ExecContext(ctx, `UPDATE domains SET update_time = ? WHERE id = ?`, micros(w.now), d.Id); err != nil {
			return fmt.Errorf("updating domain: %w", err)
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, d.Id, d.TenantId, false); err != nil {
			return err
		}
		d, err = getDomain(ctx, w.tx, domainID)
		if err != nil {
			return err
		}
		for _, key := range d.DkimKeys {
			if key.Selector == k.Selector {
				out = key
			}
		}
		return nil
	})
	return out, err
}

// DeleteDKIMKey removes a domain's key under a selector.
func (s *Store) DeleteDKIMKey(ctx context.Context, domainID, selector string) error {
	return s.write(ctx, func(ctx context.Context, w *writer) error {
		d, err := getDomain(ctx, w.tx, domainID)
		if err != nil {
			return err
		}
		res, err := w.tx.ExecContext(ctx, `DELETE FROM dkim_keys WHERE domain_id = ? AND selector = ?`, domainID, selector)
		if err != nil {
			return fmt.Errorf("deleting DKIM key: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("DKIM key", d.Name+"/"+selector)
		}
		if _, err := w.tx.ExecContext(ctx, `UPDATE domains SET update_time = ? WHERE id = ?`, micros(w.now), d.Id); err != nil {
			return fmt.Errorf("updating domain: %w", err)
		}
		return w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, d.Id, d.TenantId, false)
	})
}

// DeleteDomain deletes a domain and its keys. A domain that relays still
// serve is a PreconditionError.
func (s *Store) DeleteDomain(ctx context.Context, id string) error {
	return s.write(ctx, func(ctx context.Context, w *writer) error {
		d, err := getDomain(ctx, w.tx, id)
		if err != nil {
			return err
		}
		relays, err := queryStrings(ctx, w.tx, `SELECT r.name FROM relay_domains rd JOIN relays r ON r.id = rd.relay_id WHERE rd.domain_id = ? ORDER BY r.name`, id)
		if err != nil {
			return err
		}
		if len(relays) > 0 {
			sort.Strings(relays)
			return &PreconditionError{
				Type:        "IN_USE",
				Subject:     "domain/" + id,
				Description: fmt.Sprintf("domain %s is served by relays %v; remove it from their domains first", d.Name, relays),
			}
		}
		return w.deleteDomain(ctx, id, d.TenantId)
	})
}

func (w *writer) deleteDomain(ctx context.Context, id, tenantID string) error {
	if _, err := w.tx.ExecContext(ctx, `DELETE FROM dkim_keys WHERE domain_id = ?`, id); err != nil {
		return fmt.Errorf("deleting DKIM keys: %w", err)
	}
	if _, err := w.tx.ExecContext(ctx, `DELETE FROM domains WHERE id = ?`, id); err != nil {
		return fmt.Errorf("deleting domain: %w", err)
	}
	return w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, id, tenantID, true)
}

// DKIMPrivateKey returns the PKCS#8 DER private key of a domain's key, for
// tests and key export by an admin tool.
func (s *Store) DKIMPrivateKey(ctx context.Context, domainID, selector string) ([]byte, error) {
	d, err := getDomain(ctx, s.db, domainID)
	if err != nil {
		return nil, err
	}
	var sealed string
	err = s.db.QueryRowContext(ctx, `SELECT sealed_private_key FROM dkim_keys WHERE domain_id = ? AND selector = ?`, domainID, selector).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("DKIM key", d.Name+"/"+selector)
	}
	if err != nil {
		return nil, fmt.Errorf("reading DKIM key: %w", err)
	}
	plain, err := s.sealer.Open(unbase64(sealed), configclient.DKIMKeyAAD(d.Name, selector))
	if err != nil {
		return nil, fmt.Errorf("opening DKIM key: %w", err)
	}
	return plain, nil
}
