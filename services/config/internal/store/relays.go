package store

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

const relayColumns = `id, tenant_id, name, host, port, security, skip_cert_verify, auth_mechanism, auth_username,
	sealed_password, sealed_oauth_token, client_cert_pem, sealed_client_key, from_filter, priority, kinds,
	daily_limit, rate_per_second, active, allow_plaintext_auth, max_connections, oauth_client,
	sealed_oauth_client_secret, sealed_oauth_refresh_token, create_time, update_time`

// defaultServerID is the resource id of the default server in changes.
const defaultServerID = "default"

// relayRow is a relays row: the relay without secrets (has_* set, domains
// not yet filled) and its sealed secrets.
type relayRow struct {
	relay   *pb.Relay
	secrets sealedSecrets
	created int64
}

// sealedSecrets are the sealed secret columns of a relay, base64 or "".
type sealedSecrets struct {
	password, oauthToken, clientKey      string
	oauthClientSecret, oauthRefreshToken string
}

func scanRelay(row scanner) (*relayRow, error) {
	var (
		r                pb.Relay
		auth             pb.RelayAuth
		tenant           sql.NullString
		sec              sealedSecrets
		security, mech   int32
		kinds            string
		oauthClient      string
		created, updated int64
	)
	err := row.Scan(&r.Id, &tenant, &r.Name, &r.Host, &r.Port, &security, &r.SkipCertVerify, &mech, &auth.Username,
		&sec.password, &sec.oauthToken, &auth.ClientCertPem, &sec.clientKey, &r.FromFilter, &r.Priority, &kinds,
		&r.DailyLimit, &r.RatePerSecond, &r.Active, &r.AllowPlaintextAuth, &r.MaxConnections, &oauthClient,
		&sec.oauthClientSecret, &sec.oauthRefreshToken, &created, &updated)
	if err != nil {
		return nil, err
	}
	r.TenantId = tenant.String
	r.Security = pb.RelaySecurity(security)
	auth.Mechanism = pb.AuthMechanism(mech)
	auth.HasPassword, auth.HasOauthToken, auth.HasClientKey = sec.password != "", sec.oauthToken != "", sec.clientKey != ""
	if oauthClient != "" {
		auth.Oauth = &pb.RelayOAuth{}
		if err := protojson.Unmarshal([]byte(oauthClient), auth.Oauth); err != nil {
			return nil, fmt.Errorf("relay %s: oauth_client: %w", r.Id, err)
		}
		auth.Oauth.HasClientSecret, auth.Oauth.HasRefreshToken = sec.oauthClientSecret != "", sec.oauthRefreshToken != ""
	}
	r.Auth = &auth
	ks, err := parseJSONList[int32](kinds)
	if err != nil {
		return nil, err
	}
	for _, k := range ks {
		r.Kinds = append(r.Kinds, pb.EmailKind(k))
	}
	r.CreateTime, r.UpdateTime = timestamp(created), timestamp(updated)
	return &relayRow{relay: &r, secrets: sec, created: created}, nil
}

// queryRelayRows runs a relays query and fills in each relay's domains.
func queryRelayRows(ctx context.Context, q sqlstore.Querier, query string, args ...any) ([]*relayRow, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("reading relays: %w", err)
	}
	var out []*relayRow
	for rows.Next() {
		r, err := scanRelay(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading relays: %w", err)
		}
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading relays: %w", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	ids := make([]any, len(out))
	byID := make(map[string]*pb.Relay, len(out))
	for i, r := range out {
		ids[i] = r.relay.Id
		byID[r.relay.Id] = r.relay
	}
	drows, err := q.QueryContext(ctx, `SELECT rd.relay_id, d.name FROM relay_domains rd JOIN domains d ON d.id = rd.domain_id
		WHERE rd.relay_id IN (`+placeholders(len(ids))+`) ORDER BY rd.relay_id, d.name`, ids...)
	if err != nil {
		return nil, fmt.Errorf("reading relay domains: %w", err)
	}
	defer drows.Close()
	for drows.Next() {
		var relayID, name string
		if err := drows.Scan(&relayID, &name); err != nil {
			return nil, fmt.Errorf("reading relay domains: %w", err)
		}
		byID[relayID].Domains = append(byID[relayID].Domains, name)
	}
	return out, drows.Err()
}

