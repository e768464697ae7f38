// Package testkit starts the real parts that tests run against.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// DefaultDatabaseURL is the PostgreSQL that tests use when DATABASE_URL is
// not set.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

var unsafeSchemaChars = regexp.MustCompile(`[^a-z0-9_]+`)

// Postgres returns a DSN for a fresh, empty schema on the PostgreSQL server
// named by env DATABASE_URL (default DefaultDatabaseURL). The schema is set as
// the connection's search_path, so unqualified tables land in it, and it is
// dropped with everything in it when the test ends.
//
// When PostgreSQL cannot be reached the test is skipped, unless env CI is
// set, where a missing database is a broken pipeline and the test fails.
//
// A schema rather than a database keeps tests fast and avoids CREATE
// DATABASE's "template1 is being accessed by other users" failures when
// several packages run at once.
func Postgres(t testing.TB) string {
	t.Helper()
	base := os.Getenv("DATABASE_URL")
	if base == "" {
		base = DefaultDatabaseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()

	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		msg := "PostgreSQL is not reachable at " + sqlstore.Redact(base) + ": " + err.Error() +
			" (set DATABASE_URL, or start PostgreSQL; CI=1 turns this skip into a failure)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	defer conn.Close(context.Background())

	schema := schemaName(t.Name())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("testkit: creating schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("testkit: connecting to drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("testkit: dropping schema %s: %v", schema, err)
		}
	})
	return withSearchPath(t, base, schema)
}

// schemaName makes a unique, valid, recognisable schema name from a test name.
func schemaName(testName string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := unsafeSchemaChars.ReplaceAllString(strings.ToLower(testName), "_")
	name = strings.Trim(name, "_")
	if len(name) > 40 {
		name = name[:40]
	}
	return "t_" + name + "_" + hex.EncodeToString(b[:])
}

// withSearchPath adds search_path to a URL or key=value DSN; pgx sends unknown
// parameters to the server as run-time parameters.
func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("testkit: parsing DATABASE_URL: %v", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}
