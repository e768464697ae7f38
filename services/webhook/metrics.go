package webhook

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	events     *prometheus.CounterVec
	enqueued   prometheus.Counter
	duplicates prometheus.Counter
	attempts   *prometheus.CounterVec
	dead       prometheus.Counter
	latency    prometheus.Histogram
	outbox     *prometheus.GaugeVec
	unblocked  prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbus_webhook_events_total",
			Help: "Events consumed from mail.events, by result (enqueued, no_endpoint).",
		}, []string{"result"}),
		enqueued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbus_webhook_enqueued_total",
			Help: "Webhooks written to the outbox (one per endpoint and event).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbus_webhook_duplicates_total",
			Help: "Webhooks already in the outbox when their event came again (redelivered records).",
		}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbus_webhook_attempts_total",
			Help: "Webhook POSTs, by result (delivered: 2xx; failed: anything else).",
		}, []string{"result"}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbus_webhook_dead_letters_total",
			Help: "Webhooks that gave up after the retry schedule.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailbus_webhook_delivery_seconds",
			Help:    "Duration of successful webhook POSTs.",
			Buckets: prometheus.DefBuckets,
		}),
		unblocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbus_webhook_unblocked_total",
			Help: "Outbox rows made ready by the periodic repair: enqueued while their message's previous event finished (PostgreSQL).",
		}),
		outbox: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailbus_webhook_outbox",
			Help: "Outbox rows by state (due, dead).",
		}, []string{"state"}),
	}
}

func (m metrics) register(r prometheus.Registerer) {
	r.MustRegister(m.events, m.enqueued, m.duplicates, m.attempts, m.dead, m.latency, m.outbox, m.unblocked)
}
