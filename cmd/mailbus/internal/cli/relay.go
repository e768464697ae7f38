package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func relayCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "relay", Short: "manage and test relay servers"}
	var api apiFlags
	var sendTo, mailFrom string
	test := &cobra.Command{
		Use:   "test ID",
		Short: "connect to a relay, negotiate TLS, authenticate and optionally send a test message, printing the server's own words",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := mailbusv1.NewConfigServiceClient(conn).TestRelay(cmd.Context(),
				&mailbusv1.TestRelayRequest{RelayId: args[0], SendTo: sendTo, MailFrom: mailFrom})
			if err != nil {
				return fmt.Errorf("test relay %s: %w", args[0], err)
			}
			printSteps(cmd.OutOrStdout(), resp)
			if !resp.GetOk() {
				return ExitError(1)
			}
			return nil
		},
	}
	api.register(test)
	test.Flags().StringVar(&sendTo, "send-to", "", "also send a test message to this address")
	test.Flags().StringVar(&mailFrom, "from", "", "envelope sender of the test message")
	cmd.AddCommand(test, oauthConnectCmd())
	return cmd
}

func oauthConnectCmd() *cobra.Command {
	var api apiFlags
	var listen, redirect string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "oauth-connect ID",
		Short: "connect an XOAUTH2 relay to its mailbox (Gmail, Microsoft 365): sign in at the provider, and mailbus keeps the refresh token",
		Long: `oauth-connect runs the OAuth authorization-code flow for a relay whose
auth has mechanism XOAUTH2 and an oauth client (provider or URLs, client id
and secret). It prints the provider's sign-in URL; open it, sign in as the
relay's mailbox and allow access.

By default it listens on a loopback port for the provider's redirect
(register http://127.0.0.1 as a redirect URI of a desktop client; Google
and Microsoft accept any port there). With --redirect-uri it uses that URI
instead and asks for the address the browser ends up at (or the code).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c := mailbusv1.NewConfigServiceClient(conn)
			out := cmd.OutOrStdout()
			var got <-chan url.Values
			if redirect == "" {
				lis, err := net.Listen("tcp", listen)
				if err != nil {
					return fmt.Errorf("listen for the OAuth redirect: %w", err)
				}
				redirect = "http://" + lis.Addr().String() + "/"
				ch := make(chan url.Values, 1)
				srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					q := r.URL.Query()
					if q.Get("code") == "" && q.Get("error") == "" {
						http.NotFound(w, r)
						return
					}
					select {
					case ch <- q:
					default:
					}
					fmt.Fprintln(w, "mailbus: received the provider's answer; you can close this tab and return to the terminal.")
				})}
				go func() { _ = srv.Serve(lis) }()
				defer srv.Close()
				got = ch
			}
			begun, err := c.BeginRelayOAuth(ctx, &mailbusv1.BeginRelayOAuthRequest{RelayId: args[0], RedirectUri: redirect})
			if err != nil {
				return fmt.Errorf("start connecting relay %s: %w", args[0], err)
			}
			fmt.Fprintf(out, "open this URL in a browser and sign in as the relay's mailbox:\n\n%s\n\n", begun.GetAuthorizationUrl())
			var q url.Values
			if got != nil {
				fmt.Fprintf(out, "waiting for the provider to redirect to %s ...\n", redirect)
				select {
				case q = <-got:
				case <-ctx.Done():
					return fmt.Errorf("no redirect from the provider: %w", ctx.Err())
				}
			} else {
				fmt.Fprintf(out, "paste the address the browser ended up at (%s?code=...), or the code: ", redirect)
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("read the redirect address: %w", err)
				}
				line = strings.TrimSpace(line)
				if u, err := url.Parse(line); err == nil && u.RawQuery != "" {
					q = u.Query()
				} else {
					q = url.Values{"code": {line}, "state": {begun.GetState()}}
				}
			}
			if e := q.Get("error"); e != "" {
				return fmt.Errorf("the provider refused: %s %s", e, q.Get("error_description"))
			}
			if q.Get("state") != begun.GetState() {
				return fmt.Errorf("the redirect's state does not match this connection (another sign-in's redirect?)")
			}
			done, err := c.CompleteRelayOAuth(ctx, &mailbusv1.CompleteRelayOAuthRequest{State: q.Get("state"), Code: q.Get("code")})
			if err != nil {
				return fmt.Errorf("complete connecting relay %s: %w", args[0], err)
			}
			fmt.Fprintf(out, "relay %s is connected to %s: the senders now refresh its access tokens themselves\n",
				done.GetRelay().GetId(), done.GetRelay().GetAuth().GetUsername())
			return nil
		},
	}
	api.register(cmd)
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "loopback address to receive the provider's redirect on")
	cmd.Flags().StringVar(&redirect, "redirect-uri", "", "use this registered redirect URI instead of a loopback listener, and paste the result")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "how long to wait for the sign-in")
	return cmd
}

func printSteps(w io.Writer, resp *mailbusv1.TestRelayResponse) {
	for _, s := range resp.GetSteps() {
		mark := "ok  "
		if !s.GetOk() {
			mark = "FAIL"
		}
		// A multi-line reply (EHLO's extensions) continues under the
		// first line's text.
		detail := strings.ReplaceAll(strings.TrimSpace(s.GetDetail()), "\n", "\n"+strings.Repeat(" ", 24))
		fmt.Fprintf(w, "%s %-9s %5dms  %s\n", mark, s.GetName(), s.GetDurationMs(), detail)
	}
	if resp.GetOk() {
		fmt.Fprintln(w, "relay test passed")
	} else {
		fmt.Fprintln(w, "relay test failed")
	}
}
