// Package sqlstore is the one database/sql code path that mailbus services use
// for both of their stores: SQLite (modernc.org/sqlite, pure Go, for `mailbus
// dev` and small installations) and PostgreSQL (pgx, for production).
//
// Services write their SQL once, with `?` placeholders and portable types
// (TEXT, BIGINT, INTEGER, BOOLEAN, DOUBLE PRECISION), and go through a *DB or
// *Tx, which rewrites the placeholders to `$n` for PostgreSQL. Where the
// dialects really differ, a service asks DB.Dialect. Schema changes are
// embedded SQL files applied by Migrate.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names the SQL dialect behind a DB.
type Dialect int

const (
	// SQLite is modernc.org/sqlite.
	SQLite Dialect = iota + 1
	// Postgres is PostgreSQL through pgx.
	Postgres
)

// String returns "sqlite" or "postgres".
func (d Dialect) String() string {
	switch d {
	case SQLite:
		return "sqlite"
	case Postgres:
		return "postgres"
	default:
		return fmt.Sprintf("Dialect(%d)", int(d))
	}
}

// sqliteBusyTimeout is how long a SQLite connection waits for another
// connection's write lock before failing with SQLITE_BUSY. Config and tracker
// writes are short, so a few seconds only matter under real contention.
const sqliteBusyTimeout = 10 * time.Second

// Querier is what *DB and *Tx have in common: queries with `?` placeholders.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// DB is a database handle that rewrites `?` placeholders for its dialect.
type DB struct {
	db      *sql.DB
	dialect Dialect
}

var _ Querier = (*DB)(nil)

// Open opens and pings a database. url is one of
//
//	sqlite:///var/lib/mailbus/config.db   absolute path
//	sqlite://data/config.db               relative path
//	/var/lib/mailbus/config.db            a plain file path means SQLite
//	postgres://user@host:5432/db?sslmode=disable   (or postgresql://, or a
//	                                                 libpq key=value string
//	                                                 starting with "host=")
//
// SQLite databases are opened in WAL mode with foreign keys on and a busy
// timeout, and write transactions take the write lock at BEGIN (BEGIN
// IMMEDIATE) so that two writers never deadlock upgrading their locks. Extra
// query parameters on a sqlite URL are passed to the driver.
func Open(ctx context.Context, url string) (*DB, error) {
	dialect, driverName, dsn, err := parseURL(url)
	if err != nil {
		return nil, err
	}
	sqlDB, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, fmt.Errorf("opening %s database: %w", dialect, err)
	}
	if dialect == SQLite {
		// Idle connections keep their page cache; more than a handful buys
		// nothing because SQLite has one writer at a time anyway.
		sqlDB.SetMaxIdleConns(4)
		sqlDB.SetMaxOpenConns(8)
	} else {
		sqlDB.SetMaxOpenConns(16)
		sqlDB.SetMaxIdleConns(4)
		sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("connecting to %s database %s: %w", dialect, Redact(url), err)
	}
	return &DB{db: sqlDB, dialect: dialect}, nil
}

// parseURL maps a store URL onto a database/sql driver name and DSN.
func parseURL(raw string) (Dialect, string, string, error) {
	switch {
	case raw == "":
		return 0, "", "", errors.New("opening database: empty database URL")
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"),
		strings.HasPrefix(raw, "host="):
		return Postgres, "pgx", raw, nil
	case strings.HasPrefix(raw, "sqlite://"):
		return sqliteDSN(strings.TrimPrefix(raw, "sqlite://"))
	case strings.HasPrefix(raw, "sqlite:"):
		return sqliteDSN(strings.TrimPrefix(raw, "sqlite:"))
	case strings.Contains(raw, "://"):
		return 0, "", "", fmt.Errorf("opening database: unsupported URL scheme in %q (want sqlite:// or postgres://)", Redact(raw))
	default:
		return sqliteDSN(raw)
	}
}

