package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/obs"
	bouncesvc "github.com/mailbus/mailbus/services/bounce"
	"github.com/mailbus/mailbus/services/quota"
)

func devCmd() *cobra.Command {
	var o stack.Options
	var logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "run the whole pipeline in one process on embedded Kafka, Redis and SQLite, with a local mail catcher",
		Long: `mailbus dev runs every service in one process: an embedded Kafka-protocol
broker on a real port (any Kafka client can produce to it), an in-process
Redis unless REDIS_ADDR is set, SQLite files, the gRPC API, and a mail
catcher (SMTP + web page) that the example configuration relays to. The
broker, Redis and SQLite keep their data in --data, through a restart or a
kill -9. The bounce listener reads its connection limits from the bounce
command's variables (MAILBUS_BOUNCE_MAX_CONNS, MAILBUS_BOUNCE_MAX_CONNS_PER_IP,
MAILBUS_BOUNCE_CONNS_PER_MINUTE, MAILBUS_BOUNCE_IDLE_TIMEOUT), and the quota
stage its complaint guardrail from the quota command's
(MAILBUS_COMPLAINT_RATE_LIMIT, MAILBUS_COMPLAINT_MIN_VOLUME).
It prints one line with every address when ready and stops on Ctrl-C.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = obs.NewLogger(os.Stderr, obs.LogConfig{Format: logFormat, Level: logLevel})
			if brokers := os.Getenv("KAFKA_BROKERS"); brokers != "" {
				o.KafkaBrokers = strings.Split(brokers, ",")
			}
			o.RedisAddr = os.Getenv("REDIS_ADDR")
			var limits bouncesvc.Config
			if err := bouncesvc.LimitsFromEnv(&limits, os.Getenv); err != nil {
				return err
			}
			o.TuneBounce = func(c *bouncesvc.Config) {
				c.MaxConns, c.MaxConnsPerIP, c.ConnsPerMinute, c.IdleTimeout = limits.MaxConns, limits.MaxConnsPerIP, limits.ConnsPerMinute, limits.IdleTimeout
			}
			policy, err := complaints.PolicyFromEnv(os.Getenv)
			if err != nil {
				return err
			}
			o.TuneQuota = func(c *quota.Config) { c.Complaints = policy }
			st, err := stack.Start(cmd.Context(), o)
			if err != nil {
				return err
			}
			defer st.Close()
			web := ""
			if st.Catcher != nil {
				web = fmt.Sprintf(" smtp-catcher=%s web-catcher=http://%s", st.Catcher.SMTPAddr(), st.Catcher.HTTPAddr())
			}
			admin := ""
			if o.AdminAddr != "" {
				admin = " metrics=http://" + o.AdminAddr + "/metrics"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mailbus dev ready console=%s kafka=%s grpc=%s%s bounce-smtp=%s redis=%s%s data=%s\n",
				st.ConsoleURL, strings.Join(st.Brokers, ","), st.GRPCAddr, web, st.BounceAddr, st.RedisAddr, admin, o.DataDir)
			// The CLI finds this data directory (its admin token) and the
			// API from any directory through this record.
			if abs, err := filepath.Abs(o.DataDir); err == nil {
				if err := WriteDevState(DevState{DataDir: abs, GRPCAddr: st.GRPCAddr}); err != nil {
					o.Log.Warn("the CLI will not find this data directory from other directories", "err", err)
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "console: open %s and sign in with the token in %s\n", st.ConsoleURL, filepath.Join(o.DataDir, "admin.token"))
			fmt.Fprintf(out, "try: ./bin/mailbus send --from alice@acme.example --to bob@example.net --subject hello --text 'Hello Bob'\n")
			fmt.Fprintf(out, "DNS records to publish (DKIM): ./bin/mailbus domains; mail caught: http://%s (API: /api/messages)\n", webAddr(st))
			select {
			case <-cmd.Context().Done():
				fmt.Fprintln(out, "mailbus dev stopping")
				return nil
			case <-st.Done():
				return st.Err()
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data", "./.mailbus", "data directory (SQLite files, broker log, Redis data, keys, tokens)")
	f.StringVar(&o.SeedFile, "config", "", "YAML configuration seed applied at start (see deploy/mailbus.example.yaml)")
	f.StringVar(&o.KafkaAddr, "kafka-addr", "127.0.0.1:9092", "embedded Kafka broker address (ignored with KAFKA_BROKERS)")
	f.IntVar(&o.Partitions, "partitions", 8, "partitions per topic")
	f.StringVar(&o.GRPCAddr, "grpc-addr", "127.0.0.1:7070", "gRPC API address")
	f.StringVar(&o.SMTPAddr, "smtp-addr", "127.0.0.1:1025", "mail catcher SMTP address")
	f.StringVar(&o.WebAddr, "web-addr", "127.0.0.1:8025", "mail catcher web page address")
	f.StringVar(&o.BounceAddr, "bounce-addr", "127.0.0.1:2525", "bounce listener SMTP address (mail to the tenants' bounce domains)")
	f.StringVar(&o.ConsoleAddr, "console-addr", "127.0.0.1:8080", "admin web console address")
	f.StringVar(&o.AdminAddr, "admin-addr", "127.0.0.1:9090", "metrics and health address (empty disables)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

func webAddr(st *stack.Stack) string {
	if st.Catcher == nil {
		return "(no catcher)"
	}
	return st.Catcher.HTTPAddr()
}