// getRelayRow reads a tenant relay, or with system set the default server's
// relay.
func getRelayRow(ctx context.Context, q sqlstore.Querier, id string, system bool) (*relayRow, error) {
	cond := `tenant_id IS NOT NULL`
	if system {
		cond = `tenant_id IS NULL`
	}
	rows, err := queryRelayRows(ctx, q, `SELECT `+relayColumns+` FROM relays WHERE id = ? AND `+cond, id)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, notFound("relay", id)
	}
	return rows[0], nil
}

// GetRelay returns a tenant's relay without its secrets.
func (s *Store) GetRelay(ctx context.Context, id string) (*pb.Relay, error) {
	r, err := getRelayRow(ctx, s.db, id, false)
	if err != nil {
		return nil, err
	}
	return r.relay, nil
}

// ListRelays returns a page of relays ordered by id, of one tenant or of all
// tenants when tenantID is empty. The default server's relay is not listed.
func (s *Store) ListRelays(ctx context.Context, tenantID string, page Page) ([]*pb.Relay, string, error) {
	query := `SELECT ` + relayColumns + ` FROM relays WHERE tenant_id IS NOT NULL AND id > ?`
	args := []any{page.After}
	if tenantID != "" {
		query += ` AND tenant_id = ?`
		args = append(args, tenantID)
	}
	query += ` ORDER BY id LIMIT ?`
	args = append(args, page.Limit+1)
	rows, err := queryRelayRows(ctx, s.db, query, args...)
	if err != nil {
		return nil, "", err
	}
	rows, next := pageOf(rows, page.Limit, func(r *relayRow) string { return r.relay.Id })
	out := make([]*pb.Relay, len(rows))
	for i, r := range rows {
		out[i] = r.relay
	}
	return out, next, nil
}

// RelaySecrets are a relay's secrets in plain text.
type RelaySecrets struct {
	Password, OAuthToken, ClientKeyPEM   string
	OAuthClientSecret, OAuthRefreshToken string
}

// GetRelaySecrets opens a relay's stored secrets (tenant relays and the
// default server's relay), for tests and for testing a stored relay.
func (s *Store) GetRelaySecrets(ctx context.Context, id string) (RelaySecrets, error) {
	rows, err := queryRelayRows(ctx, s.db, `SELECT `+relayColumns+` FROM relays WHERE id = ?`, id)
	if err != nil {
		return RelaySecrets{}, err
	}
	if len(rows) == 0 {
		return RelaySecrets{}, notFound("relay", id)
	}
	sec := rows[0].secrets
	var out RelaySecrets
	if out.Password, err = s.open(sec.password, configclient.RelaySecretAAD(id, configclient.SecretPassword)); err != nil {
		return RelaySecrets{}, err
	}
	if out.OAuthToken, err = s.open(sec.oauthToken, configclient.RelaySecretAAD(id, configclient.SecretOAuthToken)); err != nil {
		return RelaySecrets{}, err
	}
	if out.ClientKeyPEM, err = s.open(sec.clientKey, configclient.RelaySecretAAD(id, configclient.SecretClientKey)); err != nil {
		return RelaySecrets{}, err
	}
	if out.OAuthClientSecret, err = s.open(sec.oauthClientSecret, configclient.RelaySecretAAD(id, configclient.SecretOAuthClientSecret)); err != nil {
		return RelaySecrets{}, err
	}
	if out.OAuthRefreshToken, err = s.open(sec.oauthRefreshToken, configclient.RelaySecretAAD(id, configclient.SecretOAuthRefreshToken)); err != nil {
		return RelaySecrets{}, err
	}
	return out, nil
}

// Which secret each mechanism needs.
func usesPassword(m pb.AuthMechanism) bool {
	return m == pb.AuthMechanism_AUTH_MECHANISM_PLAIN || m == pb.AuthMechanism_AUTH_MECHANISM_LOGIN || m == pb.AuthMechanism_AUTH_MECHANISM_CRAM_MD5
}
func usesOAuthToken(m pb.AuthMechanism) bool { return m == pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2 }
func usesClientKey(m pb.AuthMechanism) bool  { return m == pb.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT }

// oauthClientOf is r's OAuth client when its mechanism uses one.
func oauthClientOf(r *pb.Relay) *pb.RelayOAuth {
	if !usesOAuthToken(r.GetAuth().GetMechanism()) {
		return nil
	}
	return r.GetAuth().GetOauth()
}

