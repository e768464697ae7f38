// Package store keeps the webhook service's endpoints and its outbox in
// SQLite or PostgreSQL (pkg/sqlstore).
//
// The outbox has one row per (endpoint, event), unique on the webhook id,
// so a Kafka record delivered twice enqueues its webhooks once. A row is
// due (state 0) until it is delivered (1) or gives up (2, a dead letter).
// A dispatcher claims due rows by leasing them (lease_ns): a crashed
// dispatcher's rows become due again when the lease ends, and two
// replicas never post the same row at once. A row is claimable only when
// no earlier row of the same message to the same endpoint is still due,
// which keeps each message's events in order at the receiver: a row is
// enqueued ready only when its message has no due row to that endpoint,
// and finishing a row makes the message's next due row ready. So a claim
// reads only ready rows, from one index range, however many rows wait
// behind them.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// Component is the name under which the webhook service's migrations are
// recorded in schema_migrations.
const Component = "webhook"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate brings the schema up to date; safe from several replicas at once.
func Migrate(ctx context.Context, db *sqlstore.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrating the webhook store: %w", err)
	}
	if err := sqlstore.Migrate(ctx, db, Component, sub); err != nil {
		return fmt.Errorf("migrating the webhook store: %w", err)
	}
	return nil
}

// ErrNotFound is returned for an endpoint that does not exist.
var ErrNotFound = errors.New("webhook endpoint not found")

// Outbox row states.
const (
	StateDue       = 0
	StateDelivered = 1
	StateDead      = 2
)

// Store is the endpoints and the outbox. It is safe for concurrent use.
type Store struct {
	db *sqlstore.DB
	// writes serialises this process's outbox writes on SQLite, which has
	// one writer at a time anyway: waiting here hands the lock over at
	// once, where SQLite's busy handler would sleep (up to 100ms a try)
	// while the lanes, the fan-out and the result writer contend for it.
	writes sync.Mutex
}

// New returns a store on db, whose schema Migrate brought up to date.
func New(db *sqlstore.DB) *Store { return &Store{db: db} }

// write runs fn holding the SQLite write turn; on PostgreSQL, writers run
// at once.
func (s *Store) write(fn func() error) error {
	if s.db.Dialect() == sqlstore.SQLite {
		s.writes.Lock()
		defer s.writes.Unlock()
	}
	return fn()
}

// Endpoint is a stored endpoint; its secrets are sealed.
type Endpoint struct {
	ID, TenantID, URL, Description string
	EventTypes                     []string
	FinalOnly, Active              bool
	SealedSecret                   []byte
	// SealedPrevious signs too until PreviousExpire (after a rotation).
	SealedPrevious   []byte
	PreviousExpire   time.Time
	Created, Updated time.Time
}

const endpointCols = `id, tenant_id, url, description, event_types, final_only, active,
	sealed_secret, sealed_previous, previous_expire_ns, create_ns, update_ns`

func scanEndpoint(sc interface{ Scan(...any) error }) (Endpoint, error) {
	var e Endpoint
	var types string
	var prevNS, createNS, updateNS int64
	if err := sc.Scan(&e.ID, &e.TenantID, &e.URL, &e.Description, &types, &e.FinalOnly, &e.Active,
		&e.SealedSecret, &e.SealedPrevious, &prevNS, &createNS, &updateNS); err != nil {
		return e, err
	}
	if types != "" {
		e.EventTypes = strings.Split(types, ",")
	}
	if prevNS != 0 {
		e.PreviousExpire = time.Unix(0, prevNS)
	}
	e.Created, e.Updated = time.Unix(0, createNS), time.Unix(0, updateNS)
	return e, nil
}

// CreateEndpoint stores a new endpoint.
func (s *Store) CreateEndpoint(ctx context.Context, e Endpoint) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO webhook_endpoints (`+endpointCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.TenantID, e.URL, e.Description, strings.Join(e.EventTypes, ","), e.FinalOnly, e.Active,
		e.SealedSecret, e.SealedPrevious, unixNano(e.PreviousExpire), e.Created.UnixNano(), e.Updated.UnixNano())
	if err != nil {
		return fmt.Errorf("store webhook endpoint %s: %w", e.ID, err)
	}
	return nil
}

// GetEndpoint reads one endpoint.
func (s *Store) GetEndpoint(ctx context.Context, id string) (Endpoint, error) {
	e, err := scanEndpoint(s.db.QueryRowContext(ctx, `SELECT `+endpointCols+` FROM webhook_endpoints WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return e, ErrNotFound
	}
	if err != nil {
		return e, fmt.Errorf("read webhook endpoint %s: %w", id, err)
	}
	return e, nil
}

