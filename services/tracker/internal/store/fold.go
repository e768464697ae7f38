package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mailbus/mailbus/pkg/events"
	"github.com/mailbus/mailbus/pkg/exterr"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// StageTracker is the stage name of the events that the tracker itself
// records (retry and cancel requests).
const StageTracker = "tracker"

// Reasons of the events that the tracker records for MessageService calls.
const (
	// ReasonRetryRequested marks a queued event that puts failed and
	// bounced recipients back to queued.
	ReasonRetryRequested = "retry_requested"
	// ReasonCancelRequested marks a cancelled event recorded for a
	// CancelMessage call.
	ReasonCancelRequested = "cancel_requested"
)

// softBounceNote prefixes the detail of a sent recipient that later got a
// soft bounce.
const softBounceNote = "soft bounce after delivery: "

// ErrInvalidEvent is wrapped by errors about events that can never be
// applied (no event_id, no message_id); a consumer should not retry them.
// It is permanent by exterr.IsPermanent, and so is every error wrapping it.
var ErrInvalidEvent = exterr.Permanent(errors.New("invalid delivery event"))

// position orders the events of a message: by occur_time, then event_id so
// that the order is total.
type position struct {
	ns int64
	id string
}

func (p position) before(q position) bool {
	if p.ns != q.ns {
		return p.ns < q.ns
	}
	return p.id < q.id
}

// class is what an event does to a recipient's state.
type class int

const (
	// classHistory events only go into the history.
	classHistory class = iota
	classTransient
	classSoftBounce
	classFinal
	classRetry
)

// event is a validated DeliveryEvent with what the fold needs precomputed.
type event struct {
	pb  *mailbusv1.DeliveryEvent
	pos position
	// recipients are normalised and de-duplicated; nil means all.
	recipients []string
	class      class
}

// newEvent validates ev and fills a missing occur_time with now (so that
// the stored event, and every later fold, sees the same time).
func newEvent(ev *mailbusv1.DeliveryEvent, now time.Time) (*event, error) {
	if ev == nil {
		return nil, fmt.Errorf("%w: nil event", ErrInvalidEvent)
	}
	if ev.GetEventId() == "" {
		return nil, fmt.Errorf("%w: event of message %q has no event_id", ErrInvalidEvent, ev.GetMessageId())
	}
	if ev.GetMessageId() == "" {
		return nil, fmt.Errorf("%w: event %q has no message_id", ErrInvalidEvent, ev.GetEventId())
	}
	if ev.GetOccurTime() == nil {
		ev.OccurTime = timestamppb.New(now)
	}
	e := &event{
		pb:    ev,
		pos:   position{ns: ev.GetOccurTime().AsTime().UnixNano(), id: ev.GetEventId()},
		class: classify(ev),
	}
	for _, r := range ev.GetRecipients() {
		if a := normalizeAddress(r); a != "" && !slices.Contains(e.recipients, a) {
			e.recipients = append(e.recipients, a)
		}
	}
	return e, nil
}

// normalizeAddress returns the form in which recipients are stored and
// matched. Addresses are lower-cased whole: stages and bounce reports do not
// agree on the case of local parts, and no mail system in practice
// distinguishes them.
func normalizeAddress(a string) string { return strings.ToLower(strings.TrimSpace(a)) }

func classify(ev *mailbusv1.DeliveryEvent) class {
	switch ev.GetStatus() {
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED:
		if ev.GetStage() == StageTracker && ev.GetReason() == ReasonRetryRequested {
			return classRetry
		}
		return classTransient
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED:
		return classTransient
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED:
		if !ev.GetPermanent() {
			return classSoftBounce
		}
		return classFinal
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED:
		return classFinal
	default:
		return classHistory
	}
}

// appliesToAll reports whether e changes every recipient of its message.
func (e *event) appliesToAll() bool { return e.class != classHistory && len(e.recipients) == 0 }

// concerns reports whether e changes the state of recipient addr.
func (e *event) concerns(addr string) bool {
	if e.class == classHistory {
		return false
	}
	return len(e.recipients) == 0 || slices.Contains(e.recipients, addr)
}

// IsFinal reports whether s is a final recipient status (see the package
// documentation); unspecified, queued and deferred are not.
func IsFinal(s mailbusv1.DeliveryStatus) bool {
	switch s {
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED:
		return true
	}
	return false
}

