// Package cli holds the mailbus commands. Each command parses its flags and
// calls into the service packages; behaviour lives there, not here.
package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mailbus/mailbus/pkg/auth"
)

// ExitError is a process exit status a command asks for.
type ExitError int

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// Root builds the command tree.
func Root() *cobra.Command {
	root := &cobra.Command{
		Use:           "mailbus",
		Short:         "mailbus outbound email relay pipeline: operator CLI and all-in-one dev process",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(devCmd(), sendCmd(), messagesCmd(), relayCmd(), bounceCmd(), benchCmd())
	return root
}

// apiFlags are the flags of commands that call the gRPC API.
type apiFlags struct {
	addr  string
	token string
	data  string
}

func (f *apiFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "api", envOr("MAILBUS_API", "127.0.0.1:7070"), "gRPC address of the config/message API (env MAILBUS_API)")
	cmd.Flags().StringVar(&f.token, "token", os.Getenv("MAILBUS_TOKEN"), "API bearer token (env MAILBUS_TOKEN; default: the token `mailbus dev` wrote to its data directory)")
	cmd.Flags().StringVar(&f.data, "data", "./.mailbus", "data directory of `mailbus dev`, where its admin token is")
}

// dial connects to the API with the bearer token. Plain-text transport is
// only for loopback addresses (mailbus dev); anything else needs TLS, which
// arrives with the production deployment.
func (f *apiFlags) dial() (*grpc.ClientConn, error) {
	tok := f.token
	if tok == "" {
		b, err := os.ReadFile(filepath.Join(f.data, "admin.token"))
		if err != nil {
			return nil, fmt.Errorf("no API token: pass --token or MAILBUS_TOKEN (or run mailbus dev, which writes %s)", filepath.Join(f.data, "admin.token"))
		}
		tok = strings.TrimSpace(string(b))
	}
	conn, err := grpc.NewClient(f.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: tok, AllowInsecure: true}))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", f.addr, err)
	}
	return conn, nil
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
