package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func messagesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "messages", Short: "read the message log"}
	var api apiFlags
	var asJSON bool
	show := &cobra.Command{
		Use:   "show ID",
		Short: "print a message's status, recipients and history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := mailbusv1.NewMessageServiceClient(conn).GetMessage(cmd.Context(), &mailbusv1.GetMessageRequest{Id: args[0]})
			if err != nil {
				return fmt.Errorf("get message %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), resp.GetMessage())
			}
			printMessage(cmd.OutOrStdout(), resp.GetMessage())
			return nil
		},
	}
	api.register(show)
	show.Flags().BoolVar(&asJSON, "json", false, "print protojson")

	var lapi apiFlags
	var tenant, user, status string
	var since time.Duration
	var limit int32
	list := &cobra.Command{
		Use:   "list",
		Short: "list messages, newest first",
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := lapi.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			req := &mailbusv1.ListMessagesRequest{TenantId: tenant, UserId: user, PageSize: limit}
			if status != "" {
				v, ok := mailbusv1.DeliveryStatus_value["DELIVERY_STATUS_"+strings.ToUpper(status)]
				if !ok {
					return fmt.Errorf("unknown status %q (queued, sent, deferred, bounced, failed, suppressed, cancelled, complained)", status)
				}
				req.Status = mailbusv1.DeliveryStatus(v)
			}
			if since > 0 {
				req.StartTime = timestamppb.New(time.Now().Add(-since))
			}
			resp, err := mailbusv1.NewMessageServiceClient(conn).ListMessages(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("list messages: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tCREATED\tFROM\tSUBJECT")
			for _, m := range resp.GetMessages() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.GetId(), statusName(m.GetStatus()),
					m.GetCreateTime().AsTime().Local().Format(time.DateTime), m.GetSummary().GetFrom(), m.GetSummary().GetSubject())
			}
			return tw.Flush()
		},
	}
	lapi.register(list)
	list.Flags().StringVar(&tenant, "tenant", "", "tenant id")
	list.Flags().StringVar(&user, "user", "", "user id")
	list.Flags().StringVar(&status, "status", "", "only this status")
	list.Flags().DurationVar(&since, "since", 0, "only messages created in this past duration (e.g. 24h)")
	list.Flags().Int32Var(&limit, "limit", 50, "page size")
	list.Flags().BoolVar(&asJSON, "json", false, "print protojson")
	cmd.AddCommand(show, list, actionCmd("retry"), actionCmd("cancel"))
	return cmd
}