// oauthColumn is the stored form of an OAuth client: protojson without
// its secrets, or "" for none.
func oauthColumn(o *pb.RelayOAuth) (string, error) {
	if o == nil {
		return "", nil
	}
	c := proto.Clone(o).(*pb.RelayOAuth)
	c.ClientSecret, c.RefreshToken, c.HasClientSecret, c.HasRefreshToken = "", "", false, false
	b, err := protojson.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encoding the relay's OAuth client: %w", err)
	}
	return string(b), nil
}

// resolveSecrets decides the sealed secrets of a relay being written: a
// secret the mechanism does not use is dropped; an empty one keeps the stored
// value; a new one is sealed, unless it equals the stored value, which is
// kept so that an unchanged write is recognised as a no-op.
func (w *writer) resolveSecrets(r *pb.Relay, old *relayRow) (sealedSecrets, error) {
	var oldSec sealedSecrets
	if old != nil {
		oldSec = old.secrets
	}
	auth := r.GetAuth()
	mech := auth.GetMechanism()
	oauth := oauthClientOf(r)
	// A refresh token belongs to one client of one provider: a relay that
	// changes either has to be connected again.
	sameClient := old != nil && oauth != nil && old.relay.GetAuth().GetOauth().GetClientId() == oauth.GetClientId() &&
		old.relay.GetAuth().GetOauth().GetTokenUrl() == oauth.GetTokenUrl() && old.relay.GetAuth().GetOauth().GetProvider() == oauth.GetProvider()
	if !sameClient {
		oldSec.oauthRefreshToken = ""
	}
	one := func(field, secret, plain, oldSealed string, uses bool) (string, error) {
		// The OAuth client's secrets are optional (a public client has no
		// secret; the refresh token comes with CompleteRelayOAuth), and
		// with a client the access token is too.
		optional := secret == configclient.SecretOAuthClientSecret || secret == configclient.SecretOAuthRefreshToken ||
			(secret == configclient.SecretOAuthToken && oauth != nil)
		return w.resolveSecret(r.Id, mech, field, secret, plain, oldSealed, uses, uses && !optional)
	}
	var (
		out sealedSecrets
		err error
	)
	if out.password, err = one("password", configclient.SecretPassword, auth.GetPassword(), oldSec.password, usesPassword(mech)); err != nil {
		return out, err
	}
	if out.oauthToken, err = one("oauth_token", configclient.SecretOAuthToken, auth.GetOauthToken(), oldSec.oauthToken, usesOAuthToken(mech)); err != nil {
		return out, err
	}
	if out.oauthClientSecret, err = one("oauth.client_secret", configclient.SecretOAuthClientSecret, oauth.GetClientSecret(), oldSec.oauthClientSecret, oauth != nil); err != nil {
		return out, err
	}
	if out.oauthRefreshToken, err = one("oauth.refresh_token", configclient.SecretOAuthRefreshToken, oauth.GetRefreshToken(), oldSec.oauthRefreshToken, oauth != nil); err != nil {
		return out, err
	}
	if out.clientKey, err = one("client_key_pem", configclient.SecretClientKey, auth.GetClientKeyPem(), oldSec.clientKey, usesClientKey(mech)); err != nil {
		return out, err
	}
	return w.checkClientKey(r, out)
}

// resolveSecret is one secret of resolveSecrets: dropped when the mechanism
// does not use it, the stored one when plain is empty (an error when
// required and there is none), else plain sealed.
func (w *writer) resolveSecret(id string, mech pb.AuthMechanism, field, secret, plain, oldSealed string, uses, required bool) (string, error) {
	if !uses {
		return "", nil
	}
	aad := configclient.RelaySecretAAD(id, secret)
	if plain == "" {
		if oldSealed == "" && required {
			return "", &FieldError{Field: "relay.auth." + field, Reason: "required for " + mechName(mech)}
		}
		return oldSealed, nil
	}
	if oldSealed != "" {
		if prev, err := w.s.open(oldSealed, aad); err == nil && prev == plain {
			return oldSealed, nil
		}
	}
	sealed, err := w.s.seal(plain, aad)
	if err != nil {
		return "", fmt.Errorf("sealing relay %s: %w", field, err)
	}
	return sealed, nil
}

