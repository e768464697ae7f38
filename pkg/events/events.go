// Package events builds the DeliveryEvents every stage publishes to
// mail.events. Event ids are derived from what the event is about (see
// ids.EventID), so that a stage handling a redelivered record reports the
// same event, which the tracker stores once.
package events

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
)

// Stage names, as they appear in the message log.
const (
	StageRouter  = "router"
	StageQuota   = "quota"
	StageSigner  = "signer"
	StageSender  = "sender"
	StageBounce  = "bounce"
	StageTracker = "tracker"
	// StageConfig is the config service, for warnings about a tenant's
	// configuration (domain_dns_error) rather than about a message.
	StageConfig = "config"
)

// ForDelivery starts an event about a delivery's recipients (all of them
// unless rcpts are given).
func ForDelivery(d *mailbusv1.Delivery, stage string, status mailbusv1.DeliveryStatus, reason, detail string, now time.Time, rcpts ...string) *mailbusv1.DeliveryEvent {
	if len(rcpts) == 0 {
		rcpts = d.GetEnvelope().GetRcptTo()
	}
	e := &mailbusv1.DeliveryEvent{
		TenantId:   d.GetTenantId(),
		UserId:     d.GetUserId(),
		MessageId:  d.GetMessageId(),
		DeliveryId: d.GetDeliveryId(),
		Recipients: rcpts,
		Status:     status,
		Stage:      stage,
		Reason:     reason,
		Detail:     detail,
		RelayId:    d.GetRoute().GetRelayId(),
		Attempt:    d.GetAttempt(),
		OccurTime:  timestamppb.New(now),
	}
	e.EventId = ids.EventID(e.DeliveryId, stage, status.String(), e.Attempt, reason, strings.Join(rcpts, ","))
	return e
}

// ForMessage starts an event about a message that has no delivery yet (it
// was refused or suppressed by the router).
func ForMessage(tenantID, userID, messageID, stage string, status mailbusv1.DeliveryStatus, reason, detail string, now time.Time, rcpts []string) *mailbusv1.DeliveryEvent {
	e := &mailbusv1.DeliveryEvent{
		TenantId:   tenantID,
		UserId:     userID,
		MessageId:  messageID,
		Recipients: rcpts,
		Status:     status,
		Stage:      stage,
		Reason:     reason,
		Detail:     detail,
		OccurTime:  timestamppb.New(now),
	}
	e.EventId = ids.EventID(messageID, stage, status.String(), 0, reason, strings.Join(rcpts, ","))
	return e
}

// WithReply records the remote server's reply on e.
func WithReply(e *mailbusv1.DeliveryEvent, code int, enhanced, text string) *mailbusv1.DeliveryEvent {
	if code != 0 || text != "" {
		e.Reply = &mailbusv1.SmtpReply{Code: int32(code), EnhancedCode: enhanced, Text: text}
	}
	return e
}
