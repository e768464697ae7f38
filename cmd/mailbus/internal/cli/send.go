package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/obs"
)

func sendCmd() *cobra.Command {
	var (
		brokers                       string
		file                          string
		tenant, user, kind            string
		from, subject, text, html     string
		to, cc, bcc, headers, replyTo []string
		idem, campaign                string
	)
	cmd := &cobra.Command{
		Use:   "send",
		Short: "publish a submission to mail.submit, from flags or a protojson file",
		Example: `  mailbus send --tenant acme --from alice@acme.example --to bob@example.net --subject Hi --text "Hello Bob"
  mailbus send --file submission.json`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sub := &mailbusv1.Submission{}
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("read submission: %w", err)
				}
				if err := protojson.Unmarshal(b, sub); err != nil {
					return fmt.Errorf("parse submission %s: %w", file, err)
				}
			}
			set := func(dst *string, v string) {
				if v != "" {
					*dst = v
				}
			}
			set(&sub.TenantId, tenant)
			set(&sub.UserId, user)
			set(&sub.Subject, subject)
			set(&sub.TextBody, text)
			set(&sub.HtmlBody, html)
			set(&sub.IdempotencyId, idem)
			set(&sub.CampaignId, campaign)
			if from != "" {
				sub.From = parseAddr(from)
			}
			for _, a := range to {
				sub.To = append(sub.To, parseAddr(a))
			}
			for _, a := range cc {
				sub.Cc = append(sub.Cc, parseAddr(a))
			}
			for _, a := range bcc {
				sub.Bcc = append(sub.Bcc, parseAddr(a))
			}
			for _, a := range replyTo {
				sub.ReplyTo = append(sub.ReplyTo, parseAddr(a))
			}
			for _, h := range headers {
				name, value, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("header %q: want Name: value", h)
				}
				sub.Headers = append(sub.Headers, &mailbusv1.Header{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
			}
			if kind != "" {
				v, ok := mailbusv1.EmailKind_value["EMAIL_KIND_"+strings.ToUpper(kind)]
				if !ok {
					return fmt.Errorf("unknown kind %q (workflow, mass, individual, transactional, system)", kind)
				}
				sub.Kind = mailbusv1.EmailKind(v)
			}
			if sub.Kind == mailbusv1.EmailKind_EMAIL_KIND_UNSPECIFIED {
				sub.Kind = mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL
			}
			if sub.IdempotencyId == "" {
				sub.IdempotencyId = fmt.Sprintf("cli-%d", time.Now().UnixNano())
			}
			if sub.SubmitTime == nil {
				sub.SubmitTime = timestamppb.Now()
			}
			log := obs.NewLogger(cmd.ErrOrStderr(), obs.LogConfig{Format: "text", Level: "warn"})
			pub, err := bus.NewPublisher(bus.Config{Brokers: strings.Split(brokers, ","), ClientID: "mailbus-cli"}, log)
			if err != nil {
				return fmt.Errorf("connect to kafka at %s: %w", brokers, err)
			}
			defer pub.Close()
			if err := bus.Publish(pub, bus.TopicSubmit, sub, nil); err != nil {
				return fmt.Errorf("publish to %s: %w", bus.TopicSubmit, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published submission %s for tenant %s to %s\n", sub.IdempotencyId, sub.TenantId, bus.TopicSubmit)
			fmt.Fprintf(cmd.OutOrStdout(), "message id: %s  (mailbus messages show %s)\n",
				ids.MessageID(sub.TenantId, sub.IdempotencyId), ids.MessageID(sub.TenantId, sub.IdempotencyId))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&brokers, "brokers", envOr("KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka bootstrap brokers, comma separated (env KAFKA_BROKERS)")
	f.StringVar(&file, "file", "", "protojson Submission file; flags override its fields")
	f.StringVar(&tenant, "tenant", "acme", "tenant id")
	f.StringVar(&user, "user", "", "user id")
	f.StringVar(&kind, "kind", "", "workflow, mass, individual, transactional (default) or system")
	f.StringVar(&from, "from", "", `From, "Name <addr>" or addr`)
	f.StringSliceVar(&to, "to", nil, "To recipients (repeatable)")
	f.StringSliceVar(&cc, "cc", nil, "Cc recipients")
	f.StringSliceVar(&bcc, "bcc", nil, "Bcc recipients")
	f.StringSliceVar(&replyTo, "reply-to", nil, "Reply-To addresses")
	f.StringVar(&subject, "subject", "", "subject")
	f.StringVar(&text, "text", "", "plain-text body")
	f.StringVar(&html, "html", "", "HTML body")
	f.StringArrayVar(&headers, "header", nil, `extra header "Name: value" (repeatable)`)
	f.StringVar(&idem, "id", "", "idempotency id (default: generated)")
	f.StringVar(&campaign, "campaign", "", "campaign id")
	return cmd
}

// parseAddr splits "Name <addr>"; validation is the router's job, so that
// the CLI and every other producer get the same errors.
func parseAddr(s string) *mailbusv1.Address {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '<'); i >= 0 && strings.HasSuffix(s, ">") {
		return &mailbusv1.Address{Name: strings.Trim(strings.TrimSpace(s[:i]), `"`), Email: s[i+1 : len(s)-1]}
	}
	return &mailbusv1.Address{Email: s}
}
