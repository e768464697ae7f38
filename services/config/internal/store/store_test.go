package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

const password = "s3cret-relay-password-7f1c"

func TestStore_SQLite(t *testing.T) {
	storeSuite(t, func(t *testing.T) string {
		return "sqlite://" + filepath.Join(t.TempDir(), "config.db")
	})
}

func TestStore_Postgres(t *testing.T) {
	storeSuite(t, func(t *testing.T) string { return testkit.Postgres(t) })
}

func testSealer(t *testing.T) *seal.Sealer {
	t.Helper()
	s, err := seal.New(map[byte][]byte{1: bytes.Repeat([]byte{7}, 32)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// storeSuite is the contract every database behind the store must meet.
func storeSuite(t *testing.T, newURL func(t *testing.T) string) {
	open := func(t *testing.T) *store.Store {
		t.Helper()
		s, err := store.Open(context.Background(), newURL(t), testSealer(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	ctx := context.Background()

	t.Run("tenants round trip and an unchanged update records nothing", func(t *testing.T) {
		s := open(t)
		in := tenant("acme")
		in.AdminEmails = []string{"ops@acme.example"}
		got, err := s.CreateTenant(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "ACME" || got.TimeZone != "Europe/Berlin" || len(got.AdminEmails) != 1 || got.CreateTime == nil {
			t.Errorf("created tenant = %v", got)
		}
		rev := revision(t, s)
		if _, err := s.UpdateTenant(ctx, tenant("acme")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UpdateTenant(ctx, tenant("acme")); err != nil {
			t.Fatal(err)
		}
		if r := revision(t, s); r != rev+1 {
			t.Errorf("revision after one real and one no-op update = %d, want %d", r, rev+1)
		}
		if _, err := s.CreateTenant(ctx, tenant("acme")); !isConflict(err) {
			t.Errorf("duplicate tenant: err = %v, want ConflictError", err)
		}
		if _, err := s.GetTenant(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("missing tenant: err = %v", err)
		}
	})

	t.Run("pagination walks every item once", func(t *testing.T) {
		s := open(t)
		for i := range 5 {
			mustTenant(t, s, fmt.Sprintf("t%d", i))
		}
		var seen []string
		page := store.Page{Limit: 2}
		for {
			items, next, err := s.ListTenants(ctx, page)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				seen = append(seen, it.Id)
			}
			if next == "" {
				break
			}
			page.After = next
		}
		if strings.Join(seen, ",") != "t0,t1,t2,t3,t4" {
			t.Errorf("pages = %v", seen)
		}
	})

	t.Run("domains reference a tenant, are unique, and respect the plan", func(t *testing.T) {
		s := open(t)
		mustTenant(t, s, "acme")
		small := tenant("small")
		small.Plan = &pb.PlanCaps{MaxDomains: 1}
		if _, err := s.CreateTenant(ctx, small); err != nil {
			t.Fatal(err)
		}

		_, err := s.CreateDomain(ctx, &pb.Domain{Id: "d0", TenantId: "ghost", Name: "ghost.example"}, nil)
		var fe *store.FieldError
		if !errors.As(err, &fe) || fe.Field != "domain.tenant_id" {
			t.Errorf("unknown tenant: err = %v", err)
		}
		for i := range store.DefaultMaxDomains {
			mustDomain(t, s, "acme", fmt.Sprintf("d%d.example", i))
		}
		_, err = s.CreateDomain(ctx, &pb.Domain{Id: "d6", TenantId: "acme", Name: "d6.example"}, nil)
		var pe *store.PreconditionError
		if !errors.As(err, &pe) || !strings.Contains(pe.Description, "plan.max_domains = 5") {
			t.Errorf("6th domain: err = %v, want plan cap", err)
		}
		_, err = s.CreateDomain(ctx, &pb.Domain{Id: "dup", TenantId: "small", Name: "d0.example"}, nil)
		if !isConflict(err) {
			t.Errorf("domain of another tenant: err = %v, want ConflictError", err)
		}
		mustDomain(t, s, "small", "small.example")
		if _, err := s.CreateDomain(ctx, &pb.Domain{Id: "s2", TenantId: "small", Name: "s2.example"}, nil); !errors.As(err, &pe) {
			t.Errorf("2nd domain with max_domains=1: err = %v", err)
		}
	})

	t.Run("DKIM keys are stored sealed and published", func(t *testing.T) {
		s := open(t)
		mustTenant(t, s, "acme")
		key, err := dkimkey.Generate(pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := dkimkey.MarshalPKCS8(key)
		pub, _ := dkimkey.PublicKeyValue(key)
		nk := store.NewDKIMKey{Selector: "mb1", Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256, PrivateKey: der, PublicKey: pub, Active: true}
		d, err := s.CreateDomain(ctx, &pb.Domain{Id: "d1", TenantId: "acme", Name: "acme.example", ReturnPathMode: pb.ReturnPathMode_RETURN_PATH_MODE_VERP}, []store.NewDKIMKey{nk})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.DkimKeys) != 1 || d.DkimKeys[0].DnsName != "mb1._domainkey.acme.example" || d.DkimKeys[0].DnsTxtValue != "v=DKIM1; k=ed25519; p="+pub {
			t.Errorf("keys = %v", d.DkimKeys)
		}
		if d.DkimKeys[0].PrivateKeyPem != "" {
			t.Error("private key returned")
		}
		got, err := s.DKIMPrivateKey(ctx, "d1", "mb1")
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("DKIMPrivateKey = %v", err)
		}
		if _, err := s.PutDKIMKey(ctx, "d1", nk); !isConflict(err) {
			t.Errorf("same selector twice: err = %v", err)
		}
		rev := revision(t, s)
		// Importing the same key again is a no-op; deactivating it is not.
		if _, err := s.UpdateDomain(ctx, d, []store.KeyUpdate{{Selector: "mb1", Active: true, New: &nk}}); err != nil {
			t.Fatal(err)
		}
		if revision(t, s) != rev {
			t.Error("re-importing the same key recorded a change")
		}
		d, err = s.UpdateDomain(ctx, d, []store.KeyUpdate{{Selector: "mb1", Active: false}})
		if err != nil || d.DkimKeys[0].Active {
			t.Errorf("deactivate: %v %v", d, err)
		}
		if _, err := s.UpdateDomain(ctx, d, []store.KeyUpdate{{Selector: "other"}}); err == nil {
			t.Error("activating a missing selector succeeded")
		}
		if err := s.DeleteDKIMKey(ctx, "d1", "mb1"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteDKIMKey(ctx, "d1", "mb1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleting twice: %v", err)
		}
		renamed := clone(d)
		renamed.Name = "other.example"
		if _, err := s.UpdateDomain(ctx, renamed, nil); err == nil {
			t.Error("renaming a domain succeeded")
		}
	})

	t.Run("relay secrets are sealed, never read back, and kept when left empty", func(t *testing.T) {
		s := open(t)
		mustTenant(t, s, "acme")
		mustDomain(t, s, "acme", "acme.example")
		r := relay("r1", "acme", "acme.example")
		r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "u", Password: password}
		got, err := s.CreateRelay(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if got.Auth.Password != "" || !got.Auth.HasPassword {
			t.Errorf("created relay auth = %v", got.Auth)
		}
		assertNoPlaintext(t, s, password)

		rev := revision(t, s)
		keep := relay("r1", "acme", "acme.example")
		keep.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "u"}
		if _, err := s.UpdateRelay(ctx, keep); err != nil {
			t.Fatal(err)
		}
		same := relay("r1", "acme", "acme.example")
		same.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "u", Password: password}
		if _, err := s.UpdateRelay(ctx, same); err != nil {
			t.Fatal(err)
		}
		if revision(t, s) != rev {
			t.Error("updates that change nothing recorded changes")
		}
		sec, err := s.GetRelaySecrets(ctx, "r1")
		if err != nil || sec.Password != password {
			t.Errorf("secrets = %+v, %v", sec, err)
		}

		none := relay("r1", "acme", "acme.example")
		got, err = s.UpdateRelay(ctx, none)
		if err != nil {
			t.Fatal(err)
		}
		if got.Auth.HasPassword || got.Auth.Mechanism != pb.AuthMechanism_AUTH_MECHANISM_NONE {
			t.Errorf("switching to no auth kept the password: %v", got.Auth)
		}
		needs := relay("r1", "acme", "acme.example")
		needs.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_LOGIN, Username: "u"}
		var fe *store.FieldError
		if _, err := s.UpdateRelay(ctx, needs); !errors.As(err, &fe) || fe.Field != "relay.auth.password" {
			t.Errorf("LOGIN without a stored password: err = %v", err)
		}
	})

	t.Run("relays reference their tenant's domains and respect the plan", func(t *testing.T) {
		s := open(t)
		mustTenant(t, s, "acme")
		mustTenant(t, s, "other")
		mustDomain(t, s, "acme", "acme.example")
		mustDomain(t, s, "other", "other.example")
		var fe *store.FieldError
		if _, err := s.CreateRelay(ctx, relay("x", "acme", "other.example")); !errors.As(err, &fe) || fe.Field != "relay.domains[0]" {
			t.Errorf("another tenant's domain: err = %v", err)
		}
		if _, err := s.CreateRelay(ctx, relay("x", "ghost", "acme.example")); !errors.As(err, &fe) || fe.Field != "relay.tenant_id" {
			t.Errorf("unknown tenant: err = %v", err)
		}
		// Writers race for the last slots; the cap holds exactly.
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			ok, capd int
		)
		for i := range 6 {
			wg.Go(func() {
				_, err := s.CreateRelay(ctx, relay(fmt.Sprintf("r%d", i), "acme", "acme.example"))
				var pe *store.PreconditionError
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.As(err, &pe):
					capd++
				default:
					t.Errorf("create relay: %v", err)
				}
			})
		}
		wg.Wait()
		if ok != store.DefaultMaxRelaysPerDomain || capd != 6-store.DefaultMaxRelaysPerDomain {
			t.Errorf("created %d, capped %d; want %d created", ok, capd, store.DefaultMaxRelaysPerDomain)
		}
		// Updating a relay that already serves the domain does not count it twice.
		relays, _, err := s.ListRelays(ctx, "acme", store.Page{Limit: 10})
		if err != nil || len(relays) != 3 {
			t.Fatalf("list = %v, %v", relays, err)
		}
		relays[0].Priority = 99
		if _, err := s.UpdateRelay(ctx, relays[0]); err != nil {
			t.Errorf("updating a relay at the cap: %v", err)
		}
		var pe *store.PreconditionError
		if err := s.DeleteDomain(ctx, mustDomainID(t, s, "acme.example")); !errors.As(err, &pe) {
			t.Errorf("deleting a domain in use: err = %v", err)
		}
	})

	t.Run("changes are recorded in order and deletes cascade", func(t *testing.T) {
		s := open(t)
		changed := s.Changed()
		mustTenant(t, s, "acme")
		select {
		case <-changed:
		default:
			t.Error("a write did not signal Changed")
		}
		mustDomain(t, s, "acme", "acme.example")
		if _, err := s.CreateRelay(ctx, relay("r1", "acme", "acme.example")); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteTenant(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		changes, err := s.Changes(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for i, c := range changes {
			if c.Revision != int64(i+1) {
				t.Errorf("change %d has revision %d", i, c.Revision)
			}
			got = append(got, fmt.Sprintf("%s/%s/%v", strings.TrimPrefix(c.Kind.String(), "CHANGE_KIND_"), c.TenantId, c.Deleted))
		}
		want := "TENANT/acme/false DOMAIN/acme/false RELAY/acme/false RELAY/acme/true DOMAIN/acme/true TENANT/acme/true"
		if strings.Join(got, " ") != want {
			t.Errorf("changes = %v\nwant      %v", got, want)
		}
		later, _ := s.Changes(ctx, 4, 100)
		if len(later) != 2 || later[0].Revision != 5 {
			t.Errorf("Changes(after 4) = %v", later)
		}
		snap, err := s.Snapshot(ctx, true)
		if err != nil || len(snap.Tenants)+len(snap.Domains)+len(snap.Relays) != 0 || snap.Revision != 6 {
			t.Errorf("snapshot after delete = %v, %v", snap, err)
		}
	})

	t.Run("snapshot carries sealed secrets only when asked", func(t *testing.T) {
		s := open(t)
		mustTenant(t, s, "acme")
		mustDomain(t, s, "acme", "acme.example")
		r := relay("r1", "acme", "acme.example")
		r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_LOGIN, Username: "u", Password: password}
		if _, err := s.CreateRelay(ctx, r); err != nil {
			t.Fatal(err)
		}
		with, err := s.Snapshot(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(with.Relays) != 1 || len(with.Relays[0].SealedPassword) == 0 || with.Relays[0].Relay.Domains[0] != "acme.example" {
			t.Fatalf("snapshot relays = %v", with.Relays)
		}
		if bytes.Contains(with.Relays[0].SealedPassword, []byte(password)) {
			t.Error("sealed password contains the plaintext")
		}
		without, _ := s.Snapshot(ctx, false)
		if len(without.Relays[0].SealedPassword) != 0 {
			t.Error("snapshot without secrets has a sealed password")
		}
	})

	t.Run("reseal moves every secret to the current key", func(t *testing.T) {
		url := newURL(t)
		oldKey := bytes.Repeat([]byte{7}, 32)
		newKey := bytes.Repeat([]byte{8}, 32)
		old, err := seal.New(map[byte][]byte{1: oldKey}, 1)
		if err != nil {
			t.Fatal(err)
		}
		s1, err := store.Open(ctx, url, old)
		if err != nil {
			t.Fatal(err)
		}
		mustTenant(t, s1, "acme")
		key, _ := dkimkey.Generate(pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256)
		der, _ := dkimkey.MarshalPKCS8(key)
		pub, _ := dkimkey.PublicKeyValue(key)
		if _, err := s1.CreateDomain(ctx, &pb.Domain{Id: "d1", TenantId: "acme", Name: "acme.example"},
			[]store.NewDKIMKey{{Selector: "s1", Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256, PrivateKey: der, PublicKey: pub, Active: true}}); err != nil {
			t.Fatal(err)
		}
		r := relay("r1", "acme", "acme.example")
		r.Auth = &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "u", Password: password}
		if _, err := s1.CreateRelay(ctx, r); err != nil {
			t.Fatal(err)
		}
		_ = s1.Close()

		rotating, _ := seal.New(map[byte][]byte{2: newKey, 1: oldKey}, 2)
		s2, err := store.Open(ctx, url, rotating)
		if err != nil {
			t.Fatal(err)
		}
		n, err := s2.Reseal(ctx)
		if err != nil || n != 2 {
			t.Fatalf("Reseal = %d, %v; want 2 secrets", n, err)
		}
		if n, err := s2.Reseal(ctx); err != nil || n != 0 {
			t.Errorf("second Reseal = %d, %v; want nothing to do", n, err)
		}
		_ = s2.Close()

		onlyNew, _ := seal.New(map[byte][]byte{2: newKey}, 2)
		s3, err := store.Open(ctx, url, onlyNew)
		if err != nil {
			t.Fatal(err)
		}
		defer s3.Close()
		if sec, err := s3.GetRelaySecrets(ctx, "r1"); err != nil || sec.Password != password {
			t.Errorf("relay secrets with only the new key: %+v, %v", sec, err)
		}
		if got, err := s3.DKIMPrivateKey(ctx, "d1", "s1"); err != nil || !bytes.Equal(got, der) {
			t.Errorf("DKIM key with only the new key: %v", err)
		}
	})

	t.Run("default server relay is kept, replaced and dropped", func(t *testing.T) {
		s := open(t)
		ids := 0
		newID := func() string { ids++; return fmt.Sprintf("gen%d", ids) }
		ds, err := s.GetDefaultServer(ctx)
		if err != nil || ds.Mode != pb.DefaultServerMode_DEFAULT_SERVER_MODE_UNSPECIFIED {
			t.Fatalf("unset default server = %v, %v", ds, err)
		}
		in := &pb.DefaultServer{Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY, Relay: &pb.Relay{
			Name: "system", Host: "smtp.example", Port: 587, Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS, Active: true,
			Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "u", Password: password},
		}}
		ds, err = s.SetDefaultServer(ctx, in, newID)
		if err != nil {
			t.Fatal(err)
		}
		if ds.Relay.GetId() != "gen1" || !ds.Relay.Auth.HasPassword || ds.Relay.Auth.Password != "" {
			t.Errorf("default server = %v", ds)
		}
		rev := revision(t, s)
		again := clone(in)
		again.Relay.Auth.Password = ""
		if _, err := s.SetDefaultServer(ctx, again, newID); err != nil {
			t.Fatal(err)
		}
		if revision(t, s) != rev {
			t.Error("setting the same default server recorded a change")
		}
		if relays, _, _ := s.ListRelays(ctx, "", store.Page{Limit: 10}); len(relays) != 0 {
			t.Errorf("the default relay is listed with tenant relays: %v", relays)
		}
		ds, err = s.SetDefaultServer(ctx, &pb.DefaultServer{Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX, HeloName: "mx.example"}, newID)
		if err != nil || ds.Relay != nil {
			t.Errorf("direct MX = %v, %v", ds, err)
		}
		if _, err := s.GetRelaySecrets(ctx, "gen1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the old default relay survived: %v", err)
		}
		assertNoPlaintext(t, s, password)
	})
}

