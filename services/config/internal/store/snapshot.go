package store

import (
	"context"
	"fmt"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// Snapshot returns the whole configuration at one revision. With
// withSecrets, relays and DKIM keys carry their sealed secrets; without, the
// sealed fields are empty.
func (s *Store) Snapshot(ctx context.Context, withSecrets bool) (*pb.GetSnapshotResponse, error) {
	out := &pb.GetSnapshotResponse{}
	err := s.db.InReadTx(ctx, func(tx *sqlstore.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT revision FROM config_revision WHERE id = 1`).Scan(&out.Revision); err != nil {
			return fmt.Errorf("reading revision: %w", err)
		}

		rows, err := tx.QueryContext(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY id`)
		if err != nil {
			return fmt.Errorf("reading tenants: %w", err)
		}
		for rows.Next() {
			t, err := scanTenant(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("reading tenants: %w", err)
			}
			out.Tenants = append(out.Tenants, t)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading tenants: %w", err)
		}

		out.Domains, err = queryDomains(ctx, tx, `SELECT `+domainColumns+` FROM domains ORDER BY id`)
		if err != nil {
			return err
		}
		names := make(map[string]string, len(out.Domains))
		for _, d := range out.Domains {
			names[d.Id] = d.Name
		}
		keys, err := loadKeys(ctx, tx, names, nil)
		if err != nil {
			return err
		}
		for _, d := range out.Domains {
			for _, k := range keys[d.Id] {
				d.DkimKeys = append(d.DkimKeys, k.key)
				sk := &pb.SealedDkimKey{Domain: d.Name, Key: k.key}
				if withSecrets {
					sk.SealedPrivateKey = unbase64(k.sealed)
				}
				out.DkimKeys = append(out.DkimKeys, sk)
			}
		}

		relays, err := queryRelayRows(ctx, tx, `SELECT `+relayColumns+` FROM relays WHERE tenant_id IS NOT NULL ORDER BY id`)
		if err != nil {
			return err
		}
		for _, r := range relays {
			out.Relays = append(out.Relays, sealedRelay(r, withSecrets))
		}

		d, err := getDefaultRow(ctx, tx)
		if err != nil {
			return err
		}
		out.DefaultServer = d.server()
		if d.relay != nil {
			out.DefaultRelay = sealedRelay(d.relay, withSecrets)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading snapshot: %w", err)
	}
	return out, nil
}

func sealedRelay(r *relayRow, withSecrets bool) *pb.SealedRelay {
	out := &pb.SealedRelay{Relay: r.relay}
	if withSecrets {
		out.SealedPassword = unbase64(r.secrets.password)
		out.SealedOauthToken = unbase64(r.secrets.oauthToken)
		out.SealedClientKey = unbase64(r.secrets.clientKey)
		out.SealedOauthClientSecret = unbase64(r.secrets.oauthClientSecret)
		out.SealedOauthRefreshToken = unbase64(r.secrets.oauthRefreshToken)
	}
	return out
}