// actionCmd is `messages retry` or `messages cancel`: one message by id, or
// every message that matches the filter flags, page by page.
func actionCmd(verb string) *cobra.Command {
	var api apiFlags
	var f mailbusv1.MessageFilter
	var status string
	var since time.Duration
	var asJSON bool
	short := map[string]string{
		"retry":  "send the failed and bounced recipients of a message (ID) or of every message matching the flags again",
		"cancel": "stop the recipients of a message (ID) or of every message matching the flags that are not sent yet",
	}[verb]
	c := &cobra.Command{
		Use:   verb + " [ID]",
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ms := mailbusv1.NewMessageServiceClient(conn)
			ctx := cmd.Context()
			if len(args) == 1 {
				var m *mailbusv1.Message
				if verb == "retry" {
					resp, err := ms.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: args[0]})
					if err != nil {
						return fmt.Errorf("retry message %s: %w", args[0], err)
					}
					m = resp.GetMessage()
				} else {
					resp, err := ms.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: args[0]})
					if err != nil {
						return fmt.Errorf("cancel message %s: %w", args[0], err)
					}
					m = resp.GetMessage()
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), m)
				}
				printMessage(cmd.OutOrStdout(), m)
				return nil
			}
			// A bare "retry" or "cancel" acting on every message an admin
			// sees is too easy to type by mistake.
			if f.TenantId == "" && f.UserId == "" && f.RelayId == "" && f.CampaignId == "" && status == "" && since == 0 {
				return fmt.Errorf("name a message ID, or select messages with at least one of --tenant, --user, --relay, --campaign, --status, --since")
			}
			if status != "" {
				v, ok := mailbusv1.DeliveryStatus_value["DELIVERY_STATUS_"+strings.ToUpper(status)]
				if !ok {
					return fmt.Errorf("unknown status %q (queued, sent, deferred, bounced, failed, suppressed, cancelled, complained)", status)
				}
				f.Status = mailbusv1.DeliveryStatus(v)
			}
			if since > 0 {
				f.StartTime = timestamppb.New(time.Now().Add(-since))
			}
			var total mailbusv1.BulkResult
			total.Refused = map[string]string{}
			for token := ""; ; {
				var r *mailbusv1.BulkResult
				if verb == "retry" {
					resp, err := ms.RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{Filter: &f, PageToken: token})
					if err != nil {
						return fmt.Errorf("retry messages: %w", err)
					}
					r = resp.GetResult()
				} else {
					resp, err := ms.CancelMessages(ctx, &mailbusv1.CancelMessagesRequest{Filter: &f, PageToken: token})
					if err != nil {
						return fmt.Errorf("cancel messages: %w", err)
					}
					r = resp.GetResult()
				}
				total.Matched += r.GetMatched()
				total.Changed += r.GetChanged()
				total.Unchanged += r.GetUnchanged()
				total.Recipients += r.GetRecipients()
				for id, why := range r.GetRefused() {
					total.Refused[id] = why
				}
				if token = r.GetNextPageToken(); token == "" {
					break
				}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &total)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d messages matched: %d %s (%d recipients), %d with nothing to %s, %d refused\n",
				total.Matched, total.Changed, map[string]string{"retry": "retried", "cancel": "cancelled"}[verb],
				total.Recipients, total.Unchanged, verb, len(total.Refused))
			for id, why := range total.Refused {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s: %s\n", id, why)
			}
			return nil
		},
	}
	api.register(c)
	c.Flags().StringVar(&f.TenantId, "tenant", "", "tenant id")
	c.Flags().StringVar(&f.UserId, "user", "", "user id")
	c.Flags().StringVar(&f.RelayId, "relay", "", "messages with a recipient routed through this relay")
	c.Flags().StringVar(&f.CampaignId, "campaign", "", "campaign id")
	c.Flags().StringVar(&status, "status", "", "only messages with this overall status")
	c.Flags().DurationVar(&since, "since", 0, "only messages created in this past duration (e.g. 24h)")
	c.Flags().BoolVar(&asJSON, "json", false, "print protojson")
	return c
}

func statusName(s mailbusv1.DeliveryStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DELIVERY_STATUS_"))
}

func printMessage(w io.Writer, m *mailbusv1.Message) {
	fmt.Fprintf(w, "message %s  status %s\n", m.GetId(), statusName(m.GetStatus()))
	s := m.GetSummary()
	fmt.Fprintf(w, "  tenant %s  user %s  kind %s\n", m.GetTenantId(), m.GetUserId(),
		strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "EMAIL_KIND_")))
	fmt.Fprintf(w, "  from %s  subject %q\n", s.GetFrom(), s.GetSubject())
	if s.GetHeaderMessageId() != "" {
		fmt.Fprintf(w, "  Message-ID %s\n", s.GetHeaderMessageId())
	}
	fmt.Fprintln(w, "recipients:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range m.GetRecipients() {
		reply := ""
		if r.GetReply().GetCode() != 0 {
			reply = fmt.Sprintf("%d %s %s", r.GetReply().GetCode(), r.GetReply().GetEnhancedCode(), r.GetReply().GetText())
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", r.GetAddress(), statusName(r.GetStatus()), r.GetReason(), strings.TrimSpace(reply+" "+r.GetDetail()))
	}
	_ = tw.Flush()
	if len(m.GetHistory()) > 0 {
		fmt.Fprintln(w, "history:")
		for _, e := range m.GetHistory() {
			fmt.Fprintf(w, "  %s  %-8s %-10s %s %s\n", e.GetOccurTime().AsTime().Local().Format("15:04:05.000"),
				e.GetStage(), statusName(e.GetStatus()), strings.Join(e.GetRecipients(), ","), strings.TrimSpace(e.GetReason()+" "+e.GetDetail()))
		}
	}
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
