package console

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/infra"
)

// Endpoints are the gRPC addresses of the services the console calls.
type Endpoints struct {
	Config       string // ConfigService
	Messages     string // MessageService (the tracker)
	Suppressions string // SuppressionService (the bounce service)
	Webhooks     string // WebhookService (the webhook service); optional
	// TLS reaches them over TLS with the system roots.
	TLS bool
}

// NewApplication is the console's composition root, called by its main
// and by `mailbus dev`: it connects to the three services (one connection
// per distinct address) and builds the console. The cleanup closes the
// connections.
func NewApplication(_ context.Context, cfg Config, ep Endpoints, in infra.Infra) (*Service, func(), error) {
	creds := insecure.NewCredentials()
	if ep.TLS {
		creds = credentials.NewTLS(nil)
	}
	conns := map[string]*grpc.ClientConn{}
	cleanup := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	dial := func(addr string) (*grpc.ClientConn, error) {
		if c, ok := conns[addr]; ok {
			return c, nil
		}
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, fmt.Errorf("connect the console to %s: %w", addr, err)
		}
		conns[addr] = c
		return c, nil
	}
	var cc [3]*grpc.ClientConn
	for i, addr := range []string{ep.Config, ep.Messages, ep.Suppressions} {
		if addr == "" {
			cleanup()
			return nil, nil, fmt.Errorf("build console: no address for service %d of ConfigService, MessageService, SuppressionService", i+1)
		}
		c, err := dial(addr)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		cc[i] = c
	}
	api := NewAPI(cc[0], cc[1], cc[2])
	if ep.Webhooks != "" {
		c, err := dial(ep.Webhooks)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		api.Webhooks = mailbusv1.NewWebhookServiceClient(c)
	}
	svc, err := New(cfg, Deps{Log: in.Logger(), API: api})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return svc, cleanup, nil
}
