package oauthtoken_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
	"github.com/mailbus/mailbus/pkg/seal"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func client(srv *testkit.OAuthServer) oauthtoken.Client {
	return oauthtoken.Client{RelayID: "gmail", OAuth: &pb.RelayOAuth{TokenUrl: srv.TokenURL, ClientId: srv.ClientID},
		ClientSecret: srv.ClientSecret, RefreshToken: srv.IssueRefreshToken()}
}

func sealer(t *testing.T) *seal.Sealer {
	s, err := seal.New(map[byte][]byte{1: bytes.Repeat([]byte{7}, 32)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// replicas returns n Tokens sharing one Redis, each with its own client,
// as n sender processes have.
func replicas(t *testing.T, addr string, n int) []*oauthtoken.Tokens {
	out := make([]*oauthtoken.Tokens, n)
	for i := range out {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = rdb.Close() })
		out[i] = oauthtoken.New(rdb, sealer(t), oauthtoken.Options{})
	}
	return out
}

func TestTokens_replicasAskingAtOnceShareOneRefresh(t *testing.T) {
	addr := testkit.StartRedis(t)
	srv := testkit.StartOAuthServer(t, time.Hour)
	c := client(srv)
	ctx := context.Background()
	var (
		mu     sync.Mutex
		tokens = map[string]int{}
		wg     sync.WaitGroup
	)
	for _, r := range replicas(t, addr, 3) {
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := r.Token(ctx, c)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				tokens[tok]++
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if len(tokens) != 1 || srv.Grants("refresh_token") != 1 {
		t.Fatalf("30 requests on 3 replicas got %d tokens from %d refreshes, want 1 from 1", len(tokens), srv.Grants("refresh_token"))
	}
	for tok := range tokens {
		if !srv.Valid(tok) {
			t.Error("the shared token is not valid")
		}
		// Shared sealed, and only while it is valid.
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		keys, err := rdb.Keys(ctx, "mb:oauth:*").Result()
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys %v, %v; want the one shared token", keys, err)
		}
		raw, _ := rdb.Get(ctx, keys[0]).Result()
		ttl, _ := rdb.TTL(ctx, keys[0]).Result()
		if strings.Contains(raw, tok) || ttl <= 0 || ttl > time.Hour {
			t.Errorf("shared token in Redis: plain text %t, TTL %v; want sealed with a TTL of at most its lifetime", strings.Contains(raw, tok), ttl)
		}
	}
}

func TestTokens_refreshesALittleBeforeExpiry(t *testing.T) {
	addr := testkit.StartRedis(t)
	srv := testkit.StartOAuthServer(t, 4*time.Second)
	c := client(srv)
	r := replicas(t, addr, 2)
	ctx := context.Background()
	first, err := r[0].Token(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := r[1].Token(ctx, c); again != first {
		t.Fatalf("the other replica got %q, want the shared %q", again, first)
	}
	var next string
	testkit.Eventually(t, time.Minute, func() bool {
		next, err = r[1].Token(ctx, c)
		return err == nil && next != first
	}, "a new token after the first one's refresh time (err %v)", err)
	if !srv.Valid(next) {
		t.Error("the refreshed token is not valid")
	}
	if got, _ := r[0].Token(ctx, c); got != next {
		t.Errorf("replica 0 got %q after replica 1 refreshed, want %q", got, next)
	}
}

func TestTokens_aRejectedTokenIsReplacedOnceForEveryReplica(t *testing.T) {
	addr := testkit.StartRedis(t)
	srv := testkit.StartOAuthServer(t, time.Hour)
	c := client(srv)
	r := replicas(t, addr, 2)
	ctx := context.Background()
	revoked, err := r[0].Token(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r[1].Token(ctx, c); err != nil {
		t.Fatal(err)
	}
	srv.Revoke(revoked)
	fresh, err := r[0].Refresh(ctx, c, revoked)
	if err != nil || fresh == revoked || !srv.Valid(fresh) {
		t.Fatalf("refresh after rejection: %q, %v", fresh, err)
	}
	// Replica 1 was rejected with the same token: it takes replica 0's.
	other, err := r[1].Refresh(ctx, c, revoked)
	if err != nil || other != fresh {
		t.Errorf("replica 1's refresh got %q, %v; want the shared %q", other, err, fresh)
	}
	if n := srv.Grants("refresh_token"); n != 2 {
		t.Errorf("%d refreshes, want 2 (the first token and its one replacement)", n)
	}
	// A refresh token the provider does not know fails with its reason.
	c.RefreshToken = "revoked"
	if _, err := r[0].Token(ctx, c); err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("an unknown refresh token: %v, want the provider's invalid_grant", err)
	}
}

// When the provider revokes every token (a password change), a replica
// must not still use the one it had before another replica replaced it:
// its one swap after the relay's refusal would land on the replacement,
// revoked too, and the relay would count as failed (a CI run of the
// sender's OAuth test lost two messages to mail.fallback that way).
func TestTokens_aReplicaUsesTheTokenAnotherReplicaSharedSinceItsLast(t *testing.T) {
	addr := testkit.StartRedis(t)
	srv := testkit.StartOAuthServer(t, time.Hour)
	c := client(srv)
	r := replicas(t, addr, 2)
	ctx := context.Background()
	old, err := r[1].Token(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	srv.Revoke(old)
	replaced, err := r[0].Refresh(ctx, c, old)
	if err != nil || replaced == old {
		t.Fatalf("replica 0's refresh: %q, %v", replaced, err)
	}
	srv.Revoke(replaced)

	got, err := r[1].Token(ctx, c)
	if err != nil || got != replaced {
		t.Fatalf("replica 1 got %q, %v; want the token replica 0 shared since (%q), not its old one", got, err, replaced)
	}
	// The relay refuses it: one swap gets a new, valid token.
	fresh, err := r[1].Refresh(ctx, c, got)
	if err != nil || !srv.Valid(fresh) {
		t.Errorf("swap after the refusal: %q (valid %t), %v", fresh, srv.Valid(fresh), err)
	}
}