// recipient is the folded state of one recipient of a message.
type recipient struct {
	address       string
	status        mailbusv1.DeliveryStatus
	reason        string
	detail        string
	replyCode     int32
	replyEnhanced string
	replyText     string
	relayID       string
	deliveryID    string
	attempts      int32
	// statusAt is the position of the event that set the status.
	statusAt position
	// last is the position of the latest event folded in.
	last position
}

// step folds e into r; e must concern r and come after every event already
// folded into r. The rules are in the package documentation.
func step(r *recipient, e *event) {
	if a := e.pb.GetAttempt(); a > r.attempts {
		r.attempts = a
	}
	if r.last.before(e.pos) {
		r.last = e.pos
	}
	cur := r.status
	switch e.class {
	case classHistory:
	case classRetry:
		// Deferred is for retries recorded before bounced recipients could
		// be retried and deferred ones no longer were.
		if cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED || cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED ||
			cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED {
			r.set(e, mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED)
		}
	case classTransient, classSoftBounce:
		status := e.pb.GetStatus()
		if e.class == classSoftBounce {
			status = mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED
		}
		switch {
		case !IsFinal(cur):
			r.set(e, status)
		case cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT && e.class == classSoftBounce:
			// Keep sent, its reply and relay; only say what came back.
			r.reason = e.pb.GetReason()
			r.detail = softBounceNote + e.pb.GetDetail()
		}
	case classFinal:
		status := e.pb.GetStatus()
		switch {
		case !IsFinal(cur):
			r.set(e, status)
		case status == mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED:
			// Cancelling stops only what has not happened yet.
		case status == mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT &&
			(cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED || cur == mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED):
			// A bounce or complaint is about a message already sent.
		default:
			r.set(e, status)
		}
	}
}

// set makes e's outcome the recipient's state. An event of a pipeline stage
// about a delivery says which relay carries it, and an empty relay id there
// means the default server: a re-routed recipient must not keep naming the
// relay that failed. Bounce and tracker events know no route; they keep the
// ids, so the log still says which relay carried the message.
func (r *recipient) set(e *event, status mailbusv1.DeliveryStatus) {
	r.status = status
	r.reason = e.pb.GetReason()
	r.detail = e.pb.GetDetail()
	r.replyCode = e.pb.GetReply().GetCode()
	r.replyEnhanced = e.pb.GetReply().GetEnhancedCode()
	r.replyText = e.pb.GetReply().GetText()
	if id := e.pb.GetDeliveryId(); id != "" {
		r.deliveryID = id
		if stage := e.pb.GetStage(); stage != events.StageBounce && stage != events.StageTracker {
			r.relayID = e.pb.GetRelayId()
		}
	}
	r.statusAt = e.pos
}

// fold rebuilds the state of addr from all of its message's events, which
// must be sorted by position.
func fold(addr string, history []*event) *recipient {
	r := &recipient{address: addr}
	for _, e := range history {
		if e.concerns(addr) {
			step(r, e)
		}
	}
	return r
}

// sortEvents sorts events by position.
func sortEvents(evs []*event) {
	slices.SortFunc(evs, func(a, b *event) int {
		switch {
		case a.pos.before(b.pos):
			return -1
		case b.pos.before(a.pos):
			return 1
		}
		return 0
	})
}

// finality orders statuses for the overall status of a message, least final
// first (see the package documentation).
var finality = []mailbusv1.DeliveryStatus{
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED,
}

// counts holds how many recipients of a message have each status, indexed
// by the status number (1..8; 0, unspecified, is not counted).
type counts [9]int64

func (c *counts) add(s mailbusv1.DeliveryStatus, n int64) {
	if i := int(s); i > 0 && i < len(c) {
		c[i] += n
	}
}

// overall returns the least final status that any recipient has.
func (c *counts) overall() mailbusv1.DeliveryStatus {
	for _, s := range finality {
		if c[s] > 0 {
			return s
		}
	}
	return mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED
}

// OverallStatus returns a message's status given its recipients' statuses:
// the least final one (see the package documentation).
func OverallStatus(statuses ...mailbusv1.DeliveryStatus) mailbusv1.DeliveryStatus {
	var c counts
	for _, s := range statuses {
		c.add(s, 1)
	}
	return c.overall()
}