// UpdateEndpoint changes an endpoint's settings (not its secrets).
func (s *Store) UpdateEndpoint(ctx context.Context, e Endpoint) error {
	res, err := s.db.ExecContext(ctx, `UPDATE webhook_endpoints SET url = ?, description = ?, event_types = ?,
		final_only = ?, active = ?, update_ns = ? WHERE id = ?`,
		e.URL, e.Description, strings.Join(e.EventTypes, ","), e.FinalOnly, e.Active, e.Updated.UnixNano(), e.ID)
	return oneRow(res, err, "update webhook endpoint "+e.ID)
}

// RotateSecret replaces an endpoint's secret, keeping the previous one
// until prevExpire.
func (s *Store) RotateSecret(ctx context.Context, id string, sealedNew, sealedPrev []byte, prevExpire, now time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE webhook_endpoints SET sealed_secret = ?, sealed_previous = ?,
		previous_expire_ns = ?, update_ns = ? WHERE id = ?`,
		sealedNew, sealedPrev, unixNano(prevExpire), now.UnixNano(), id)
	return oneRow(res, err, "rotate the secret of webhook endpoint "+id)
}

// DeleteEndpoint deletes an endpoint and its outbox rows.
func (s *Store) DeleteEndpoint(ctx context.Context, id string) error {
	return s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
		// Explicit rather than ON DELETE CASCADE alone: SQLite enforces
		// foreign keys only on connections that turned them on.
		if _, err := tx.ExecContext(ctx, `DELETE FROM webhook_deliveries WHERE endpoint_id = ?`, id); err != nil {
			return fmt.Errorf("delete deliveries of webhook endpoint %s: %w", id, err)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM webhook_endpoints WHERE id = ?`, id)
		return oneRow(res, err, "delete webhook endpoint "+id)
	})
}

// ListEndpoints lists a tenant's endpoints, or every endpoint when
// tenantID is empty, by id.
func (s *Store) ListEndpoints(ctx context.Context, tenantID string) ([]Endpoint, error) {
	q, args := `SELECT `+endpointCols+` FROM webhook_endpoints`, []any{}
	if tenantID != "" {
		q, args = q+` WHERE tenant_id = ?`, append(args, tenantID)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	defer rows.Close()
	var out []Endpoint
	for rows.Next() {
		e, err := scanEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook endpoints: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	return out, nil
}

// Row is an outbox row to enqueue.
type Row struct {
	WebhookID, EndpointID, TenantID, MessageID string
	// Event is the mailbus.v1.DeliveryEvent as protobuf.
	Event []byte
	// Body is the JSON posted and signed.
	Body []byte
}

// Enqueue adds rows in one transaction and returns how many were new; a
// row whose (endpoint, webhook id) is already there is left as it is.
func (s *Store) Enqueue(ctx context.Context, rows []Row, now time.Time) (int, error) {
	n := 0
	err := s.write(func() error {
		return s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
			return s.enqueue(ctx, tx, rows, now, &n)
		})
	})
	return n, err
}

func (s *Store) enqueue(ctx context.Context, tx *sqlstore.Tx, rows []Row, now time.Time, n *int) error {
	*n = 0
	for _, r := range rows {
		res, err := tx.ExecContext(ctx, `INSERT INTO webhook_deliveries
			(webhook_id, endpoint_id, tenant_id, message_id, event, body, next_ns, create_ns, schedule_ns, ready)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NOT EXISTS (SELECT 1 FROM webhook_deliveries
				WHERE endpoint_id = ? AND message_id = ? AND state = 0))
			ON CONFLICT (endpoint_id, webhook_id) DO NOTHING`,
			r.WebhookID, r.EndpointID, r.TenantID, r.MessageID, r.Event, r.Body,
			now.UnixNano(), now.UnixNano(), now.UnixNano(), r.EndpointID, r.MessageID)
		if err != nil {
			return fmt.Errorf("enqueue webhook %s for endpoint %s: %w", r.WebhookID, r.EndpointID, err)
		}
		if k, _ := res.RowsAffected(); k > 0 {
			*n++
		}
	}
	return nil
}

// Claimed is a due row leased to the caller.
type Claimed struct {
	Seq                              int64
	WebhookID, EndpointID, MessageID string
	Body                             []byte
	// Attempts made before this one.
	Attempts int
	// Schedule is when the retry schedule started.
	Schedule time.Time
}

