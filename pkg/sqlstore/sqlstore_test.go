package sqlstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestRebind_rewritesPlaceholdersOutsideQuotesForPostgres(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "SELECT a FROM t WHERE a = ? AND b = ?", "SELECT a FROM t WHERE a = $1 AND b = $2"},
		{"string literal", "SELECT '?' , ? FROM t", "SELECT '?' , $1 FROM t"},
		{"escaped quote", "SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1"},
		{"quoted identifier", `SELECT "a?b" FROM t WHERE x = ?`, `SELECT "a?b" FROM t WHERE x = $1`},
		{"line comment", "SELECT ? -- what?\nFROM t WHERE y = ?", "SELECT $1 -- what?\nFROM t WHERE y = $2"},
		{"block comment", "SELECT /* ? */ ?", "SELECT /* ? */ $1"},
		{"no placeholders", "SELECT 1", "SELECT 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sqlstore.Rebind(sqlstore.Postgres, tt.in); got != tt.want {
				t.Errorf("Rebind(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := sqlstore.Rebind(sqlstore.SQLite, tt.in); got != tt.in {
				t.Errorf("SQLite Rebind changed %q to %q", tt.in, got)
			}
		})
	}
}

func TestOpen_rejectsUnknownSchemes(t *testing.T) {
	for _, u := range []string{"", "mysql://root@localhost/db", "sqlite://"} {
		if _, err := sqlstore.Open(context.Background(), u); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", u)
		}
	}
}

func TestRedact_hidesPasswords(t *testing.T) {
	got := sqlstore.Redact("postgres://u:secret@h/db")
	if got != "postgres://u:xxxxx@h/db" {
		t.Errorf("Redact = %q", got)
	}
}

func TestLoadMigrations_prefersDialectSpecificFiles(t *testing.T) {
	fsys := fstest.MapFS{
		"0001_init.sql":          {Data: []byte("generic 1")},
		"0002_more.sql":          {Data: []byte("generic 2")},
		"0002_more.postgres.sql": {Data: []byte("postgres 2")},
		"0002_more.sqlite.sql":   {Data: []byte("sqlite 2")},
		"README.md":              {Data: []byte("ignored")},
	}
	for _, d := range []sqlstore.Dialect{sqlstore.SQLite, sqlstore.Postgres} {
		ms, err := sqlstore.LoadMigrations(fsys, d)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 2 || ms[0].SQL != "generic 1" || ms[1].SQL != d.String()+" 2" {
			t.Errorf("%s: got %+v", d, ms)
		}
	}
	_, err := sqlstore.LoadMigrations(fstest.MapFS{"init.sql": {Data: []byte("x")}}, sqlstore.SQLite)
	if err == nil {
		t.Error("a file without a version number was accepted")
	}
}

// dbSuite is the behaviour both dialects must share.
func dbSuite(t *testing.T, url string) {
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })

	migrations := fstest.MapFS{
		"0001_items.sql": {Data: []byte(`
			CREATE TABLE parents (id TEXT PRIMARY KEY);
			CREATE TABLE items (
				id TEXT PRIMARY KEY,
				parent TEXT REFERENCES parents(id),
				n BIGINT NOT NULL,
				ok BOOLEAN NOT NULL
			);`)},
		"0002_more.sql": {Data: []byte(`ALTER TABLE items ADD COLUMN note TEXT NOT NULL DEFAULT 'a?b';`)},
	}

	t.Run("migrations apply once even when run concurrently", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { errs[i] = sqlstore.Migrate(ctx, db, "test", migrations) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE component = ?`, "test").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Errorf("schema_migrations has %d rows for the component, want 2", n)
		}
	})

	t.Run("placeholders and types round trip", func(t *testing.T) {
		if _, err := db.ExecContext(ctx, `INSERT INTO parents (id) VALUES (?)`, "p"); err != nil {
			t.Fatal(err)
		}
		err := db.InTx(ctx, func(tx *sqlstore.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO items (id, parent, n, ok) VALUES (?, ?, ?, ?)`, "a", "p", int64(1)<<40, true)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		var (
			n    int64
			ok   bool
			note string
		)
		if err := db.QueryRowContext(ctx, `SELECT n, ok, note FROM items WHERE id = ? AND note = 'a?b'`, "a").Scan(&n, &ok, &note); err != nil {
			t.Fatal(err)
		}
		if n != 1<<40 || !ok || note != "a?b" {
			t.Errorf("got n=%d ok=%v note=%q", n, ok, note)
		}
	})

	t.Run("constraint violations are classified", func(t *testing.T) {
		_, err := db.ExecContext(ctx, `INSERT INTO items (id, parent, n, ok) VALUES (?, ?, 0, false)`, "a", "p")
		if !sqlstore.IsUniqueViolation(err) {
			t.Errorf("duplicate key: IsUniqueViolation(%v) = false", err)
		}
		_, err = db.ExecContext(ctx, `INSERT INTO items (id, parent, n, ok) VALUES (?, ?, 0, false)`, "b", "missing")
		if !sqlstore.IsForeignKeyViolation(err) {
			t.Errorf("missing parent: IsForeignKeyViolation(%v) = false (foreign keys off?)", err)
		}
	})

	t.Run("a failed transaction rolls back and returns the error", func(t *testing.T) {
		boom := errors.New("boom")
		err := db.InTx(ctx, func(tx *sqlstore.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO parents (id) VALUES (?)`, "rolled-back"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("InTx = %v, want boom", err)
		}
		var n int
		err = db.InReadTx(ctx, func(tx *sqlstore.Tx) error {
			return tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM parents WHERE id = ?`, "rolled-back").Scan(&n)
		})
		if err != nil || n != 0 {
			t.Errorf("after rollback: n=%d err=%v", n, err)
		}
	})
}

func TestDB_SQLite(t *testing.T) {
	dbSuite(t, "sqlite://"+filepath.Join(t.TempDir(), "test.db"))
}

func TestDB_SQLitePlainPath(t *testing.T) {
	dbSuite(t, filepath.Join(t.TempDir(), "test.db"))
}

func TestDB_Postgres(t *testing.T) {
	dbSuite(t, testkit.Postgres(t))
}