func sqliteDSN(pathAndQuery string) (Dialect, string, string, error) {
	path, rawQuery, _ := strings.Cut(pathAndQuery, "?")
	if path == "" {
		return 0, "", "", errors.New("opening database: sqlite URL has no file path")
	}
	extra, err := url.ParseQuery(rawQuery)
	if err != nil {
		return 0, "", "", fmt.Errorf("opening database: parsing sqlite URL parameters: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	// NORMAL is durable in WAL mode except for the last transactions before
	// a power loss, and much faster than FULL.
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	for k, vs := range extra {
		for _, v := range vs {
			q.Add(k, v)
		}
	}
	return SQLite, "sqlite", "file:" + path + "?" + q.Encode(), nil
}

// Redact returns url with any password replaced, for logs and errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// Dialect returns the SQL dialect of the database.
func (db *DB) Dialect() Dialect { return db.dialect }

// SQL returns the underlying *sql.DB, for what this package does not wrap.
// Queries through it are not rebound.
func (db *DB) SQL() *sql.DB { return db.db }

// Close closes the database.
func (db *DB) Close() error { return db.db.Close() }

// Rebind rewrites `?` placeholders for the database's dialect.
func (db *DB) Rebind(query string) string { return Rebind(db.dialect, query) }

// ExecContext executes a statement with `?` placeholders.
func (db *DB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return db.db.ExecContext(ctx, db.Rebind(query), args...)
}

// QueryContext runs a query with `?` placeholders.
func (db *DB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return db.db.QueryContext(ctx, db.Rebind(query), args...)
}

// QueryRowContext runs a query with `?` placeholders that returns at most one row.
func (db *DB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return db.db.QueryRowContext(ctx, db.Rebind(query), args...)
}

// Tx is a transaction that rewrites `?` placeholders for its dialect.
type Tx struct {
	tx      *sql.Tx
	dialect Dialect
	// stmts keeps each statement the transaction has run prepared, on
	// SQLite only: modernc's driver compiles a statement on every
	// ExecContext, and a batch of the tracker's runs the same few
	// statements hundreds of times (compiling was a fifth of the
	// tracker's CPU in make bench's profile). pgx caches PostgreSQL's
	// prepared statements itself. database/sql closes them with the
	// transaction.
	stmts map[string]*sql.Stmt
}

// stmt returns the prepared form of query on SQLite, nil elsewhere.
func (tx *Tx) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if tx.dialect != SQLite {
		return nil, nil
	}
	if st, ok := tx.stmts[query]; ok {
		return st, nil
	}
	st, err := tx.tx.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if tx.stmts == nil {
		tx.stmts = map[string]*sql.Stmt{}
	}
	tx.stmts[query] = st
	return st, nil
}

var _ Querier = (*Tx)(nil)

// Dialect returns the SQL dialect of the transaction's database.
func (tx *Tx) Dialect() Dialect { return tx.dialect }

// ExecContext executes a statement with `?` placeholders.
func (tx *Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st, err := tx.stmt(ctx, query); err != nil || st != nil {
		if err != nil {
			return nil, err
		}
		return st.ExecContext(ctx, args...)
	}
	return tx.tx.ExecContext(ctx, Rebind(tx.dialect, query), args...)
}

// QueryContext runs a query with `?` placeholders.
func (tx *Tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st, err := tx.stmt(ctx, query); err != nil || st != nil {
		if err != nil {
			return nil, err
		}
		return st.QueryContext(ctx, args...)
	}
	return tx.tx.QueryContext(ctx, Rebind(tx.dialect, query), args...)
}

// QueryRowContext runs a query with `?` placeholders that returns at most one row.
func (tx *Tx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st, err := tx.stmt(ctx, query); err == nil && st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return tx.tx.QueryRowContext(ctx, Rebind(tx.dialect, query), args...)
}

// InTx runs fn in a read-write transaction and commits it when fn returns
// nil; otherwise it rolls back and returns fn's error unchanged (so callers
// can match their own sentinel errors).
func (db *DB) InTx(ctx context.Context, fn func(tx *Tx) error) error {
	return db.inTx(ctx, nil, fn)
}

// InReadTx runs fn in a read-only transaction that sees one consistent
// snapshot of the database: REPEATABLE READ on PostgreSQL, a deferred
// transaction (a WAL snapshot) on SQLite.
func (db *DB) InReadTx(ctx context.Context, fn func(tx *Tx) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if db.dialect == Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	return db.inTx(ctx, opts, fn)
}

func (db *DB) inTx(ctx context.Context, opts *sql.TxOptions, fn func(tx *Tx) error) (err error) {
	sqlTx, err := db.db.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = sqlTx.Rollback()
			panic(p)
		}
	}()
	if err := fn(&Tx{tx: sqlTx, dialect: db.dialect}); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("committing transaction: %w", err)
	}
	return nil
}

// Rebind rewrites `?` placeholders to `$1, $2, ...` for PostgreSQL and returns
// query unchanged for SQLite. Question marks inside string literals, quoted
// identifiers and comments are left alone.
func Rebind(d Dialect, query string) string {
	if d != Postgres || !strings.Contains(query, "?") {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case c == '\'' || c == '"':
			// Copy the quoted section; a doubled quote is an escaped quote
			// and simply reopens the section on the next iteration.
			end := strings.IndexByte(query[i+1:], c)
			if end < 0 {
				b.WriteString(query[i:])
				return b.String()
			}
			b.WriteString(query[i : i+end+2])
			i += end + 1
		case c == '-' && i+1 < len(query) && query[i+1] == '-':
			end := strings.IndexByte(query[i:], '\n')
			if end < 0 {
				b.WriteString(query[i:])
				return b.String()
			}
			b.WriteString(query[i : i+end+1])
			i += end
		case c == '/' && i+1 < len(query) && query[i+1] == '*':
			end := strings.Index(query[i+2:], "*/")
			if end < 0 {
				b.WriteString(query[i:])
				return b.String()
			}
			b.WriteString(query[i : i+end+4])
			i += end + 3
		case c == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// IsUniqueViolation reports whether err is a unique or primary key
// constraint violation in either dialect.
func IsUniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return false
}

// IsForeignKeyViolation reports whether err is a foreign key constraint
// violation in either dialect.
func IsForeignKeyViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	return false
}