// Claim leases up to limit ready due rows of an endpoint until now+lease,
// longest due first. (ready = TRUE, not a bare ready: SQLite uses an index
// column only in a comparison, and would scan and sort every due row.)
func (s *Store) Claim(ctx context.Context, endpointID string, now time.Time, lease time.Duration, limit int) ([]Claimed, error) {
	var out []Claimed
	err := s.write(func() error {
		var err error
		out, err = s.claim(ctx, endpointID, now, lease, limit)
		return err
	})
	return out, err
}

func (s *Store) claim(ctx context.Context, endpointID string, now time.Time, lease time.Duration, limit int) ([]Claimed, error) {
	rows, err := s.db.QueryContext(ctx, `UPDATE webhook_deliveries SET lease_ns = ?
		WHERE seq IN (
			SELECT seq FROM webhook_deliveries
			WHERE endpoint_id = ? AND state = 0 AND ready = TRUE AND next_ns <= ? AND lease_ns <= ?
			ORDER BY next_ns LIMIT ?)
		  AND state = 0 AND lease_ns <= ?
		RETURNING seq, webhook_id, endpoint_id, message_id, body, attempts, schedule_ns`,
		now.Add(lease).UnixNano(), endpointID, now.UnixNano(), now.UnixNano(), limit, now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("claim webhooks of endpoint %s: %w", endpointID, err)
	}
	defer rows.Close()
	var out []Claimed
	for rows.Next() {
		var c Claimed
		var sched int64
		if err := rows.Scan(&c.Seq, &c.WebhookID, &c.EndpointID, &c.MessageID, &c.Body, &c.Attempts, &sched); err != nil {
			return nil, fmt.Errorf("claim webhooks of endpoint %s: %w", endpointID, err)
		}
		c.Schedule = time.Unix(0, sched)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim webhooks of endpoint %s: %w", endpointID, err)
	}
	slices.SortFunc(out, func(a, b Claimed) int { return int(a.Seq - b.Seq) })
	return out, nil
}

// Result is the outcome of one attempt of a claimed row.
type Result struct {
	Claimed
	// Delivered: the endpoint answered 2xx.
	Delivered bool
	// Dead: failed, and the retry schedule is over.
	Dead bool
	// Next is when a failed row that is not dead is due again.
	Next time.Time
	// Err says why the attempt failed.
	Err string
	// Release: the attempt was cut short by a shutdown; the row is due
	// again at once, the attempt not counted.
	Release bool
}

// Finish records attempts' outcomes in one transaction and releases their
// leases.
func (s *Store) Finish(ctx context.Context, results []Result, now time.Time) error {
	return s.write(func() error { return s.finish(ctx, results, now) })
}

func (s *Store) finish(ctx context.Context, results []Result, now time.Time) error {
	return s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
		for _, r := range results {
			var err error
			switch {
			case r.Release:
				_, err = tx.ExecContext(ctx, `UPDATE webhook_deliveries SET lease_ns = 0 WHERE seq = ?`, r.Seq)
			case r.Delivered:
				_, err = tx.ExecContext(ctx, `UPDATE webhook_deliveries SET state = 1, attempts = attempts + 1,
					lease_ns = 0, last_error = '', done_ns = ? WHERE seq = ?`, now.UnixNano(), r.Seq)
				if err == nil {
					err = readyNext(ctx, tx, r.Claimed)
				}
			case r.Dead:
				_, err = tx.ExecContext(ctx, `UPDATE webhook_deliveries SET state = 2, attempts = attempts + 1,
					lease_ns = 0, last_error = ?, done_ns = ? WHERE seq = ?`, r.Err, now.UnixNano(), r.Seq)
				if err == nil {
					err = readyNext(ctx, tx, r.Claimed)
				}
			default:
				_, err = tx.ExecContext(ctx, `UPDATE webhook_deliveries SET attempts = attempts + 1,
					lease_ns = 0, last_error = ?, next_ns = ? WHERE seq = ?`, r.Err, r.Next.UnixNano(), r.Seq)
			}
			if err != nil {
				return fmt.Errorf("record webhook attempt %d: %w", r.Seq, err)
			}
		}
		return nil
	})
}

