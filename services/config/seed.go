package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/mailbus/mailbus/pkg/auth"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

// The seed format; deploy/mailbus.example.yaml documents it for people.

type seedFile struct {
	Tenants       []seedTenant       `yaml:"tenants"`
	DefaultServer *seedDefaultServer `yaml:"default_server"`
	Tokens        []seedToken        `yaml:"tokens"`
}

type seedTenant struct {
	ID           string `yaml:"id"`
	Name         string `yaml:"name"`
	TimeZone     string `yaml:"time_zone"`
	DailyLimit   int64  `yaml:"daily_limit"`
	DefaultFrom  string `yaml:"default_from"`
	DomainAlias  string `yaml:"domain_alias"`
	BounceDomain string `yaml:"bounce_domain"`
	Plan         struct {
		MaxRelaysPerDomain int32 `yaml:"max_relays_per_domain"`
		MaxDomains         int32 `yaml:"max_domains"`
	} `yaml:"plan"`
	OverLimitPolicy      string       `yaml:"over_limit_policy"`
	AdminEmails          []string     `yaml:"admin_emails"`
	SoftBounceThreshold  int32        `yaml:"soft_bounce_threshold"`
	SoftBounceWindowDays int32        `yaml:"soft_bounce_window_days"`
	Active               *bool        `yaml:"active"`
	Domains              []seedDomain `yaml:"domains"`
	Relays               []seedRelay  `yaml:"relays"`
}

type seedDomain struct {
	ID               string    `yaml:"id"`
	Name             string    `yaml:"name"`
	ReturnPath       string    `yaml:"return_path"`
	CustomReturnPath string    `yaml:"custom_return_path"`
	DKIMKeys         []seedKey `yaml:"dkim_keys"`
}

type seedKey struct {
	Selector      string `yaml:"selector"`
	Algorithm     string `yaml:"algorithm"`
	Generate      bool   `yaml:"generate"`
	PrivateKeyPEM string `yaml:"private_key_pem"`
	Active        *bool  `yaml:"active"`
}

type seedRelay struct {
	ID                 string   `yaml:"id"`
	Name               string   `yaml:"name"`
	Host               string   `yaml:"host"`
	Port               int32    `yaml:"port"`
	Security           string   `yaml:"security"`
	SkipCertVerify     bool     `yaml:"skip_cert_verify"`
	Auth               seedAuth `yaml:"auth"`
	FromFilter         string   `yaml:"from_filter"`
	Priority           int32    `yaml:"priority"`
	Kinds              []string `yaml:"kinds"`
	Domains            []string `yaml:"domains"`
	DailyLimit         int64    `yaml:"daily_limit"`
	RatePerSecond      float64  `yaml:"rate_per_second"`
	MaxConnections     int32    `yaml:"max_connections"`
	Active             *bool    `yaml:"active"`
	AllowPlaintextAuth bool     `yaml:"allow_plaintext_auth"`
}

type seedAuth struct {
	Mechanism     string `yaml:"mechanism"`
	Username      string `yaml:"username"`
	Password      string `yaml:"password"`
	OAuthToken    string `yaml:"oauth_token"`
	ClientCertPEM string `yaml:"client_cert_pem"`
	ClientKeyPEM  string `yaml:"client_key_pem"`
	// OAuth is the client that refreshes XOAUTH2 access tokens.
	OAuth *seedOAuth `yaml:"oauth"`
}

type seedOAuth struct {
	Provider     string   `yaml:"provider"`
	AuthURL      string   `yaml:"auth_url"`
	TokenURL     string   `yaml:"token_url"`
	ClientID     string   `yaml:"client_id"`
	ClientSecret string   `yaml:"client_secret"`
	RefreshToken string   `yaml:"refresh_token"`
	Scopes       []string `yaml:"scopes"`
}

type seedDefaultServer struct {
	Mode     string     `yaml:"mode"`
	HeloName string     `yaml:"helo_name"`
	Relay    *seedRelay `yaml:"relay"`
}

type seedToken struct {
	Token       string `yaml:"token"`
	TokenSHA256 string `yaml:"token_sha256"`
	Role        string `yaml:"role"`
	TenantID    string `yaml:"tenant_id"`
	UserID      string `yaml:"user_id"`
	Name        string `yaml:"name"`
}

// SeedResult says what a seed did.
type SeedResult struct {
	// Tokens are the seed's API tokens (token or "sha256:<hex>" to
	// identity), for Config.Tokens; they are not stored in the database.
	Tokens map[string]auth.Identity
	// Changes is the number of change records the seed wrote; 0 when the
	// store already matched the seed.
	Changes int64
	// Revision is the configuration revision after the seed.
	Revision int64
}

