package bench

import (
	"context"
	"io"
	"testing"
)

// BenchmarkPipeline_endToEnd runs the whole pipeline (embedded broker, real
// redis-server when installed, SQLite, SMTP sink, RSA-2048 DKIM) and
// reports messages per second end to end, latency percentiles and the RSA
// ceiling measured in the same run. go test -run '^$' -bench Pipeline
// ./cmd/mailbus/internal/bench
func BenchmarkPipeline_endToEnd(b *testing.B) {
	res, err := Measure(context.Background(), Options{Messages: max(b.N, 500), Warmup: 100}, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.Rate, "msgs/s")
	b.ReportMetric(float64(res.P50.Milliseconds()), "p50-ms")
	b.ReportMetric(float64(res.P99.Milliseconds()), "p99-ms")
	b.ReportMetric(100*res.Rate/res.SignCeiling, "%-of-rsa-ceiling")
	b.ReportMetric(res.MsgsPerConn, "msgs/conn")
}
