package config_test

import (
	"fmt"
	"testing"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/config"
)

// populate creates tenants × (5 domains, 3 relays each on the first domain).
func populate(b *testing.B, c pb.ConfigServiceClient, tenants int) {
	ctx := ctxT(b)
	for i := range tenants {
		tn := acmeTenant()
		tn.Id = fmt.Sprintf("t%03d", i)
		if _, err := c.CreateTenant(ctx, &pb.CreateTenantRequest{Tenant: tn}); err != nil {
			b.Fatal(err)
		}
		for j := range 5 {
			name := fmt.Sprintf("d%d.t%03d.example", j, i)
			if _, err := c.CreateDomain(ctx, &pb.CreateDomainRequest{Domain: &pb.Domain{TenantId: tn.Id, Name: name}}); err != nil {
				b.Fatal(err)
			}
		}
		for k := range 3 {
			if _, err := c.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay(fmt.Sprintf("r%d-%s", k, tn.Id), tn.Id, fmt.Sprintf("d0.t%03d.example", i))}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkGetSnapshot is what one pipeline replica pays per config change:
// 100 tenants, 500 domains, 300 relays over gRPC with sealed secrets.
func BenchmarkGetSnapshot(b *testing.B) {
	e := start(b, config.Config{DatabaseURL: sqliteURL(b)}, "")
	populate(b, client(b, e, adminToken), 100)
	pipeline := client(b, e, pipelineToken)
	ctx := ctxT(b)
	b.ResetTimer()
	for b.Loop() {
		if _, err := pipeline.GetSnapshot(ctx, &pb.GetSnapshotRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConfigClient_lookups is what the pipeline pays per message.
func BenchmarkConfigClient_lookups(b *testing.B) {
	e := start(b, config.Config{DatabaseURL: sqliteURL(b)}, "")
	populate(b, client(b, e, adminToken), 20)
	cfg, err := configclient.New(ctxT(b), dial(b, e.addr, pipelineToken), testSealer(b))
	if err != nil {
		b.Fatal(err)
	}
	defer cfg.Close()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := cfg.DomainByName("d0.t007.example"); !ok {
			b.Fatal("domain missing")
		}
		if len(cfg.Relays("t007")) != 3 {
			b.Fatal("relays missing")
		}
		if _, ok := cfg.Relay("r1-t007"); !ok {
			b.Fatal("relay missing")
		}
	}
}