// readyNext makes the next due row of a finished row's message ready.
func readyNext(ctx context.Context, tx *sqlstore.Tx, c Claimed) error {
	_, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET ready = TRUE
		WHERE seq = (SELECT MIN(seq) FROM webhook_deliveries
		             WHERE endpoint_id = ? AND message_id = ? AND state = 0 AND seq > ?)`,
		c.EndpointID, c.MessageID, c.Seq)
	return err
}

// Unblock makes ready the due rows of an endpoint that no earlier due row
// of their message holds back, and returns how many it found. On
// PostgreSQL an event can be enqueued (not ready: its predecessor is due)
// while another transaction finishes the predecessor and, not seeing the
// new row yet, readies nothing; this repairs that. (On SQLite the store's
// writes are serialised and it finds nothing.)
func (s *Store) Unblock(ctx context.Context, endpointID string) (int64, error) {
	var n int64
	err := s.write(func() error {
		res, err := s.db.ExecContext(ctx, `UPDATE webhook_deliveries SET ready = TRUE
			WHERE endpoint_id = ? AND state = 0 AND ready = FALSE
			  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
			                  WHERE e.endpoint_id = webhook_deliveries.endpoint_id
			                    AND e.message_id = webhook_deliveries.message_id
			                    AND e.state = 0 AND e.seq < webhook_deliveries.seq)`, endpointID)
		if err != nil {
			return fmt.Errorf("unblock webhooks of endpoint %s: %w", endpointID, err)
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return n, err
}

// DeadLetter is a row that gave up.
type DeadLetter struct {
	Seq                                    int64
	WebhookID, EndpointID, TenantID, Error string
	Event                                  []byte
	Attempts                               int
	Created, Dead                          time.Time
}

// ListDead lists a tenant's dead letters (all tenants' when tenantID is
// empty; one endpoint's when endpointID is set) after seq afterSeq, oldest
// first.
func (s *Store) ListDead(ctx context.Context, tenantID, endpointID string, afterSeq int64, limit int) ([]DeadLetter, error) {
	q := `SELECT seq, webhook_id, endpoint_id, tenant_id, last_error, event, attempts, create_ns, done_ns
		FROM webhook_deliveries WHERE state = 2 AND seq > ?`
	args := []any{afterSeq}
	if tenantID != "" {
		q, args = q+` AND tenant_id = ?`, append(args, tenantID)
	}
	if endpointID != "" {
		q, args = q+` AND endpoint_id = ?`, append(args, endpointID)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY seq LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("list webhook dead letters: %w", err)
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		var d DeadLetter
		var c, dn int64
		if err := rows.Scan(&d.Seq, &d.WebhookID, &d.EndpointID, &d.TenantID, &d.Error, &d.Event, &d.Attempts, &c, &dn); err != nil {
			return nil, fmt.Errorf("list webhook dead letters: %w", err)
		}
		d.Created, d.Dead = time.Unix(0, c), time.Unix(0, dn)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook dead letters: %w", err)
	}
	return out, nil
}

// Replay makes dead letters due (and ready: they go out after the
// message's later events, which did not wait for them) again with a fresh
// retry schedule: a
// tenant's (all tenants' when tenantID is empty), one endpoint's when
// endpointID is set, only webhookIDs when any are given.
func (s *Store) Replay(ctx context.Context, tenantID, endpointID string, webhookIDs []string, now time.Time) (int64, error) {
	q := `UPDATE webhook_deliveries SET state = 0, ready = TRUE, attempts = 0, lease_ns = 0, next_ns = ?, schedule_ns = ?, done_ns = 0
		WHERE state = 2`
	args := []any{now.UnixNano(), now.UnixNano()}
	if tenantID != "" {
		q, args = q+` AND tenant_id = ?`, append(args, tenantID)
	}
	if endpointID != "" {
		q, args = q+` AND endpoint_id = ?`, append(args, endpointID)
	}
	if len(webhookIDs) > 0 {
		q += ` AND webhook_id IN (?` + strings.Repeat(", ?", len(webhookIDs)-1) + `)`
		for _, id := range webhookIDs {
			args = append(args, id)
		}
	}
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("replay webhook dead letters: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// Prune deletes delivered rows finished before before; until then they
// keep a redelivered event from being sent again.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM webhook_deliveries WHERE state = 1 AND done_ns < ?`, before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune delivered webhooks: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// Counts returns how many rows are due and dead.
func (s *Store) Counts(ctx context.Context) (due, dead int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT
		COALESCE(SUM(CASE WHEN state = 0 THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN state = 2 THEN 1 ELSE 0 END), 0)
		FROM webhook_deliveries WHERE state <> 1`).Scan(&due, &dead)
	if err != nil {
		return 0, 0, fmt.Errorf("count webhooks: %w", err)
	}
	return due, dead, nil
}

func oneRow(res sql.Result, err error, what string) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