// SeedFromFile applies the seed in a YAML file; see Seed.
func SeedFromFile(ctx context.Context, st *Store, path string) (SeedResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	defer f.Close()
	res, err := Seed(ctx, st, f)
	if err != nil {
		return res, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// Seed applies a declarative YAML configuration (the format is documented in
// deploy/mailbus.example.yaml): it creates what is missing and updates what
// differs, by id (domains by name when they have no id). It deletes nothing.
// Running the same seed twice changes nothing and records no changes.
// Everything goes through the same validation as the gRPC API.
func Seed(ctx context.Context, st *Store, r io.Reader) (SeedResult, error) {
	var f seedFile
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return SeedResult{}, fmt.Errorf("seed: parsing YAML: %w", err)
	}
	// Replicas starting together seed at once; the one that loses a race to
	// create something gets a conflict, and applying the (idempotent) seed
	// again turns its creates into no-op updates. A replica loses each
	// race at most once (what it lost to exists from then on), so one
	// attempt per resource created, plus one, always suffices; three did
	// not when three replicas took turns winning.
	var (
		res SeedResult
		err error
	)
	attempts := 2
	for _, t := range f.Tenants {
		attempts += 1 + len(t.Relays)
		for _, d := range t.Domains {
			attempts += 1 + len(d.DKIMKeys)
		}
	}
	for range attempts {
		res, err = applySeed(ctx, st, &f)
		var ce *store.ConflictError
		if !errors.As(err, &ce) {
			break
		}
	}
	return res, err
}

func applySeed(ctx context.Context, st *Store, f *seedFile) (SeedResult, error) {
	before, err := st.Revision(ctx)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	for i := range f.Tenants {
		t := &f.Tenants[i]
		where := fmt.Sprintf("tenants[%d] (%s)", i, t.ID)
		if err := seedTenantAll(ctx, st, t, where); err != nil {
			return SeedResult{}, err
		}
	}
	if f.DefaultServer != nil {
		if err := seedDefault(ctx, st, f.DefaultServer); err != nil {
			return SeedResult{}, err
		}
	}
	tokens, err := seedTokens(f.Tokens)
	if err != nil {
		return SeedResult{}, err
	}
	after, err := st.Revision(ctx)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	return SeedResult{Tokens: tokens, Changes: after - before, Revision: after}, nil
}

// seedErr says where in the seed an error happened, with the readable part
// of a status error.
func seedErr(where string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("seed: %s: %s", where, st.Message())
	}
	return fmt.Errorf("seed: %s: %w", where, err)
}

func orTrue(b *bool) bool { return b == nil || *b }

func seedTenantAll(ctx context.Context, st *Store, t *seedTenant, where string) error {
	if t.ID == "" {
		return fmt.Errorf("seed: %s: id is required so that the seed can be applied again", where)
	}
	policy, err := parseEnum(t.OverLimitPolicy, "OVER_LIMIT_POLICY_", pb.OverLimitPolicy_value)
	if err != nil {
		return seedErr(where+".over_limit_policy", err)
	}
	tenant := &pb.Tenant{
		Id: t.ID, Name: t.Name, TimeZone: t.TimeZone, DailyLimit: t.DailyLimit, DefaultFrom: t.DefaultFrom,
		DomainAlias: t.DomainAlias, BounceDomain: t.BounceDomain,
		Plan:            &pb.PlanCaps{MaxRelaysPerDomain: t.Plan.MaxRelaysPerDomain, MaxDomains: t.Plan.MaxDomains},
		OverLimitPolicy: pb.OverLimitPolicy(policy), AdminEmails: t.AdminEmails,
		SoftBounceThreshold: t.SoftBounceThreshold, SoftBounceWindowDays: t.SoftBounceWindowDays, Active: orTrue(t.Active),
	}
	if err := validateTenant(tenant, false); err != nil {
		return seedErr(where, err)
	}
	if _, err := st.GetTenant(ctx, t.ID); errors.Is(err, store.ErrNotFound) {
		_, err = st.CreateTenant(ctx, tenant)
		if err != nil {
			return seedErr(where, err)
		}
	} else if err != nil {
		return seedErr(where, err)
	} else if _, err := st.UpdateTenant(ctx, tenant); err != nil {
		return seedErr(where, err)
	}
	for j := range t.Domains {
		if err := seedDomainOne(ctx, st, t.ID, &t.Domains[j], fmt.Sprintf("%s.domains[%d]", where, j)); err != nil {
			return err
		}
	}
	for j := range t.Relays {
		if err := seedRelayOne(ctx, st, t.ID, &t.Relays[j], fmt.Sprintf("%s.relays[%d]", where, j)); err != nil {
			return err
		}
	}
	return nil
}