// checkClientKey checks that a client certificate's key matches it.
func (w *writer) checkClientKey(r *pb.Relay, out sealedSecrets) (sealedSecrets, error) {
	auth := r.GetAuth()
	var err error
	if usesClientKey(auth.GetMechanism()) {
		keyPEM := auth.GetClientKeyPem()
		if keyPEM == "" {
			if keyPEM, err = w.s.open(out.clientKey, configclient.RelaySecretAAD(r.Id, configclient.SecretClientKey)); err != nil {
				return out, fmt.Errorf("opening stored client key: %w", err)
			}
		}
		if _, err := tls.X509KeyPair([]byte(auth.GetClientCertPem()), []byte(keyPEM)); err != nil {
			return out, &FieldError{Field: "relay.auth.client_key_pem", Reason: "does not match client_cert_pem: " + err.Error()}
		}
	}
	return out, nil
}

func mechName(m pb.AuthMechanism) string {
	n, ok := pb.AuthMechanism_name[int32(m)]
	if !ok {
		return m.String()
	}
	return n[len("AUTH_MECHANISM_"):]
}

// redacted is how r reads back after it is stored with sec: no secrets,
// has_* set, domains sorted, no timestamps.
func redacted(r *pb.Relay, sec sealedSecrets) *pb.Relay {
	out := proto.Clone(r).(*pb.Relay)
	if out.Auth == nil {
		out.Auth = &pb.RelayAuth{}
	}
	if out.Auth.Mechanism == pb.AuthMechanism_AUTH_MECHANISM_UNSPECIFIED {
		out.Auth.Mechanism = pb.AuthMechanism_AUTH_MECHANISM_NONE
	}
	out.Auth.Password, out.Auth.OauthToken, out.Auth.ClientKeyPem = "", "", ""
	out.Auth.HasPassword, out.Auth.HasOauthToken, out.Auth.HasClientKey = sec.password != "", sec.oauthToken != "", sec.clientKey != ""
	if out.Auth.Oauth = oauthClientOf(out); out.Auth.Oauth != nil {
		out.Auth.Oauth.ClientSecret, out.Auth.Oauth.RefreshToken = "", ""
		out.Auth.Oauth.HasClientSecret, out.Auth.Oauth.HasRefreshToken = sec.oauthClientSecret != "", sec.oauthRefreshToken != ""
	}
	out.Domains = append([]string(nil), out.Domains...)
	sort.Strings(out.Domains)
	out.CreateTime, out.UpdateTime = nil, nil
	return out
}

func sameRelay(old *relayRow, r *pb.Relay, sec sealedSecrets) bool {
	a := proto.Clone(old.relay).(*pb.Relay)
	a.CreateTime, a.UpdateTime = nil, nil
	return old.secrets == sec && proto.Equal(a, redacted(r, sec))
}

