package bounce

import (
	"context"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/infra"
	"github.com/mailbus/mailbus/pkg/suppress"
	"github.com/mailbus/mailbus/services/bounce/internal/imappoll"
)

// Mailbox is one tenant's bounce mailbox, polled over IMAP.
type Mailbox struct {
	Tenant string
	IMAP   imappoll.Config
}

// Application is the bounce service as a process runs it: the SMTP
// listener, the IMAP pollers of cfg.Mailboxes, the consumer of the
// sender's synchronous refusals on mail.events (RunSync), and
// SuppressionService.
type Application struct {
	*Service
	suppressions *suppress.Store
	pollers      []*imappoll.Poller
}

// NewApplication is the bounce service's composition root, called by its
// main and by `mailbus dev`. It needs infra's ConfigConn (tenants and
// their bounce domains), Redis (the suppression lists, the complaint
// counters) and Kafka (cfg.Bus: the events it publishes, the sender's
// events it reads). The listener is
// not opened yet: call Listen to learn its address before Run. The cleanup
// closes what it opened.
func NewApplication(ctx context.Context, cfg Config, in infra.Infra) (*Application, func(), error) {
	if err := in.NeedRedis("bounce"); err != nil {
		return nil, nil, err
	}
	cc, err := in.ConfigCache(ctx)
	if err != nil {
		return nil, nil, err
	}
	log := in.Logger()
	supp := suppress.New(in.Redis)
	svc := New(cfg, Deps{
		Log: log, Metrics: in.Metrics, Tenants: cc, Suppressions: supp, Redis: in.Redis,
		// The tenant index lists tenants over the RPC API: the cache does
		// not list them (see TenantIndex).
		Directory: NewTenantIndex(mailbusv1.NewConfigServiceClient(in.ConfigConn), cc.Revision),
	})
	app := &Application{Service: svc, suppressions: supp}
	for _, mb := range cfg.Mailboxes {
		p, err := imappoll.New(mb.IMAP, svc.MailboxHandler(mb.Tenant), log.With("tenant", mb.Tenant))
		if err != nil {
			_ = cc.Close()
			return nil, nil, err
		}
		app.pollers = append(app.pollers, p)
	}
	return app, func() { _ = cc.Close() }, nil
}

// Register adds SuppressionService to a gRPC server.
func (a *Application) Register(r grpc.ServiceRegistrar) {
	mailbusv1.RegisterSuppressionServiceServer(r, NewSuppressionServer(a.suppressions, a.log))
}

// Suppressions is the tenants' suppression lists the service keeps.
func (a *Application) Suppressions() *suppress.Store { return a.suppressions }

// Run serves SMTP, reads the sender's refusals from mail.events and polls
// the mailboxes until ctx is cancelled.
func (a *Application) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Service.Run(gctx) })
	g.Go(func() error { return a.Service.RunSync(gctx) })
	for _, p := range a.pollers {
		g.Go(func() error { return p.Run(gctx) })
	}
	return g.Wait()
}
