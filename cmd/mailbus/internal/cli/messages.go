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
	cmd.AddCommand(show, list)
	return cmd
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