func seedDomainOne(ctx context.Context, st *Store, tenantID string, sd *seedDomain, where string) error {
	mode, err := parseEnum(sd.ReturnPath, "RETURN_PATH_MODE_", pb.ReturnPathMode_value)
	if err != nil {
		return seedErr(where+".return_path", err)
	}
	d := &pb.Domain{Id: sd.ID, TenantId: tenantID, Name: sd.Name, ReturnPathMode: pb.ReturnPathMode(mode), CustomReturnPath: sd.CustomReturnPath}
	if _, err := validateDomain(d, true); err != nil {
		return seedErr(where, err)
	}
	var existing *pb.Domain
	if d.Id == "" {
		if id, err := st.DomainIDByName(ctx, d.Name); err == nil {
			d.Id = id
		} else if !errors.Is(err, store.ErrNotFound) {
			return seedErr(where, err)
		} else {
			d.Id = newID()
		}
	}
	existing, err = st.GetDomain(ctx, d.Id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return seedErr(where, err)
	}
	stored := map[string]bool{}
	if existing != nil {
		for _, k := range existing.DkimKeys {
			stored[k.Selector] = true
		}
	}

	var updates []store.KeyUpdate
	for k, key := range sd.DKIMKeys {
		kwhere := fmt.Sprintf("%s.dkim_keys[%d]", where, k)
		sel := strings.ToLower(strings.TrimSpace(key.Selector))
		alg, err := parseEnum(key.Algorithm, "DKIM_ALGORITHM_", pb.DkimAlgorithm_value)
		if err != nil {
			return seedErr(kwhere+".algorithm", err)
		}
		switch {
		case key.PrivateKeyPEM != "" && key.Generate:
			return fmt.Errorf("seed: %s: give either private_key_pem or generate: true, not both", kwhere)
		case key.PrivateKeyPEM != "":
			nk, err := importKey(sel, key.PrivateKeyPEM, orTrue(key.Active))
			if err != nil {
				return fmt.Errorf("seed: %s.private_key_pem: %w", kwhere, err)
			}
			updates = append(updates, store.KeyUpdate{Selector: sel, Active: nk.Active, New: nk})
		case key.Generate && !stored[sel]:
			nk, err := generateKey(sel, pb.DkimAlgorithm(alg))
			if err != nil {
				return seedErr(kwhere, err)
			}
			nk.Active = orTrue(key.Active)
			updates = append(updates, store.KeyUpdate{Selector: sel, Active: nk.Active, New: nk, KeepExisting: true})
		case key.Generate:
			updates = append(updates, store.KeyUpdate{Selector: sel, Active: orTrue(key.Active)})
		default:
			return fmt.Errorf("seed: %s: give private_key_pem or generate: true", kwhere)
		}
	}

	if existing == nil {
		keys := make([]store.NewDKIMKey, len(updates))
		for i, u := range updates {
			keys[i] = *u.New
		}
		_, err = st.CreateDomain(ctx, d, keys)
	} else {
		_, err = st.UpdateDomain(ctx, d, updates)
	}
	if err != nil {
		return seedErr(where, err)
	}
	return nil
}

func seedRelayProto(sr *seedRelay, tenantID string) (*pb.Relay, error) {
	security, err := parseEnum(sr.Security, "RELAY_SECURITY_", pb.RelaySecurity_value)
	if err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	mech, err := parseEnum(sr.Auth.Mechanism, "AUTH_MECHANISM_", pb.AuthMechanism_value)
	if err != nil {
		return nil, fmt.Errorf("auth.mechanism: %w", err)
	}
	r := &pb.Relay{
		Id: sr.ID, TenantId: tenantID, Name: sr.Name, Host: sr.Host, Port: sr.Port,
		Security: pb.RelaySecurity(security), SkipCertVerify: sr.SkipCertVerify,
		Auth: &pb.RelayAuth{
			Mechanism: pb.AuthMechanism(mech), Username: sr.Auth.Username, Password: sr.Auth.Password,
			OauthToken: sr.Auth.OAuthToken, ClientCertPem: sr.Auth.ClientCertPEM, ClientKeyPem: sr.Auth.ClientKeyPEM,
		},
		FromFilter: sr.FromFilter, Priority: sr.Priority, Domains: sr.Domains, DailyLimit: sr.DailyLimit,
		RatePerSecond: sr.RatePerSecond, Active: orTrue(sr.Active), AllowPlaintextAuth: sr.AllowPlaintextAuth,
		MaxConnections: sr.MaxConnections,
	}
	if o := sr.Auth.OAuth; o != nil {
		r.Auth.Oauth = &pb.RelayOAuth{Provider: o.Provider, AuthUrl: o.AuthURL, TokenUrl: o.TokenURL, ClientId: o.ClientID,
			ClientSecret: o.ClientSecret, RefreshToken: o.RefreshToken, Scopes: o.Scopes}
	}
	for i, k := range sr.Kinds {
		kind, err := parseEnum(k, "EMAIL_KIND_", pb.EmailKind_value)
		if err != nil || kind == 0 {
			return nil, fmt.Errorf("kinds[%d]: unknown email kind %q (workflow, mass, individual, transactional, system)", i, k)
		}
		r.Kinds = append(r.Kinds, pb.EmailKind(kind))
	}
	return r, nil
}