// resolveRelayDomains maps a relay's domain names to ids of its tenant's
// domains and enforces the relays-per-domain cap.
func (w *writer) resolveRelayDomains(ctx context.Context, r *pb.Relay, tenant *pb.Tenant) ([]string, error) {
	maxRelays, _ := planCaps(tenant)
	ids := make([]string, 0, len(r.Domains))
	for i, name := range r.Domains {
		var id, owner string
		err := w.tx.QueryRowContext(ctx, `SELECT id, tenant_id FROM domains WHERE name = ?`, name).Scan(&id, &owner)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && owner != r.TenantId) {
			return nil, &FieldError{Field: fmt.Sprintf("relay.domains[%d]", i), Reason: fmt.Sprintf("%s is not a domain of tenant %q", name, r.TenantId)}
		}
		if err != nil {
			return nil, fmt.Errorf("reading domain %s: %w", name, err)
		}
		var n int
		err = w.tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM relay_domains WHERE domain_id = ? AND relay_id <> ?`, id, r.Id).Scan(&n)
		if err != nil {
			return nil, fmt.Errorf("counting relays of %s: %w", name, err)
		}
		if n >= maxRelays {
			return nil, &PreconditionError{
				Type:    "PLAN_CAP",
				Subject: "domain/" + name,
				Description: fmt.Sprintf("domain %s already has %d relays, the most the plan of tenant %q allows (plan.max_relays_per_domain = %d); remove the domain from another relay or raise the cap",
					name, n, r.TenantId, maxRelays),
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func relayArgs(r *pb.Relay, sec sealedSecrets) ([]any, error) {
	oauth, err := oauthColumn(oauthClientOf(r))
	if err != nil {
		return nil, err
	}
	kinds := make([]int32, len(r.Kinds))
	for i, k := range r.Kinds {
		kinds[i] = int32(k)
	}
	mech := r.GetAuth().GetMechanism()
	if mech == pb.AuthMechanism_AUTH_MECHANISM_UNSPECIFIED {
		mech = pb.AuthMechanism_AUTH_MECHANISM_NONE
	}
	return []any{r.Name, r.Host, r.Port, int32(r.Security), r.SkipCertVerify, int32(mech), r.GetAuth().GetUsername(),
		sec.password, sec.oauthToken, r.GetAuth().GetClientCertPem(), sec.clientKey, r.FromFilter, r.Priority, jsonList(kinds),
		r.DailyLimit, r.RatePerSecond, r.Active, r.AllowPlaintextAuth, r.MaxConnections, oauth,
		sec.oauthClientSecret, sec.oauthRefreshToken}, nil
}

// insertRelay inserts a relay row; tenant is nil for the default relay.
func (w *writer) insertRelay(ctx context.Context, r *pb.Relay, tenant any, sec sealedSecrets, domainIDs []string) error {
	ra, err := relayArgs(r, sec)
	if err != nil {
		return err
	}
	args := append([]any{r.Id, tenant}, ra...)
	args = append(args, micros(w.now), micros(w.now))
	_, err = w.tx.ExecContext(ctx, `INSERT INTO relays (`+relayColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
	if err != nil {
		return fmt.Errorf("storing relay: %w", err)
	}
	return w.setRelayDomains(ctx, r.Id, domainIDs)
}

func (w *writer) updateRelay(ctx context.Context, r *pb.Relay, sec sealedSecrets, domainIDs []string) error {
	ra, err := relayArgs(r, sec)
	if err != nil {
		return err
	}
	args := append(ra, micros(w.now), r.Id)
	_, err = w.tx.ExecContext(ctx, `UPDATE relays SET name = ?, host = ?, port = ?, security = ?, skip_cert_verify = ?,
		auth_mechanism = ?, auth_username = ?, sealed_password = ?, sealed_oauth_token = ?, client_cert_pem = ?,
		sealed_client_key = ?, from_filter = ?, priority = ?, kinds = ?, daily_limit = ?, rate_per_second = ?,
		active = ?, allow_plaintext_auth = ?, max_connections = ?, oauth_client = ?, sealed_oauth_client_secret = ?,
		sealed_oauth_refresh_token = ?, update_time = ? WHERE id = ?`, args...)
	if err != nil {
		return fmt.Errorf("updating relay: %w", err)
	}
	if _, err := w.tx.ExecContext(ctx, `DELETE FROM relay_domains WHERE relay_id = ?`, r.Id); err != nil {
		return fmt.Errorf("updating relay domains: %w", err)
	}
	return w.setRelayDomains(ctx, r.Id, domainIDs)
}

func (w *writer) setRelayDomains(ctx context.Context, relayID string, domainIDs []string) error {
	for _, d := range domainIDs {
		if _, err := w.tx.ExecContext(ctx, `INSERT INTO relay_domains (relay_id, domain_id) VALUES (?, ?)`, relayID, d); err != nil {
			return fmt.Errorf("storing relay domains: %w", err)
		}
	}
	return nil
}

func (w *writer) relayIDTaken(ctx context.Context, id string) error {
	var n int
	if err := w.tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM relays WHERE id = ?`, id).Scan(&n); err != nil {
		return fmt.Errorf("checking relay id: %w", err)
	}
	if n > 0 {
		return &ConflictError{Field: "relay.id", Reason: fmt.Sprintf("relay %q already exists", id)}
	}
	return nil
}

func (w *writer) relayTenant(ctx context.Context, r *pb.Relay) (*pb.Tenant, error) {
	tenant, err := getTenant(ctx, w.tx, r.TenantId)
	if errors.Is(err, ErrNotFound) {
		return nil, &FieldError{Field: "relay.tenant_id", Reason: fmt.Sprintf("unknown tenant %q", r.TenantId)}
	}
	return tenant, err
}

