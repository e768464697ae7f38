package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math"
	"net"
	"net/mail"
	"net/url"
	"regexp"
	"strings"
	"time"
	_ "time/tzdata" // time zones must validate in minimal containers without /usr/share/zoneinfo

	"golang.org/x/net/idna"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

// violations collects field violations of one request, so that a client
// learns about every problem at once.
type violations struct {
	list []*errdetails.BadRequest_FieldViolation
}

func (v *violations) add(field, format string, args ...any) {
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns an InvalidArgument status with a BadRequest detail and a
// message that lists every violation as "field: reason", or nil.
func (v *violations) err() error {
	if len(v.list) == 0 {
		return nil
	}
	return invalidArgument(v.list...)
}

func invalidArgument(list ...*errdetails.BadRequest_FieldViolation) error {
	msgs := make([]string, len(list))
	for i, fv := range list {
		msgs[i] = fv.Field + ": " + fv.Description
	}
	st := status.New(codes.InvalidArgument, strings.Join(msgs, "; "))
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: list}); err == nil {
		st = withDetails
	}
	return st.Err()
}

var (
	idPattern        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	labelPattern     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	allDigitsPattern = regexp.MustCompile(`^[0-9]+$`)
)

// checkID validates a resource id; an empty id is allowed when the store
// will generate one.
func checkID(v *violations, field, id string, required bool) {
	switch {
	case id == "" && required:
		v.add(field, "required")
	case id != "" && !idPattern.MatchString(id):
		v.add(field, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, got %q", id)
	}
}

// normalizeDomain returns the lower-case ASCII (punycode) form of a domain
// name, or an error saying what is wrong with it. minLabels is 2 for mail
// domains and 1 for host names (compose service names, localhost).
func normalizeDomain(name string, minLabels int) (string, error) {
	if name == "" {
		return "", fmt.Errorf("required")
	}
	ascii, err := idna.Lookup.ToASCII(strings.TrimSpace(name))
	if err != nil {
		return "", fmt.Errorf("%q is not a valid domain name: %v", name, err)
	}
	ascii = strings.ToLower(ascii)
	if len(ascii) > 253 {
		return "", fmt.Errorf("%q is longer than 253 characters", name)
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < minLabels {
		return "", fmt.Errorf("%q is not a fully qualified domain name", name)
	}
	for _, l := range labels {
		if !labelPattern.MatchString(l) {
			return "", fmt.Errorf("%q is not a valid domain name (label %q)", name, l)
		}
	}
	if allDigitsPattern.MatchString(labels[len(labels)-1]) {
		return "", fmt.Errorf("%q is not a valid domain name (numeric top-level label)", name)
	}
	return ascii, nil
}

func checkDomain(v *violations, field string, name *string, required bool) {
	if *name == "" && !required {
		return
	}
	n, err := normalizeDomain(*name, 2)
	if err != nil {
		v.add(field, "%s", err)
		return
	}
	*name = n
}

// normalizeAddress returns a bare address (local@domain) with the domain in
// lower case.
func normalizeAddress(s string) (string, error) {
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Name != "" || addr.Address != strings.TrimSpace(s) {
		return "", fmt.Errorf("%q is not an email address (want local@domain)", s)
	}
	local, domain, _ := strings.Cut(addr.Address, "@")
	d, err := normalizeDomain(domain, 2)
	if err != nil {
		return "", fmt.Errorf("%q: domain %w", s, err)
	}
	return local + "@" + d, nil
}

func checkAddress(v *violations, field string, s *string) {
	a, err := normalizeAddress(*s)
	if err != nil {
		v.add(field, "%s", err)
		return
	}
	*s = a
}

func checkNonNegative[T int32 | int64](v *violations, field string, n T) {
	if n < 0 {
		v.add(field, "must not be negative, got %d", n)
	}
}

// validateTenant checks and normalises a tenant in place.
func validateTenant(t *pb.Tenant, create bool) error {
	var v violations
	checkID(&v, "tenant.id", t.Id, !create)
	if strings.TrimSpace(t.Name) == "" {
		v.add("tenant.name", "required")
	}
	if t.TimeZone == "" {
		t.TimeZone = "UTC"
	}
	if t.TimeZone == "Local" {
		v.add("tenant.time_zone", `"Local" depends on the server; give an IANA zone such as Europe/Berlin`)
	} else if _, err := time.LoadLocation(t.TimeZone); err != nil {
		v.add("tenant.time_zone", "unknown time zone %q (want an IANA zone such as Europe/Berlin)", t.TimeZone)
	}
	checkNonNegative(&v, "tenant.daily_limit", t.DailyLimit)
	if t.DefaultFrom != "" {
		if _, err := mail.ParseAddress(t.DefaultFrom + "@example.com"); err != nil || strings.ContainsAny(t.DefaultFrom, "@ <>") {
			v.add("tenant.default_from", "%q is not a valid local part", t.DefaultFrom)
		}
	}
	checkDomain(&v, "tenant.domain_alias", &t.DomainAlias, false)
	checkDomain(&v, "tenant.bounce_domain", &t.BounceDomain, false)
	if t.Plan == nil {
		t.Plan = &pb.PlanCaps{}
	}
	checkNonNegative(&v, "tenant.plan.max_relays_per_domain", t.Plan.MaxRelaysPerDomain)
	checkNonNegative(&v, "tenant.plan.max_domains", t.Plan.MaxDomains)
	switch t.OverLimitPolicy {
	case pb.OverLimitPolicy_OVER_LIMIT_POLICY_UNSPECIFIED:
		t.OverLimitPolicy = pb.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER
	case pb.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER, pb.OverLimitPolicy_OVER_LIMIT_POLICY_REFUSE:
	default:
		v.add("tenant.over_limit_policy", "unknown policy %d", t.OverLimitPolicy)
	}
	for i := range t.AdminEmails {
		checkAddress(&v, fmt.Sprintf("tenant.admin_emails[%d]", i), &t.AdminEmails[i])
	}
	checkNonNegative(&v, "tenant.soft_bounce_threshold", t.SoftBounceThreshold)
	checkNonNegative(&v, "tenant.soft_bounce_window_days", t.SoftBounceWindowDays)
	t.CreateTime, t.UpdateTime = nil, nil
	return v.err()
}

// validateDomain checks and normalises a domain in place and turns its
// dkim_keys into key writes: on create every key must be an import
// (private_key_pem); on update a key without private_key_pem sets the
// active flag of the stored key under its selector.
func validateDomain(d *pb.Domain, create bool) ([]store.KeyUpdate, error) {
	var v violations
	checkID(&v, "domain.id", d.Id, !create)
	if d.TenantId == "" {
		v.add("domain.tenant_id", "required")
	}
	checkDomain(&v, "domain.name", &d.Name, true)
	switch d.ReturnPathMode {
	case pb.ReturnPathMode_RETURN_PATH_MODE_UNSPECIFIED:
		d.ReturnPathMode = pb.ReturnPathMode_RETURN_PATH_MODE_VERP
		d.CustomReturnPath = ""
	case pb.ReturnPathMode_RETURN_PATH_MODE_VERP, pb.ReturnPathMode_RETURN_PATH_MODE_FROM:
		d.CustomReturnPath = ""
	case pb.ReturnPathMode_RETURN_PATH_MODE_CUSTOM:
		if d.CustomReturnPath == "" {
			v.add("domain.custom_return_path", "required when return_path_mode is CUSTOM")
		} else {
			checkAddress(&v, "domain.custom_return_path", &d.CustomReturnPath)
		}
	default:
		v.add("domain.return_path_mode", "unknown mode %d", d.ReturnPathMode)
	}
	var updates []store.KeyUpdate
	seen := map[string]bool{}
	for i, k := range d.DkimKeys {
		field := fmt.Sprintf("domain.dkim_keys[%d]", i)
		sel := strings.ToLower(strings.TrimSpace(k.Selector))
		if !dkimkey.ValidSelector(sel) {
			v.add(field+".selector", "%q is not a valid selector (DNS labels: letters, digits, '-')", k.Selector)
			continue
		}
		if seen[sel] {
			v.add(field+".selector", "selector %q is given twice", sel)
			continue
		}
		seen[sel] = true
		u := store.KeyUpdate{Selector: sel, Active: k.Active}
		if k.PrivateKeyPem == "" {
			if create {
				v.add(field+".private_key_pem", "required to import a key when creating a domain; or generate one with GenerateDkimKey")
				continue
			}
			updates = append(updates, u)
			continue
		}
		nk, err := importKey(sel, k.PrivateKeyPem, k.Active)
		if err != nil {
			v.add(field+".private_key_pem", "%s", err)
			continue
		}
		if k.Algorithm != pb.DkimAlgorithm_DKIM_ALGORITHM_UNSPECIFIED && k.Algorithm != nk.Algorithm {
			v.add(field+".algorithm", "is %s but the key is %s", k.Algorithm, nk.Algorithm)
			continue
		}
		u.New = nk
		updates = append(updates, u)
	}
	d.DkimKeys, d.CreateTime, d.UpdateTime = nil, nil, nil
	return updates, v.err()
}

func importKey(selector, pemText string, active bool) (*store.NewDKIMKey, error) {
	signer, alg, err := dkimkey.ParsePrivateKeyPEM(pemText)
	if err != nil {
		return nil, err
	}
	der, err := dkimkey.MarshalPKCS8(signer)
	if err != nil {
		return nil, err
	}
	pub, err := dkimkey.PublicKeyValue(signer)
	if err != nil {
		return nil, err
	}
	return &store.NewDKIMKey{Selector: selector, Algorithm: alg, PrivateKey: der, PublicKey: pub, Active: active}, nil
}

// validateRelay checks and normalises a relay in place. prefix names the
// relay in field paths ("relay", "server.relay"). system relays (the default
// server's) have no tenant, From filter, kinds or domains.
func validateRelay(r *pb.Relay, prefix string, create, system bool) error {
	var v violations
	f := func(name string) string { return prefix + "." + name }
	checkID(&v, f("id"), r.Id, !create && !system)
	if strings.TrimSpace(r.Name) == "" {
		v.add(f("name"), "required")
	}
	if r.Host == "" {
		v.add(f("host"), "required")
	} else if ip := net.ParseIP(r.Host); ip == nil {
		if h, err := normalizeDomain(r.Host, 1); err != nil {
			v.add(f("host"), "not a host name or IP address: %s", err)
		} else {
			r.Host = h
		}
	}
	if r.Port < 1 || r.Port > 65535 {
		v.add(f("port"), "must be 1-65535, got %d", r.Port)
	}
	switch r.Security {
	case pb.RelaySecurity_RELAY_SECURITY_NONE, pb.RelaySecurity_RELAY_SECURITY_STARTTLS, pb.RelaySecurity_RELAY_SECURITY_TLS:
	case pb.RelaySecurity_RELAY_SECURITY_UNSPECIFIED:
		v.add(f("security"), "required: NONE, STARTTLS or TLS")
	default:
		v.add(f("security"), "unknown security mode %d (want NONE, STARTTLS or TLS)", r.Security)
	}
	validateAuth(&v, r, prefix, create)
	if system {
		r.TenantId, r.FromFilter, r.Kinds, r.Domains = "", "", nil, nil
	} else {
		if r.TenantId == "" {
			v.add(f("tenant_id"), "required")
		}
		validateFromFilter(&v, f("from_filter"), &r.FromFilter)
		seenKinds := map[pb.EmailKind]bool{}
		kinds := r.Kinds[:0]
		for i, k := range r.Kinds {
			if _, known := pb.EmailKind_name[int32(k)]; !known || k == pb.EmailKind_EMAIL_KIND_UNSPECIFIED {
				v.add(fmt.Sprintf("%s[%d]", f("kinds"), i), "unknown email kind %d", k)
				continue
			}
			if !seenKinds[k] {
				seenKinds[k] = true
				kinds = append(kinds, k)
			}
		}
		r.Kinds = kinds
		if len(r.Domains) == 0 {
			v.add(f("domains"), "at least one of the tenant's domains is required")
		}
		seenDomains := map[string]bool{}
		domains := r.Domains[:0]
		for i := range r.Domains {
			d := r.Domains[i]
			checkDomain(&v, fmt.Sprintf("%s[%d]", f("domains"), i), &d, true)
			if !seenDomains[d] {
				seenDomains[d] = true
				domains = append(domains, d)
			}
		}
		r.Domains = domains
	}
	if r.Priority < 0 {
		v.add(f("priority"), "must not be negative, got %d", r.Priority)
	}
	checkNonNegative(&v, f("daily_limit"), r.DailyLimit)
	if r.RatePerSecond < 0 || math.IsNaN(r.RatePerSecond) || math.IsInf(r.RatePerSecond, 0) {
		v.add(f("rate_per_second"), "must be a non-negative number, got %v", r.RatePerSecond)
	}
	if r.MaxConnections < 0 || r.MaxConnections > maxRelayConnections {
		v.add(f("max_connections"), "must be 0 (the default) to %d, got %d", maxRelayConnections, r.MaxConnections)
	}
	r.CreateTime, r.UpdateTime = nil, nil
	return v.err()
}

func validateFromFilter(v *violations, field string, filter *string) {
	s := strings.TrimSpace(*filter)
	switch {
	case s == "":
		*filter = ""
	case strings.Contains(s, "@"):
		a, err := normalizeAddress(s)
		if err != nil {
			v.add(field, "must be a domain (acme.example) or an address (news@acme.example), got %q", *filter)
			return
		}
		*filter = a
	default:
		d, err := normalizeDomain(s, 2)
		if err != nil {
			v.add(field, "must be a domain (acme.example) or an address (news@acme.example), got %q", *filter)
			return
		}
		*filter = d
	}
}

// validateAuth checks a relay's authentication. Secrets are required on
// create; on update an empty secret keeps the stored one (the store checks
// that there is one).
func validateAuth(v *violations, r *pb.Relay, prefix string, create bool) {
	if r.Auth == nil {
		r.Auth = &pb.RelayAuth{}
	}
	a := r.Auth
	f := func(name string) string { return prefix + ".auth." + name }
	a.HasPassword, a.HasOauthToken, a.HasClientKey = false, false, false
	mech := a.Mechanism
	if mech == pb.AuthMechanism_AUTH_MECHANISM_UNSPECIFIED {
		mech = pb.AuthMechanism_AUTH_MECHANISM_NONE
		a.Mechanism = mech
	}
	name := strings.TrimPrefix(mech.String(), "AUTH_MECHANISM_")
	credentialsInClear := false
	if mech != pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2 {
		a.Oauth = nil
	}
	switch mech {
	case pb.AuthMechanism_AUTH_MECHANISM_NONE:
		a.Username, a.Password, a.OauthToken, a.ClientCertPem, a.ClientKeyPem = "", "", "", "", ""
	case pb.AuthMechanism_AUTH_MECHANISM_PLAIN, pb.AuthMechanism_AUTH_MECHANISM_LOGIN, pb.AuthMechanism_AUTH_MECHANISM_CRAM_MD5:
		if a.Username == "" {
			v.add(f("username"), "required for %s", name)
		}
		if a.Password == "" && create {
			v.add(f("password"), "required for %s", name)
		}
		a.OauthToken, a.ClientCertPem, a.ClientKeyPem = "", "", ""
		// CRAM-MD5 never sends the password itself.
		credentialsInClear = mech != pb.AuthMechanism_AUTH_MECHANISM_CRAM_MD5
	case pb.AuthMechanism_AUTH_MECHANISM_XOAUTH2:
		if a.Username == "" {
			v.add(f("username"), "required for XOAUTH2 (the mailbox the token belongs to)")
		}
		validateOAuthClient(v, a, f)
		if a.OauthToken == "" && create && a.Oauth == nil {
			v.add(f("oauth_token"), "required for XOAUTH2 unless oauth (a client that refreshes tokens) is set")
		}
		a.Password, a.ClientCertPem, a.ClientKeyPem = "", "", ""
		credentialsInClear = true
	case pb.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT:
		a.Password, a.OauthToken = "", ""
		if r.Security == pb.RelaySecurity_RELAY_SECURITY_NONE {
			v.add(prefix+".security", "a client certificate needs STARTTLS or TLS")
		}
		validateClientCert(v, a, f, create)
	default:
		v.add(f("mechanism"), "unknown mechanism %d", mech)
	}
	if credentialsInClear && r.Security == pb.RelaySecurity_RELAY_SECURITY_NONE && !r.AllowPlaintextAuth {
		v.add(prefix+".security", "%s over an unencrypted connection would send credentials in clear text; use STARTTLS or TLS, or set allow_plaintext_auth", name)
	}
}

// validateOAuthClient checks an XOAUTH2 relay's OAuth client: a client id
// and a token endpoint, from the provider preset or given. An empty client
// becomes none.
func validateOAuthClient(v *violations, a *pb.RelayAuth, f func(string) string) {
	o := a.Oauth
	if o == nil {
		return
	}
	o.HasClientSecret, o.HasRefreshToken = false, false
	o.Provider = strings.ToLower(strings.TrimSpace(o.Provider))
	if proto.Size(o) == 0 {
		a.Oauth = nil
		return
	}
	if o.ClientId == "" {
		v.add(f("oauth.client_id"), "required for an OAuth client")
	}
	if _, err := oauthtoken.Endpoint(o); err != nil {
		v.add(f("oauth"), "%s", err)
	}
	for _, u := range []struct{ name, value string }{{"auth_url", o.AuthUrl}, {"token_url", o.TokenUrl}} {
		if u.value == "" {
			continue
		}
		if pu, err := url.Parse(u.value); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			v.add(f("oauth."+u.name), "%q is not an http(s) URL", u.value)
		}
	}
}

func validateClientCert(v *violations, a *pb.RelayAuth, f func(string) string, create bool) {
	certOK := false
	if a.ClientCertPem == "" {
		v.add(f("client_cert_pem"), "required for CLIENT_CERT")
	} else if block, _ := pem.Decode([]byte(a.ClientCertPem)); block == nil || block.Type != "CERTIFICATE" {
		v.add(f("client_cert_pem"), "not a PEM certificate")
	} else if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		v.add(f("client_cert_pem"), "cannot parse certificate: %v", err)
	} else {
		certOK = true
	}
	switch {
	case a.ClientKeyPem == "" && create:
		v.add(f("client_key_pem"), "required for CLIENT_CERT")
	case a.ClientKeyPem != "" && certOK:
		if _, err := tls.X509KeyPair([]byte(a.ClientCertPem), []byte(a.ClientKeyPem)); err != nil {
			v.add(f("client_key_pem"), "not a private key matching client_cert_pem: %v", err)
		}
	case a.ClientKeyPem != "":
		if block, _ := pem.Decode([]byte(a.ClientKeyPem)); block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			v.add(f("client_key_pem"), "not a PEM private key")
		}
	}
}