func tenant(id string) *pb.Tenant {
	return &pb.Tenant{Id: id, Name: "ACME", TimeZone: "Europe/Berlin", DefaultFrom: "noreply", DomainAlias: "mail.mailbus.test",
		BounceDomain: "bounce.mailbus.test", Plan: &pb.PlanCaps{}, OverLimitPolicy: pb.OverLimitPolicy_OVER_LIMIT_POLICY_DEFER, Active: true}
}

func relay(id, tenantID, domain string) *pb.Relay {
	return &pb.Relay{Id: id, TenantId: tenantID, Name: "relay " + id, Host: "smtp.example", Port: 587,
		Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS, Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_NONE},
		Domains: []string{domain}, Priority: 10, Active: true, Kinds: []pb.EmailKind{pb.EmailKind_EMAIL_KIND_MASS}}
}

func mustTenant(t *testing.T, s *store.Store, id string) {
	t.Helper()
	if _, err := s.CreateTenant(context.Background(), tenant(id)); err != nil {
		t.Fatal(err)
	}
}

func mustDomain(t *testing.T, s *store.Store, tenantID, name string) {
	t.Helper()
	if _, err := s.CreateDomain(context.Background(), &pb.Domain{Id: "id-" + name, TenantId: tenantID, Name: name,
		ReturnPathMode: pb.ReturnPathMode_RETURN_PATH_MODE_VERP}, nil); err != nil {
		t.Fatal(err)
	}
}

func mustDomainID(t *testing.T, s *store.Store, name string) string {
	t.Helper()
	id, err := s.DomainIDByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func revision(t *testing.T, s *store.Store) int64 {
	t.Helper()
	r, err := s.Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func isConflict(err error) bool {
	var ce *store.ConflictError
	return errors.As(err, &ce)
}

// assertNoPlaintext scans every text column of the relays table for a secret.
func assertNoPlaintext(t *testing.T, s *store.Store, secret string) {
	t.Helper()
	rows, err := s.DB().QueryContext(context.Background(), `SELECT id, sealed_password, sealed_oauth_token, sealed_client_key, auth_username, name FROM relays`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var cols [6]string
		if err := rows.Scan(&cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5]); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(cols[:], "|"), secret) {
			t.Errorf("relay %s row holds the secret in plain text", cols[0])
		}
	}
}

func clone[T gproto.Message](m T) T { return gproto.Clone(m).(T) }
