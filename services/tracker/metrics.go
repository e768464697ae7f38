package tracker

import (
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// outcomes counts the recipients of every event the message log recorded,
// by the stage that reported it, its status and its reason. The tracker is
// the one place that sees every stage's outcomes (quota's deferrals, the
// sender's deferrals and bounces, the bounce service's late bounces), and
// it counts an event once however often it is redelivered.
type outcomes struct {
	recipients *prometheus.CounterVec
}

func newOutcomes() outcomes {
	return outcomes{recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailbus_tracker_recipient_outcomes_total",
		Help: "Recipients of recorded events, by stage, status (sent, deferred, bounced, failed, ...) and reason.",
	}, []string{"stage", "status", "reason"})}
}

// label is what a label may hold: stage names and reason codes are short
// snake_case words. Anything else (a foreign producer's free text) counts
// as "other", so that no event can grow the metric without bound.
var label = regexp.MustCompile(`^[a-z0-9_.-]{1,48}$`)

func (o outcomes) observe(evs []*mailbusv1.DeliveryEvent) {
	for _, ev := range evs {
		status := strings.ToLower(strings.TrimPrefix(ev.GetStatus().String(), "DELIVERY_STATUS_"))
		reason := ev.GetReason()
		if ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED && ev.GetWarning() != "" {
			// A warning about no recipient in particular (relay_disabled).
			status, reason = "warning", ev.GetWarning()
		}
		o.recipients.WithLabelValues(bounded(ev.GetStage()), bounded(status), bounded(reason)).Add(float64(max(len(ev.GetRecipients()), 1)))
	}
}

func bounded(s string) string {
	if s == "" || label.MatchString(s) {
		return s
	}
	return "other"
}