// CreateRelay stores a new tenant relay with its secrets sealed; r.Id must
// be set. It returns the relay as GetRelay does.
func (s *Store) CreateRelay(ctx context.Context, r *pb.Relay) (*pb.Relay, error) {
	var out *pb.Relay
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		tenant, err := w.relayTenant(ctx, r)
		if err != nil {
			return err
		}
		if err := w.relayIDTaken(ctx, r.Id); err != nil {
			return err
		}
		domainIDs, err := w.resolveRelayDomains(ctx, r, tenant)
		if err != nil {
			return err
		}
		sec, err := w.resolveSecrets(r, nil)
		if err != nil {
			return err
		}
		if err := w.insertRelay(ctx, r, r.TenantId, sec, domainIDs); err != nil {
			return err
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_RELAY, r.Id, r.TenantId, false); err != nil {
			return err
		}
		row, err := getRelayRow(ctx, w.tx, r.Id, false)
		if err != nil {
			return err
		}
		out = row.relay
		return nil
	})
	return out, err
}

// UpdateRelay replaces a tenant relay. Empty secrets keep the stored ones
// (when the mechanism still uses them). When nothing differs it writes
// nothing and records no change.
func (s *Store) UpdateRelay(ctx context.Context, r *pb.Relay) (*pb.Relay, error) {
	var out *pb.Relay
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getRelayRow(ctx, w.tx, r.Id, false)
		if err != nil {
			return err
		}
		if r.TenantId != old.relay.TenantId {
			return &FieldError{Field: "relay.tenant_id", Reason: "cannot be changed; create the relay in the other tenant"}
		}
		tenant, err := w.relayTenant(ctx, r)
		if err != nil {
			return err
		}
		domainIDs, err := w.resolveRelayDomains(ctx, r, tenant)
		if err != nil {
			return err
		}
		sec, err := w.resolveSecrets(r, old)
		if err != nil {
			return err
		}
		if sameRelay(old, r, sec) {
			out = old.relay
			return nil
		}
		if err := w.updateRelay(ctx, r, sec, domainIDs); err != nil {
			return err
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_RELAY, r.Id, r.TenantId, false); err != nil {
			return err
		}
		row, err := getRelayRow(ctx, w.tx, r.Id, false)
		if err != nil {
			return err
		}
		out = row.relay
		return nil
	})
	return out, err
}

// DeleteRelay deletes a tenant relay.
func (s *Store) DeleteRelay(ctx context.Context, id string) error {
	return s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getRelayRow(ctx, w.tx, id, false)
		if err != nil {
			return err
		}
		return w.deleteRelay(ctx, id, old.relay.TenantId)
	})
}

func (w *writer) deleteRelay(ctx context.Context, id, tenantID string) error {
	if _, err := w.tx.ExecContext(ctx, `DELETE FROM relay_domains WHERE relay_id = ?`, id); err != nil {
		return fmt.Errorf("deleting relay domains: %w", err)
	}
	if _, err := w.tx.ExecContext(ctx, `DELETE FROM relays WHERE id = ?`, id); err != nil {
		return fmt.Errorf("deleting relay: %w", err)
	}
	return w.change(ctx, pb.ChangeKind_CHANGE_KIND_RELAY, id, tenantID, true)
}

// defaultRow is the default_server row.
type defaultRow struct {
	mode     pb.DefaultServerMode
	helo     string
	relayID  string
	relay    *relayRow
	isStored bool
}

func getDefaultRow(ctx context.Context, q sqlstore.Querier) (*defaultRow, error) {
	var (
		d       defaultRow
		mode    int32
		relayID sql.NullString
	)
	err := q.QueryRowContext(ctx, `SELECT mode, helo_name, relay_id FROM default_server WHERE id = 1`).Scan(&mode, &d.helo, &relayID)
	if errors.Is(err, sql.ErrNoRows) {
		return &d, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading default server: %w", err)
	}
	d.isStored, d.mode, d.relayID = true, pb.DefaultServerMode(mode), relayID.String
	if d.relayID != "" {
		if d.relay, err = getRelayRow(ctx, q, d.relayID, true); err != nil {
			return nil, err
		}
	}
	return &d, nil
}

func (d *defaultRow) server() *pb.DefaultServer {
	out := &pb.DefaultServer{Mode: d.mode, HeloName: d.helo}
	if d.relay != nil {
		out.Relay = d.relay.relay
	}
	return out
}

// GetDefaultServer returns the default server, its relay without secrets.
// When none is set the mode is DEFAULT_SERVER_MODE_UNSPECIFIED.
func (s *Store) GetDefaultServer(ctx context.Context) (*pb.DefaultServer, error) {
	d, err := getDefaultRow(ctx, s.db)
	if err != nil {
		return nil, err
	}
	return d.server(), nil
}

