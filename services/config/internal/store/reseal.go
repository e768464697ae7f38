package store

import (
	"context"
	"fmt"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
)

// Reseal re-seals every stored secret that was sealed with a key other than
// the sealer's current one, and returns how many it re-sealed. It records a
// change for each relay, domain or default server it touches, so that
// caches pick up the new sealed values.
//
// Key rotation: give every service MAILBUS_SECRET_KEY="2:<new>,1:<old>",
// let config reseal (Service.Start does), then drop the old key.
func (s *Store) Reseal(ctx context.Context) (int, error) {
	current := s.sealer.KeyID()
	stale := func(column string) bool {
		if column == "" {
			return false
		}
		id, ok := seal.KeyIDOf(unbase64(column))
		return !ok || id != current
	}
	n := 0
	err := s.write(ctx, func(ctx context.Context, w *writer) error {
		n = 0
		relays, err := queryRelayRows(ctx, w.tx, `SELECT `+relayColumns+` FROM relays ORDER BY id`)
		if err != nil {
			return err
		}
		for _, r := range relays {
			id := r.relay.Id
			touched := false
			for _, sec := range []struct{ column, name, value string }{
				{"sealed_password", configclient.SecretPassword, r.secrets.password},
				{"sealed_oauth_token", configclient.SecretOAuthToken, r.secrets.oauthToken},
				{"sealed_client_key", configclient.SecretClientKey, r.secrets.clientKey},
				{"sealed_oauth_client_secret", configclient.SecretOAuthClientSecret, r.secrets.oauthClientSecret},
				{"sealed_oauth_refresh_token", configclient.SecretOAuthRefreshToken, r.secrets.oauthRefreshToken},
			} {
				if !stale(sec.value) {
					continue
				}
				aad := configclient.RelaySecretAAD(id, sec.name)
				plain, err := s.open(sec.value, aad)
				if err != nil {
					return fmt.Errorf("opening %s of relay %s: %w", sec.name, id, err)
				}
				sealed, err := s.seal(plain, aad)
				if err != nil {
					return err
				}
				if _, err := w.tx.ExecContext(ctx, `UPDATE relays SET `+sec.column+` = ? WHERE id = ?`, sealed, id); err != nil {
					return fmt.Errorf("resealing relay %s: %w", id, err)
				}
				touched = true
				n++
			}
			if !touched {
				continue
			}
			kind, changeID := pb.ChangeKind_CHANGE_KIND_RELAY, id
			if r.relay.TenantId == "" {
				kind, changeID = pb.ChangeKind_CHANGE_KIND_DEFAULT_SERVER, defaultServerID
			}
			if err := w.change(ctx, kind, changeID, r.relay.TenantId, false); err != nil {
				return err
			}
		}

		domains, err := queryDomains(ctx, w.tx, `SELECT `+domainColumns+` FROM domains ORDER BY id`)
		if err != nil {
			return err
		}
		names := make(map[string]string, len(domains))
		for _, d := range domains {
			names[d.Id] = d.Name
		}
		keys, err := loadKeys(ctx, w.tx, names, nil)
		if err != nil {
			return err
		}
		for _, d := range domains {
			touched := false
			for _, k := range keys[d.Id] {
				if !stale(k.sealed) {
					continue
				}
				aad := configclient.DKIMKeyAAD(d.Name, k.key.Selector)
				der, err := s.sealer.Open(unbase64(k.sealed), aad)
				if err != nil {
					return fmt.Errorf("opening DKIM key %s of %s: %w", k.key.Selector, d.Name, err)
				}
				sealed, err := s.sealer.Seal(der, aad)
				if err != nil {
					return err
				}
				if _, err := w.tx.ExecContext(ctx, `UPDATE dkim_keys SET sealed_private_key = ? WHERE domain_id = ? AND selector = ?`,
					encode(sealed), d.Id, k.key.Selector); err != nil {
					return fmt.Errorf("resealing DKIM key %s of %s: %w", k.key.Selector, d.Name, err)
				}
				touched = true
				n++
			}
			if touched {
				if err := w.change(ctx, pb.ChangeKind_CHANGE_KIND_DOMAIN, d.Id, d.TenantId, false); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}
