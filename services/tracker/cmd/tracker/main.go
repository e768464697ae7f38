// Command tracker runs the mailbus message log: it consumes mail.events and
// serves MessageService. Environment: see pkg/svcenv, plus DATABASE_URL,
// MAILBUS_TRACKER_LISTEN (gRPC, default :7071) and the API tokens
// MAILBUS_ADMIN_TOKEN (admin role).
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/pkg/svcenv"
	"github.com/mailbus/mailbus/services/tracker"
)

func main() { svcenv.Main("tracker", run) }

func run(ctx context.Context, env *svcenv.Env) error {
	db, err := sqlstore.Open(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer db.Close()
	trk, err := tracker.New(ctx, tracker.Config{Bus: env.Bus}, tracker.Deps{Log: env.Log, Metrics: env.Metrics, DB: db})
	if err != nil {
		return err
	}
	table := map[string]auth.Identity{}
	if t := os.Getenv("MAILBUS_ADMIN_TOKEN"); t != "" {
		table[t] = auth.Identity{Role: auth.RoleAdmin, Name: "MAILBUS_ADMIN_TOKEN"}
	}
	tokens, err := auth.NewTokens(table)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(auth.NewInterceptor(tokens, auth.IsPublic).ServerOptions()...)
	trk.Register(srv)
	lis, err := net.Listen("tcp", svcenv.Get("MAILBUS_TRACKER_LISTEN", ":7071"))
	if err != nil {
		return fmt.Errorf("listen for MessageService: %w", err)
	}
	env.Health.SetReady(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error {
		defer srv.GracefulStop()
		return trk.Run(gctx)
	})
	return g.Wait()
}