// validateDefaultServer checks and normalises a default server in place.
func validateDefaultServer(ds *pb.DefaultServer) error {
	var v violations
	switch ds.Mode {
	case pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY:
		if ds.Relay == nil {
			v.add("server.relay", "required when mode is RELAY")
		} else if err := validateRelay(ds.Relay, "server.relay", true, true); err != nil {
			// Secrets may be left empty to keep the stored ones; the store
			// decides. Drop only those violations.
			for _, fv := range badRequest(err) {
				if !isSecretField(fv.Field) {
					v.list = append(v.list, fv)
				}
			}
		}
	case pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX:
		ds.Relay = nil
	case pb.DefaultServerMode_DEFAULT_SERVER_MODE_UNSPECIFIED:
		v.add("server.mode", "required: RELAY or DIRECT_MX")
	default:
		v.add("server.mode", "unknown mode %d", ds.Mode)
	}
	if ds.HeloName != "" {
		h, err := normalizeDomain(ds.HeloName, 2)
		if err != nil {
			v.add("server.helo_name", "%s", err)
		} else {
			ds.HeloName = h
		}
	}
	return v.err()
}

func isSecretField(field string) bool {
	return strings.HasSuffix(field, ".auth.password") || strings.HasSuffix(field, ".auth.oauth_token") || strings.HasSuffix(field, ".auth.client_key_pem") ||
		strings.HasSuffix(field, ".auth.oauth.client_secret") || strings.HasSuffix(field, ".auth.oauth.refresh_token")
}

// badRequest returns the field violations of an InvalidArgument status.
func badRequest(err error) []*errdetails.BadRequest_FieldViolation {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return br.FieldViolations
		}
	}
	return nil
}

// pageToken encodes the last id of a page.
func pageToken(after string) string {
	if after == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(after))
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
	// maxRelayConnections bounds a relay's max_connections: far beyond
	// what any relay allows one client, and every connection of every
	// sender replica holds a lease in Redis.
	maxRelayConnections = 1000
)

// page decodes a page request.
func page(size int32, token string) (store.Page, error) {
	var v violations
	if size < 0 {
		v.add("page_size", "must not be negative, got %d", size)
	}
	after, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		v.add("page_token", "invalid; pass next_page_token of the previous response")
	}
	if err := v.err(); err != nil {
		return store.Page{}, err
	}
	limit := int(size)
	switch {
	case limit == 0:
		limit = defaultPageSize
	case limit > maxPageSize:
		limit = maxPageSize
	}
	return store.Page{After: string(after), Limit: limit}, nil
}

func clone[T proto.Message](m T) T { return proto.Clone(m).(T) }