// SetDefaultServer replaces the default server. In RELAY mode the relay is
// stored like a tenant relay without a tenant (its tenant_id, from_filter,
// kinds and domains are dropped); an empty relay id keeps the current
// relay's id, and empty secrets keep the stored ones. When nothing differs it
// writes nothing and records no change.
func (s *Store) SetDefaultServer(ctx context.Context, ds *pb.DefaultServer, newID func() string) (*pb.DefaultServer, error) {
	var out *pb.DefaultServer
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getDefaultRow(ctx, w.tx)
		if err != nil {
			return err
		}
		var (
			relay *pb.Relay
			sec   sealedSecrets
		)
		if ds.Mode == pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY && ds.Relay != nil {
			relay = proto.Clone(ds.Relay).(*pb.Relay)
			relay.TenantId, relay.FromFilter, relay.Kinds, relay.Domains = "", "", nil, nil
			if relay.Id == "" {
				relay.Id = old.relayID
			}
			if relay.Id == "" {
				relay.Id = newID()
			}
			var prev *relayRow
			if relay.Id == old.relayID {
				prev = old.relay
			} else if err := w.relayIDTaken(ctx, relay.Id); err != nil {
				return err
			}
			if sec, err = w.resolveSecrets(relay, prev); err != nil {
				return err
			}
			if prev != nil && sameRelay(prev, relay, sec) && old.mode == ds.Mode && old.helo == ds.HeloName {
				out = old.server()
				return nil
			}
		} else if old.isStored && old.mode == ds.Mode && old.helo == ds.HeloName && old.relayID == "" {
			out = old.server()
			return nil
		}

		if relay != nil {
			if relay.Id == old.relayID {
				err = w.updateRelay(ctx, relay, sec, nil)
			} else {
				err = w.insertRelay(ctx, relay, nil, sec, nil)
			}
			if err != nil {
				return err
			}
		}
		if _, err := w.tx.ExecContext(ctx, `DELETE FROM default_server WHERE id = 1`); err != nil {
			return fmt.Errorf("replacing default server: %w", err)
		}
		var relayID any
		if relay != nil {
			relayID = relay.Id
		}
		if _, err := w.tx.ExecContext(ctx, `INSERT INTO default_server (id, mode, helo_name, relay_id) VALUES (1, ?, ?, ?)`,
			int32(ds.Mode), ds.HeloName, relayID); err != nil {
			return fmt.Errorf("storing default server: %w", err)
		}
		if old.relayID != "" && (relay == nil || relay.Id != old.relayID) {
			if _, err := w.tx.ExecContext(ctx, `DELETE FROM relays WHERE id = ?`, old.relayID); err != nil {
				return fmt.Errorf("deleting the previous default relay: %w", err)
			}
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_DEFAULT_SERVER, defaultServerID, "", false); err != nil {
			return err
		}
		d, err := getDefaultRow(ctx, w.tx)
		if err != nil {
			return err
		}
		out = d.server()
		return nil
	})
	return out, err
}

// SetRelayOAuthRefreshToken stores the refresh token an OAuth
// authorization-code exchange gave a tenant relay (sealed), and records a
// change so that the senders pick it up. A refresh token the provider
// rotates in later is not stored: Google's do not rotate, and Microsoft's
// older ones stay valid for their lifetime.
func (s *Store) SetRelayOAuthRefreshToken(ctx context.Context, id, refreshToken string) (*pb.Relay, error) {
	var out *pb.Relay
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		old, err := getRelayRow(ctx, w.tx, id, false)
		if err != nil {
			return err
		}
		if oauthClientOf(old.relay) == nil {
			return &FieldError{Field: "relay.auth.oauth", Reason: "the relay has no OAuth client (XOAUTH2 with auth.oauth)"}
		}
		sealed, err := w.s.seal(refreshToken, configclient.RelaySecretAAD(id, configclient.SecretOAuthRefreshToken))
		if err != nil {
			return fmt.Errorf("sealing the relay's refresh token: %w", err)
		}
		if _, err := w.tx.ExecContext(ctx, `UPDATE relays SET sealed_oauth_refresh_token = ?, update_time = ? WHERE id = ?`, sealed, micros(w.now), id); err != nil {
			return fmt.Errorf("storing the relay's refresh token: %w", err)
		}
		if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_RELAY, id, old.relay.TenantId, false); err != nil {
			return err
		}
		row, err := getRelayRow(ctx, w.tx, id, false)
		if err != nil {
			return err
		}
		out = row.relay
		return nil
	})
	return out, err
}
