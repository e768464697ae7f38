package config_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/config"
)

func TestWatchChanges_streamsChangesAfterARevisionFromEveryReplica(t *testing.T) {
	backends := map[string]func(t *testing.T) string{
		"SQLite":   func(t *testing.T) string { return sqliteURL(t) },
		"Postgres": func(t *testing.T) string { return testkit.Postgres(t) },
	}
	for name, newURL := range backends {
		t.Run(name, func(t *testing.T) {
			url := newURL(t)
			// Two replicas on one database: writes go to one, the stream
			// comes from the other, which only learns of them by polling.
			writer := start(t, config.Config{DatabaseURL: url}, "")
			reader := start(t, config.Config{DatabaseURL: url}, "")
			admin := client(t, writer, adminToken)
			setupAcme(t, admin) // revisions 1 (tenant) and 2 (domain)
			ctx := ctxT(t)

			stream, err := client(t, reader, pipelineToken).WatchChanges(ctx, &pb.WatchChangesRequest{SinceRevision: 1})
			if err != nil {
				t.Fatal(err)
			}
			first, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if c := first.Change; c.Revision != 2 || c.Kind != pb.ChangeKind_CHANGE_KIND_DOMAIN || c.TenantId != "acme" {
				t.Errorf("first change after revision 1 = %v", c)
			}
			if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("r1", "acme", "acme.example")}); err != nil {
				t.Fatal(err)
			}
			next, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if c := next.Change; c.Revision != 3 || c.Kind != pb.ChangeKind_CHANGE_KIND_RELAY || c.Id != "r1" || c.Deleted {
				t.Errorf("change for the new relay = %v", c)
			}
			if _, err := admin.DeleteRelay(ctx, &pb.DeleteRelayRequest{Id: "r1"}); err != nil {
				t.Fatal(err)
			}
			del, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if c := del.Change; c.Revision != 4 || !c.Deleted {
				t.Errorf("change for the deleted relay = %v", c)
			}
		})
	}
}

func TestWatchChanges_endsWhenTheServiceStops(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	setupAcme(t, client(t, e, adminToken)) // revisions 1 and 2
	stream, err := client(t, e, pipelineToken).WatchChanges(ctxT(t), &pb.WatchChangesRequest{SinceRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	// A change received shows the stream is open on the server; a fixed
	// sleep before stopping would not on a busy machine.
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first change: %v", err)
	}
	e.stop()
	_, err = stream.Recv()
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("stream ended with %v (%v), want Unavailable", code, err)
	}
}

func TestConfigClient_followsChangesAndSurvivesAConfigRestart(t *testing.T) {
	url := sqliteURL(t)
	e := start(t, config.Config{DatabaseURL: url}, "")
	admin := client(t, e, adminToken)
	setupAcme(t, admin)
	ctx := ctxT(t)

	cfg, err := configclient.New(ctx, dial(t, e.addr, pipelineToken), testSealer(t),
		configclient.WithBackoff(10*time.Millisecond, 100*time.Millisecond), configclient.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	if _, ok := cfg.Tenant("acme"); !ok {
		t.Fatal("tenant acme missing from the first snapshot")
	}
	if d, ok := cfg.Domain("acme", "acme.example"); !ok || d.TenantId != "acme" {
		t.Errorf("Domain = %v, %v", d, ok)
	}
	if _, ok := cfg.Domain("other", "acme.example"); ok {
		t.Error("Domain found acme's domain for another tenant")
	}

	for _, r := range []*pb.Relay{plainRelay("slow", "acme", "acme.example"), plainRelay("fast", "acme", "acme.example")} {
		if r.Id == "fast" {
			r.Priority = 1
		}
		if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: r}); err != nil {
			t.Fatal(err)
		}
	}
	waitRevision(t, cfg, e)
	relays := cfg.Relays("acme")
	if len(relays) != 2 || relays[0].Id != "fast" {
		t.Fatalf("Relays = %v, want fast first", relays)
	}
	r, ok := cfg.Relay("slow")
	if !ok || r.Password != relayPassword || r.Relay.Auth.Password != "" {
		t.Fatalf("Relay(slow) = %v, password opened = %v", r, ok && r.Password == relayPassword)
	}
	rev := cfg.Revision()

	// While config is down the client serves the last snapshot.
	addr := e.addr
	e.stop()
	if _, ok := cfg.Relay("slow"); !ok || cfg.Revision() != rev {
		t.Error("the client lost its snapshot when config stopped")
	}

	// A new config process on the same address and database: the client
	// reconnects on its own and follows again.
	e2 := start(t, config.Config{DatabaseURL: url}, addr)
	admin2 := client(t, e2, adminToken)
	if _, err := admin2.DeleteRelay(ctx, &pb.DeleteRelayRequest{Id: "slow"}); err != nil {
		t.Fatal(err)
	}
	waitRevision(t, cfg, e2)
	if _, ok := cfg.Relay("slow"); ok {
		t.Error("the deleted relay is still served after the reconnect")
	}
	if got := len(cfg.Relays("acme")); got != 1 {
		t.Errorf("%d relays after the delete, want 1", got)
	}
}

func waitRevision(t *testing.T, cfg *configclient.Client, e *env) {
	t.Helper()
	ctx := ctxT(t)
	rev, err := e.store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
}

func TestConfigClient_failsFastWithoutThePipelineRole(t *testing.T) {
	e := start(t, config.Config{DatabaseURL: sqliteURL(t)}, "")
	_, err := configclient.New(ctxT(t), dial(t, e.addr, acmeAdminToken), testSealer(t))
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("New with a tenant admin token: %v", err)
	}
}