func seedRelayOne(ctx context.Context, st *Store, tenantID string, sr *seedRelay, where string) error {
	if sr.ID == "" {
		return fmt.Errorf("seed: %s: id is required so that the seed can be applied again", where)
	}
	r, err := seedRelayProto(sr, tenantID)
	if err != nil {
		return fmt.Errorf("seed: %s.%w", where, err)
	}
	_, err = st.GetRelay(ctx, r.Id)
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return seedErr(where, err)
	}
	if err := validateRelay(r, "relay", !exists, false); err != nil {
		return seedErr(where, err)
	}
	if exists {
		_, err = st.UpdateRelay(ctx, r)
	} else {
		_, err = st.CreateRelay(ctx, r)
	}
	if err != nil {
		return seedErr(where, err)
	}
	return nil
}

func seedDefault(ctx context.Context, st *Store, sd *seedDefaultServer) error {
	const where = "default_server"
	mode, err := parseEnum(sd.Mode, "DEFAULT_SERVER_MODE_", pb.DefaultServerMode_value)
	if err != nil {
		return seedErr(where+".mode", err)
	}
	ds := &pb.DefaultServer{Mode: pb.DefaultServerMode(mode), HeloName: sd.HeloName}
	if sd.Relay != nil {
		if ds.Relay, err = seedRelayProto(sd.Relay, ""); err != nil {
			return fmt.Errorf("seed: %s.relay.%w", where, err)
		}
	}
	if err := validateDefaultServer(ds); err != nil {
		return seedErr(where, err)
	}
	if _, err := st.SetDefaultServer(ctx, ds, newID); err != nil {
		return seedErr(where, err)
	}
	return nil
}

func seedTokens(list []seedToken) (map[string]auth.Identity, error) {
	out := make(map[string]auth.Identity, len(list))
	for i, t := range list {
		key := t.Token
		switch {
		case t.Token != "" && t.TokenSHA256 != "":
			return nil, fmt.Errorf("seed: tokens[%d]: give token or token_sha256, not both", i)
		case t.TokenSHA256 != "":
			key = "sha256:" + strings.TrimPrefix(strings.ToLower(t.TokenSHA256), "sha256:")
		case t.Token == "":
			return nil, fmt.Errorf("seed: tokens[%d]: token or token_sha256 is required", i)
		}
		id := auth.Identity{Role: auth.Role(t.Role), TenantID: t.TenantID, UserID: t.UserID, Name: t.Name}
		if err := id.Validate(); err != nil {
			return nil, fmt.Errorf("seed: tokens[%d]: %w", i, err)
		}
		out[key] = id
	}
	// Build a table once to catch short or malformed tokens here, with the
	// seed's positions, rather than at server start.
	if _, err := auth.NewTokens(out); err != nil {
		return nil, fmt.Errorf("seed: tokens: %w", err)
	}
	return out, nil
}

// parseEnum reads a protobuf enum value by its short name ("starttls",
// "rsa_sha256") or full name, case-insensitively. Empty is 0 (unspecified).
// A few short aliases are accepted where the full names are awkward.
func parseEnum(s, prefix string, values map[string]int32) (int32, error) {
	if s == "" {
		return 0, nil
	}
	name := strings.ToUpper(strings.TrimSpace(s))
	name = strings.ReplaceAll(name, "-", "_")
	aliases := map[string]string{"RSA": "RSA_SHA256", "ED25519": "ED25519_SHA256", "MX": "DIRECT_MX"}
	if a, ok := aliases[name]; ok {
		if _, known := values[prefix+a]; known {
			name = a
		}
	}
	if v, ok := values[prefix+name]; ok && v != 0 {
		return v, nil
	}
	if v, ok := values[name]; ok && v != 0 {
		return v, nil
	}
	var names []string
	for n, v := range values {
		if v != 0 {
			names = append(names, strings.ToLower(strings.TrimPrefix(n, prefix)))
		}
	}
	slices.Sort(names)
	return 0, fmt.Errorf("unknown value %q (want one of %s)", s, strings.Join(names, ", "))
}
