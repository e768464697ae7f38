package cli

import (
	"fmt"
	"io"
	"strings"

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
	cmd.AddCommand(test)
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
