package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mailbus/mailbus/pkg/bounce"
)

// bounceRecord is the JSON shape of `mailbus bounce parse --json`.
type bounceRecord struct {
	File              string `json:"file"`
	Recipient         string `json:"recipient"`
	Action            string `json:"action,omitempty"`
	Status            string `json:"status,omitempty"`
	ReplyCode         int    `json:"replycode,omitempty"`
	Diagnostic        string `json:"diagnostic,omitempty"`
	Reason            string `json:"reason"`
	HardBounce        bool   `json:"hardbounce"`
	FeedbackType      string `json:"feedbacktype,omitempty"`
	RemoteMTA         string `json:"remote_mta,omitempty"`
	ReportingMTA      string `json:"reporting_mta,omitempty"`
	OriginalMessageID string `json:"original_message_id,omitempty"`
}

func bounceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bounce", Short: "work with bounce messages"}
	var asJSON bool
	parse := &cobra.Command{
		Use:   "parse FILE...",
		Short: "parse and classify bounce messages (RFC 3464 DSNs, common MTA formats, ARF complaints, auto-replies)",
		Long: `Prints one record per bounced recipient. A file that is not a bounce gives
no record; the exit status is still 0. A file that cannot be read is an error.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "FILE\tRECIPIENT\tREASON\tHARD\tSTATUS\tCODE\tDIAGNOSTIC")
			}
			for _, f := range files {
				raw, err := os.ReadFile(f)
				if err != nil {
					return fmt.Errorf("read %s: %w", f, err)
				}
				recs, err := bounce.Parse(raw)
				if err != nil {
					return fmt.Errorf("parse %s: %w", f, err)
				}
				for _, r := range recs {
					if asJSON {
						if err := enc.Encode(bounceRecord{
							File: f, Recipient: r.Recipient, Action: r.Action, Status: r.Status, ReplyCode: r.ReplyCode,
							Diagnostic: r.Diagnostic, Reason: r.Reason, HardBounce: r.Hard, FeedbackType: r.FeedbackType,
							RemoteMTA: r.RemoteMTA, ReportingMTA: r.ReportingMTA, OriginalMessageID: r.OriginalMessageID,
						}); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%d\t%s\n", f, r.Recipient, r.Reason, r.Hard, r.Status, r.ReplyCode, truncate(r.Diagnostic, 80))
				}
			}
			if !asJSON {
				return tw.Flush()
			}
			return nil
		},
	}
	parse.Flags().BoolVar(&asJSON, "json", false, "one JSON object per record")
	cmd.AddCommand(parse)
	return cmd
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
