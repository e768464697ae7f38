package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"time"
)

// The migration runner is written here rather than taken from goose or
// golang-migrate: both pull every database driver they support (ClickHouse,
// MySQL, MSSQL, YDB, Docker clients...) into the module graph of this shared
// module, and neither records migrations per component, which we need when
// config and tracker share one PostgreSQL database. What we need is ~100
// lines: ordered embedded files, one transaction per file, a lock so that
// replicas starting together apply each file once.

// migrationLockKey is the PostgreSQL advisory lock that serialises migration
// runs of all mailbus components (any constant works; this is "mailbus" in
// ASCII).
const migrationLockKey = 0x6d61696c627573

var migrationName = regexp.MustCompile(`^(\d+)_([A-Za-z0-9_\-]+?)(\.(sqlite|postgres))?\.sql$`)

// Migration is one schema change.
type Migration struct {
	// Version orders migrations; it comes from the file name's number prefix.
	Version int
	// Name is the file name.
	Name string
	// SQL is the file's content; several statements are allowed.
	SQL string
}

// LoadMigrations reads the migrations in the root of fsys for dialect d.
// Files are named NNNN_description.sql; a file NNNN_description.sqlite.sql
// or NNNN_description.postgres.sql replaces the generic file of the same
// version for that dialect, for the rare statement that is not portable.
func LoadMigrations(fsys fs.FS, d Dialect) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("reading migrations: %w", err)
	}
	generic := map[int]Migration{}
	specific := map[int]Migration{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("reading migrations: file %q is not named NNNN_description[.sqlite|.postgres].sql", e.Name())
		}
		version, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, fmt.Errorf("reading migrations: version of %q: %w", e.Name(), err)
		}
		target := generic
		if m[4] != "" {
			if m[4] != d.String() {
				continue
			}
			target = specific
		}
		if prev, dup := target[version]; dup {
			return nil, fmt.Errorf("reading migrations: %q and %q have the same version %d", prev.Name, e.Name(), version)
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("reading migration %q: %w", e.Name(), err)
		}
		target[version] = Migration{Version: version, Name: e.Name(), SQL: string(body)}
	}
	for v, m := range specific {
		generic[v] = m
	}
	out := make([]Migration, 0, len(generic))
	for _, m := range generic {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Migrate applies the migrations of component found in fsys (see
// LoadMigrations) that are not yet recorded in the schema_migrations table,
// in version order, each in its own transaction together with its record.
// It is safe to call from several processes at once.
func Migrate(ctx context.Context, db *DB, component string, fsys fs.FS) error {
	if component == "" {
		return errors.New("migrating: empty component name")
	}
	migrations, err := LoadMigrations(fsys, db.dialect)
	if err != nil {
		return err
	}
	err = db.InTx(ctx, func(tx *Tx) error {
		if err := lockMigrations(ctx, tx); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			component  TEXT    NOT NULL,
			version    INTEGER NOT NULL,
			name       TEXT    NOT NULL,
			applied_at BIGINT  NOT NULL,
			PRIMARY KEY (component, version)
		)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrating %s: creating schema_migrations: %w", component, err)
	}
	for _, m := range migrations {
		err := db.InTx(ctx, func(tx *Tx) error {
			if err := lockMigrations(ctx, tx); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRowContext(ctx,
				`SELECT COUNT(*) FROM schema_migrations WHERE component = ? AND version = ?`,
				component, m.Version).Scan(&n); err != nil {
				return fmt.Errorf("reading applied migrations: %w", err)
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx,
				`INSERT INTO schema_migrations (component, version, name, applied_at) VALUES (?, ?, ?, ?)`,
				component, m.Version, m.Name, time.Now().UnixMicro())
			return err
		})
		if err != nil {
			return fmt.Errorf("migrating %s: applying %s: %w", component, m.Name, err)
		}
	}
	return nil
}

// lockMigrations serialises migration runs. SQLite needs nothing: write
// transactions begin IMMEDIATE, which already takes the database's only
// write lock.
func lockMigrations(ctx context.Context, tx *Tx) error {
	if tx.dialect != Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(migrationLockKey)); err != nil {
		return fmt.Errorf("taking the migration lock: %w", err)
	}
	return nil
}
