// Package cli holds the mailbus commands. Each command parses its flags and
// calls into the service packages; behaviour lives there, not here.
package cli

import (
	"encoding/json"
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
	root.AddCommand(devCmd(), sendCmd(), messagesCmd(), relayCmd(), bounceCmd(), benchCmd(), domainsCmd(), domainCmd())
	return root
}

// apiFlags are the flags of commands that call the gRPC API.
type apiFlags struct {
	addr  string
	token string
	data  string
}

func (f *apiFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "api", "", "gRPC address of the config/message API (env MAILBUS_API; default: the one `mailbus dev` last ran on, else 127.0.0.1:7070)")
	cmd.Flags().StringVar(&f.token, "token", os.Getenv("MAILBUS_TOKEN"), "API bearer token (env MAILBUS_TOKEN; default: the token `mailbus dev` wrote to its data directory)")
	cmd.Flags().StringVar(&f.data, "data", "", "data directory of `mailbus dev`, where its admin token is (env MAILBUS_DATA; default: the one `mailbus dev` last ran with, recorded in "+DevStatePath()+", else ./.mailbus)")
}

// DevState is what `mailbus dev` records for the CLI in the user's
// configuration directory, so that the CLI finds its API and admin token
// from any directory, not only the repository root.
type DevState struct {
	// DataDir is the absolute data directory.
	DataDir string `json:"data_dir"`
	// GRPCAddr is the API's address.
	GRPCAddr string `json:"grpc_addr"`
}

// DevStatePath is where DevState is kept: $XDG_CONFIG_HOME/mailbus/dev.json
// (~/.config/mailbus/dev.json on Linux).
func DevStatePath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return filepath.Join(".mailbus", "dev.json")
	}
	return filepath.Join(dir, "mailbus", "dev.json")
}

// WriteDevState records st for later CLI runs.
func WriteDevState(st DevState) error {
	path := DevStatePath()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("record the dev data directory: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("record the dev data directory: %w", err)
	}
	return nil
}

func readDevState() (DevState, bool) {
	var st DevState
	b, err := os.ReadFile(DevStatePath())
	if err != nil || json.Unmarshal(b, &st) != nil {
		return DevState{}, false
	}
	return st, true
}

// resolve fills in the address and data directory: the flag, else the
// environment, else what `mailbus dev` recorded, else the defaults.
func (f *apiFlags) resolve() (addr, data string) {
	st, _ := readDevState()
	addr = firstNonEmpty(f.addr, os.Getenv("MAILBUS_API"), st.GRPCAddr, "127.0.0.1:7070")
	data = firstNonEmpty(f.data, os.Getenv("MAILBUS_DATA"), st.DataDir, "./.mailbus")
	return addr, data
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// apiToken is the bearer token: the flag or MAILBUS_TOKEN, else the admin
// token in the data directory.
func (f *apiFlags) apiToken() (string, error) {
	if f.token != "" {
		return f.token, nil
	}
	_, data := f.resolve()
	path := filepath.Join(data, "admin.token")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("no API token: pass --token or MAILBUS_TOKEN, or --data (MAILBUS_DATA) with the data directory of mailbus dev (no %s)", path)
	}
	return strings.TrimSpace(string(b)), nil
}

// dial connects to the API with the bearer token. Plain-text transport is
// only for loopback addresses (mailbus dev); anything else needs TLS, which
// arrives with the production deployment.
func (f *apiFlags) dial() (*grpc.ClientConn, error) {
	tok, err := f.apiToken()
	if err != nil {
		return nil, err
	}
	addr, _ := f.resolve()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: tok, AllowInsecure: true}))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return conn, nil
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
