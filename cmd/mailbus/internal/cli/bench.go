package cli

import (
	"github.com/spf13/cobra"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/bench"
)

func benchCmd() *cobra.Command {
	var o bench.Options
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "measure the whole pipeline: messages per second end to end, latency, CPU per stage, and the RSA-2048 signing ceiling",
		Long: `Runs the whole pipeline in this process on the embedded broker, or with
--kafka on an external Kafka (deploy/kafka/run starts one; make bench-kafka
does both), and prints messages per second end to end, latency from publish
to SMTP acceptance, CPU per message per stage, and the RSA-2048 ceiling.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bench.Run(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Messages, "messages", 5000, "messages to send")
	f.IntVar(&o.Size, "size", 10*1024, "approximate message size in bytes")
	f.IntVar(&o.Partitions, "partitions", 8, "partitions per topic")
	f.DurationVar(&o.SinkLatency, "sink-latency", 0, "artificial reply latency of the SMTP sink")
	f.DurationVar(&o.SinkDataDelay, "sink-data-delay", 0, "how long the SMTP sink waits before its reply to the message (after the final dot), like a relay that scans mail; other commands are answered at once")
	f.IntVar(&o.MaxConnections, "max-connections", 0, "the sink relay's max_connections (default: the sender's default)")
	f.StringVar(&o.RedisAddr, "redis", "", "Redis address (default: start a redis-server, else in-process)")
	f.DurationVar(&o.OpenLoop, "open-loop", 0, "after the burst, publish at a fixed rate for this long and print latency percentiles from each message's scheduled time (0: no such phase)")
	f.Float64Var(&o.OpenLoopRate, "open-loop-rate", 0, "the open-loop phase's rate in messages/s (default: half the burst's measured rate)")
	f.StringSliceVar(&o.KafkaBrokers, "kafka", nil, "Kafka bootstrap brokers, host:port[,...] (default: the embedded broker)")
	return cmd
}
