package bounce

import (
	"context"
	"fmt"
)

// MailboxHandler returns the processing of one message fetched from a
// mailbox that belongs to tenantID: the return path of tenants who have
// bounces sent to a mailbox of their own rather than to mailbus's VERP
// addresses (internal/imappoll fetches it). Such mail was not addressed to
// a VERP address, so, as for a feedback-loop address, the records are
// matched by what the returned message says about itself: its Return-Path
// when that is a VERP address, its X-Mailbus-Message-Id header, or its
// Message-ID when mailbus made it.
//
// The handler returns an error only for what a later attempt can fix (the
// tenant not known yet, Kafka or Redis unavailable); the poller then
// leaves the message for its next poll. Processing the same message again
// is harmless: event ids depend only on the report, and suppression
// entries and soft-bounce counts are keyed by address and delivery.
func (s *Service) MailboxHandler(tenantID string) func(ctx context.Context, raw []byte) error {
	return func(ctx context.Context, raw []byte) error {
		t, ok := s.tenants.Tenant(tenantID)
		if !ok {
			// The configuration may not have arrived yet: keep the mail.
			return fmt.Errorf("bounce: mailbox of unknown tenant %q", tenantID)
		}
		if _, err := s.Process(ctx, []target{{tenant: t}}, raw); err != nil {
			return fmt.Errorf("bounce: process a message from the mailbox of tenant %s: %w", tenantID, err)
		}
		return nil
	}
}
