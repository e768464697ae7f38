// Package store keeps the configuration (tenants, domains, DKIM keys,
// relays, the default server) in SQLite or PostgreSQL through
// pkg/sqlstore, with secrets sealed by pkg/seal.
//
// Every write runs in one transaction that first locks the single
// config_revision row, so writes are serialised: plan caps and references
// are checked without races, and each change appended to config_changes gets
// the next revision in commit order. A write that changes nothing appends
// nothing, which makes the YAML seed idempotent.
//
// Values given to the store are already validated for form (package config
// does that); the store checks what depends on stored state: references,
// uniqueness, plan caps and whether a secret is stored.
//
// Reads never return secrets in plain text. Relay reads carry has_* flags;
// only Snapshot carries secrets, sealed.
package store

import (
	"context"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Component is the name under which the store's migrations are recorded.
const Component = "config"

// Plan caps that apply when a tenant's plan leaves them at zero.
const (
	DefaultMaxRelaysPerDomain = 3
	DefaultMaxDomains         = 5
)

// ErrNotFound is wrapped by errors about a missing resource.
var ErrNotFound = errors.New("not found")

// FieldError is a request field that does not fit the stored state, such as
// a reference to a tenant that does not exist (an InvalidArgument).
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ConflictError is a resource that already exists (an AlreadyExists).
type ConflictError struct {
	Field  string
	Reason string
}

func (e *ConflictError) Error() string { return e.Field + ": " + e.Reason }

// PreconditionError is a write refused by the state of the system, such as
// a plan cap (a FailedPrecondition).
type PreconditionError struct {
	// Type is a short machine-readable category, for example "PLAN_CAP".
	Type string
	// Subject is what the violation is about, for example "tenant/acme".
	Subject     string
	Description string
}

func (e *PreconditionError) Error() string { return e.Description }

func notFound(kind, id string) error { return fmt.Errorf("%s %q: %w", kind, id, ErrNotFound) }

// Store is the configuration store. It is safe for concurrent use.
type Store struct {
	db     *sqlstore.DB
	sealer *seal.Sealer
	now    func() time.Time

	mu      sync.Mutex
	changed chan struct{}
}

// Open opens the database at url (see sqlstore.Open), applies the
// migrations and returns a store that seals secrets with sealer.
func Open(ctx context.Context, url string, sealer *seal.Sealer) (*Store, error) {
	db, err := sqlstore.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	s, err := New(ctx, db, sealer)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// New migrates db and returns a store on it. Close closes db.
func New(ctx context.Context, db *sqlstore.DB, sealer *seal.Sealer) (*Store, error) {
	if sealer == nil {
		return nil, errors.New("config store: a sealer is required")
	}
	migrations, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("config store: %w", err)
	}
	if err := sqlstore.Migrate(ctx, db, Component, migrations); err != nil {
		return nil, fmt.Errorf("config store: %w", err)
	}
	return &Store{db: db, sealer: sealer, now: time.Now, changed: make(chan struct{})}, nil
}

// DB returns the database, for tests that inspect rows.
func (s *Store) DB() *sqlstore.DB { return s.db }

// Sealer returns the sealer the store seals secrets with.
func (s *Store) Sealer() *seal.Sealer { return s.sealer }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Changed returns a channel that is closed after the next write through this
// Store that appends changes commits. Writes by other replicas are not
// signalled; watchers also poll.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Store) signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
}

// writer is the state of one write transaction.
type writer struct {
	tx       *sqlstore.Tx
	s        *Store
	now      time.Time
	revision int64
	changes  int
}

// write runs fn in a serialised write transaction.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, w *writer) error) error {
	var changes int
	err := s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
		w := &writer{tx: tx, s: s, now: s.now()}
		lock := `SELECT revision FROM config_revision WHERE id = 1`
		if tx.Dialect() == sqlstore.Postgres {
			lock += ` FOR UPDATE`
		}
		if err := tx.QueryRowContext(ctx, lock).Scan(&w.revision); err != nil {
			return fmt.Errorf("locking config revision: %w", err)
		}
		if err := fn(ctx, w); err != nil {
			return err
		}
		if w.changes > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE config_revision SET revision = ? WHERE id = 1`, w.revision); err != nil {
				return fmt.Errorf("advancing config revision: %w", err)
			}
		}
		changes = w.changes
		return nil
	})
	if err != nil {
		return err
	}
	if changes > 0 {
		s.signal()
	}
	return nil
}

// change appends a change at the next revision.
func (w *writer) change(ctx context.Context, kind pb.ChangeKind, id, tenantID string, deleted bool) error {
	w.revision++
	w.changes++
	_, err := w.tx.ExecContext(ctx,
		`INSERT INTO config_changes (revision, kind, resource_id, tenant_id, deleted, change_time) VALUES (?, ?, ?, ?, ?, ?)`,
		w.revision, int32(kind), id, tenantID, deleted, w.now.UnixMicro())
	if err != nil {
		return fmt.Errorf("recording change: %w", err)
	}
	return nil
}

// Revision returns the revision of the last committed change (0 when none).
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.db.QueryRowContext(ctx, `SELECT revision FROM config_revision WHERE id = 1`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("reading config revision: %w", err)
	}
	return rev, nil
}

// Changes returns up to limit changes after revision after, oldest first.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]*pb.ConfigChange, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT revision, kind, resource_id, tenant_id, deleted, change_time FROM config_changes WHERE revision > ? ORDER BY revision LIMIT ?`,
		after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading changes: %w", err)
	}
	defer rows.Close()
	var out []*pb.ConfigChange
	for rows.Next() {
		var (
			c    pb.ConfigChange
			kind int32
			at   int64
		)
		if err := rows.Scan(&c.Revision, &kind, &c.Id, &c.TenantId, &c.Deleted, &at); err != nil {
			return nil, fmt.Errorf("reading changes: %w", err)
		}
		c.Kind = pb.ChangeKind(kind)
		c.ChangeTime = timestamp(at)
		out = append(out, &c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading changes: %w", err)
	}
	return out, nil
}

// Page is one page of a listing.
type Page struct {
	// After is the last id of the previous page ("" for the first page).
	After string
	// Limit is the page size, at least 1.
	Limit int
}

// seal seals a secret; an empty secret seals to "".
func (s *Store) seal(plain string, aad []byte) (string, error) {
	if plain == "" {
		return "", nil
	}
	sealed, err := s.sealer.Seal([]byte(plain), aad)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sealed), nil
}

// open opens a sealed column value.
func (s *Store) open(column string, aad []byte) (string, error) {
	if column == "" {
		return "", nil
	}
	raw, err := base64.StdEncoding.DecodeString(column)
	if err != nil {
		return "", fmt.Errorf("decoding sealed value: %w", err)
	}
	plain, err := s.sealer.Open(raw, aad)
	if err != nil {
		return "", err
	}
	return string(plain), nil
}

func unbase64(column string) []byte {
	if column == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(column)
	if err != nil {
		return nil
	}
	return b
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func jsonList[T any](v []T) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func parseJSONList[T any](s string) ([]T, error) {
	var out []T
	if s == "" || s == "[]" {
		return nil, nil
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("decoding list column: %w", err)
	}
	return out, nil
}

// pageOf trims a result of limit+1 rows to limit and returns the next page's
// After value ("" when this is the last page).
func pageOf[T any](items []T, limit int, id func(T) string) ([]T, string) {
	if len(items) <= limit {
		return items, ""
	}
	items = items[:limit]
	return items, id(items[len(items)-1])
}

func encode(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}
