package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// RetryEvent returns the event that records a retry of m's failed and
// bounced recipients, asked for by the caller by, and those recipients;
// nil when there are none. Deferred recipients are not retried: the
// pipeline still holds them on a retry topic, and sending them again now
// would send them twice.
//
// The event id is derived from the message and its history, so asking
// twice for the same state gives the same event, which Apply records once:
// a retry whose recording failed can be repeated, and once recorded the
// recipients are queued and a repeat finds nothing to do.
func RetryEvent(m *mailbusv1.Message, at time.Time, by string) (*mailbusv1.DeliveryEvent, []string) {
	n := RetryCount(m) + 1
	ev, targets := intentEvent(m, at, ReasonRetryRequested, mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED,
		fmt.Sprintf("retry %d requested by %s through MessageService", n, by), func(s mailbusv1.DeliveryStatus) bool {
			return s == mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED || s == mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
		})
	if ev != nil {
		ev.Attributes = map[string]string{"requested_by": by, "retry": strconv.Itoa(int(n))}
	}
	return ev, targets
}

// RetryCount returns how many retries of m the log holds.
func RetryCount(m *mailbusv1.Message) int32 {
	var n int32
	for _, e := range m.GetHistory() {
		if e.GetStage() == StageTracker && e.GetReason() == ReasonRetryRequested {
			n++
		}
	}
	return n
}

// Cancelled returns the first cancellation in m's history, or nil.
func Cancelled(m *mailbusv1.Message) *mailbusv1.DeliveryEvent {
	for _, e := range m.GetHistory() {
		if e.GetStage() == StageTracker && e.GetReason() == ReasonCancelRequested {
			return e
		}
	}
	return nil
}

// CancelEvent returns the event that records the cancellation of m's
// recipients that are not final yet, and those recipients; nil when there
// are none. Its id is derived like RetryEvent's.
func CancelEvent(m *mailbusv1.Message, at time.Time, by string) (*mailbusv1.DeliveryEvent, []string) {
	ev, targets := intentEvent(m, at, ReasonCancelRequested, mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED,
		"cancelled by "+by+" through MessageService", func(s mailbusv1.DeliveryStatus) bool { return !IsFinal(s) })
	if ev != nil {
		ev.Attributes = map[string]string{"requested_by": by}
	}
	return ev, targets
}

func intentEvent(m *mailbusv1.Message, at time.Time, reason string, status mailbusv1.DeliveryStatus,
	detail string, want func(mailbusv1.DeliveryStatus) bool) (*mailbusv1.DeliveryEvent, []string) {
	var targets []string
	for _, r := range m.GetRecipients() {
		if want(r.GetStatus()) {
			targets = append(targets, r.GetAddress())
		}
	}
	if len(targets) == 0 {
		return nil, nil
	}
	slices.Sort(targets)
	h := sha256.New()
	for _, s := range []string{reason, m.GetId()} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	ids := make([]string, 0, len(m.GetHistory()))
	for _, e := range m.GetHistory() {
		ids = append(ids, e.GetEventId())
	}
	slices.Sort(ids)
	for _, list := range [][]string{targets, ids} {
		for _, s := range list {
			h.Write([]byte(s))
			h.Write([]byte{0})
		}
		h.Write([]byte{1})
	}
	return &mailbusv1.DeliveryEvent{
		EventId:    StageTracker + "-" + reason + "-" + hex.EncodeToString(h.Sum(nil)[:16]),
		TenantId:   m.GetTenantId(),
		UserId:     m.GetUserId(),
		MessageId:  m.GetId(),
		Recipients: targets,
		Status:     status,
		Stage:      StageTracker,
		Reason:     reason,
		Detail:     detail,
		OccurTime:  timestamppb.New(at),
	}, targets
}
