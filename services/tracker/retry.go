package tracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/cancelled"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/services/tracker/internal/messagesvc"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
)

// keepRecord keeps a record of mail.submit. One that is not a submission,
// or has no tenant, is the router's to report (it poisons it with the
// reason); the tracker has nothing to keep and does not poison a second
// copy.
func (s *Service) keepRecord(msg *message.Message) error {
	sub := &mailbusv1.Submission{}
	if err := bus.Decode(msg, sub); err != nil || sub.GetTenantId() == "" {
		return nil
	}
	return s.keep(msg.Context(), msg, sub)
}

// keep stores a submission for later retries under the message id that
// the router derives from the same record. The record is acknowledged only
// once the row is committed; a redelivered one changes nothing.
func (s *Service) keep(ctx context.Context, _ *message.Message, sub *mailbusv1.Submission) error {
	idem := sub.GetIdempotencyId()
	if idem == "" {
		part, off, ok := bus.RecordPosition(ctx)
		if !ok {
			return bus.Permanent(errors.New("keep submission: its place in Kafka is not in its context, so it has no message id"))
		}
		idem = ids.RecordKey(bus.TopicSubmit, part, off)
	}
	req := keepReq{
		k:    store.Kept{MessageID: ids.MessageID(sub.GetTenantId(), idem), Submission: sub, KeepUntil: s.store.Now().Add(s.cfg.Retention)},
		size: proto.Size(sub), done: make(chan error, 1),
	}
	select {
	case s.keeps <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type keepReq struct {
	k    store.Kept
	size int
	done chan error
}

// maxKeepBytes cuts a batch of submissions: they are up to tens of
// megabytes each, and a batch is one transaction.
const maxKeepBytes = 32 << 20

// keeper writes the submissions that the partitions' handlers park in
// s.keeps many per transaction, as the batcher does for events: one
// transaction per submission would take SQLite's only write lock once per
// message, away from the events.
func (s *Service) keeper(ctx context.Context) {
	batch := make([]keepReq, 0, s.cfg.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.keeps:
			batch = append(batch, r)
		}
		size := batch[0].size
		timer := time.NewTimer(s.cfg.MaxBatchWait)
	fill:
		for len(batch) < s.cfg.MaxBatch && size < maxKeepBytes {
			select {
			case r := <-s.keeps:
				batch = append(batch, r)
				size += r.size
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		ks := make([]store.Kept, len(batch))
		for i, r := range batch {
			ks[i] = r.k
		}
		err := s.store.KeepSubmissions(ctx, ks)
		if err != nil {
			s.log.Warn("keeping submissions for retries", "submissions", len(ks), "err", err)
			err = fmt.Errorf("keep submissions: %w", err)
		} else {
			s.kept.Add(float64(len(ks)))
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

// purger deletes submissions past their retention every PurgeInterval,
// in small batches.
func (s *Service) purger(ctx context.Context) {
	t := time.NewTicker(s.cfg.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := s.store.PurgeSubmissions(ctx, 1000)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("purging submissions past their retention", "err", err)
				}
				break
			}
			s.purged.Add(float64(n))
			if n < 1000 {
				break
			}
		}
	}
}

// RestoreCancelMarks sets the cancel markers of the messages that the log
// says were cancelled within cancelled.TTL, each for what is left of its
// TTL, and returns how many it set. Run calls it at start, so that a Redis
// that lost its data (or a new one) stops cancelled messages again; the
// log is the durable record of a cancellation, the marker its fast copy.
func (s *Service) RestoreCancelMarks(ctx context.Context) (int, error) {
	if s.redis == nil {
		return 0, nil
	}
	now := s.store.Now()
	ms, err := s.store.CancelledSince(ctx, now.Add(-cancelled.TTL))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range ms {
		ttl := m.Created.Add(cancelled.TTL).Sub(now)
		if ttl <= 0 {
			continue
		}
		if err := cancelled.Mark(ctx, s.redis, m.TenantID, m.ID, ttl); err != nil {
			return n, err
		}
		n++
	}
	if n > 0 {
		s.log.Info("cancel markers restored from the message log", "messages", n)
	}
	return n, nil
}

// busResubmitter sends a retry to the router: the stored submission and
// the recipients to send to again, on mail.resubmit.
type busResubmitter struct {
	store     *store.Store
	pub       message.Publisher
	retention time.Duration
}

func (b *busResubmitter) Resubmit(ctx context.Context, r messagesvc.Resubmission) error {
	m := r.Message
	sub, err := b.store.Submission(ctx, m.GetId())
	var expired *store.RetentionError
	if errors.Is(err, store.ErrNotFound) {
		// Purged, or never stored: the message's age tells which.
		if keep := m.GetCreateTime().AsTime().Add(b.retention); !b.store.Now().Before(keep) {
			err = &store.RetentionError{MessageID: m.GetId(), KeptUntil: keep}
		} else {
			return status.Errorf(codes.FailedPrecondition,
				"message %s cannot be retried: its submission is not stored (it was submitted before the tracker kept submissions, or the tracker has not read it from %s yet)",
				m.GetId(), bus.TopicSubmit)
		}
	}
	if errors.As(err, &expired) {
		return status.Errorf(codes.FailedPrecondition, "message %s cannot be retried: its content is kept for %s for retries, that ended at %s, and it is deleted",
			m.GetId(), b.retention, expired.KeptUntil.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return err
	}
	rec := &mailbusv1.Resubmission{
		RetryId: r.ID, MessageId: m.GetId(), Retry: r.Retry, Recipients: r.Recipients, Submission: sub, RequestedBy: r.By,
	}
	meta := message.Metadata{}
	meta.Set(bus.MetaTenantID, m.GetTenantId())
	meta.Set(bus.MetaMessageID, m.GetId())
	if err := bus.Publish(b.pub, bus.TopicResubmit, rec, meta); err != nil {
		return fmt.Errorf("send retry %d of message %s to the router: %w", r.Retry, m.GetId(), err)
	}
	return nil
}
