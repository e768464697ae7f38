package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
)

// DefaultRetention is how long the store keeps a message's submission for
// RetryMessage when the tracker sets none.
const DefaultRetention = 7 * 24 * time.Hour

// ErrRetentionEnded is returned for a submission kept past its retention:
// the message can no longer be sent again. It is wrapped by a
// *RetentionError that says when.
var ErrRetentionEnded = errors.New("the message's content is past its retention")

// RetentionError says when a submission's retention ended.
type RetentionError struct {
	MessageID string
	KeptUntil time.Time
}

func (e *RetentionError) Error() string {
	return fmt.Sprintf("message %s: its content was kept until %s for retries and is deleted: %v",
		e.MessageID, e.KeptUntil.UTC().Format(time.RFC3339), ErrRetentionEnded)
}

func (e *RetentionError) Unwrap() error { return ErrRetentionEnded }

// Submissions are compressed with zstd: mail bodies and their HTML compress
// several times over, and zstd decodes faster than gzip at a better
// ratio. One encoder and decoder serve every call (EncodeAll and DecodeAll
// are safe for concurrent use).
var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0))
)

// KeepSubmission stores the submission of message msgID until keepUntil.
// The first one stored stays: a submission published again with the same
// idempotency id is the same message, which the router sends once.
func (s *Store) KeepSubmission(ctx context.Context, msgID string, sub *mailbusv1.Submission, keepUntil time.Time) error {
	return s.KeepSubmissions(ctx, []Kept{{MessageID: msgID, Submission: sub, KeepUntil: keepUntil}})
}

// Kept is a submission to keep.
type Kept struct {
	MessageID  string
	Submission *mailbusv1.Submission
	KeepUntil  time.Time
}

// submissionsPerStatement bounds a multi-row insert's size: bodies are up
// to tens of megabytes, so a statement holds few.
const submissionsPerStatement = 100

// KeepSubmissions stores many submissions in one transaction (the keep
// consumer's batch), each as KeepSubmission does.
func (s *Store) KeepSubmissions(ctx context.Context, ks []Kept) error {
	type row struct {
		k    Kept
		raw  int
		body []byte
	}
	rows := make([]row, 0, len(ks))
	for _, k := range ks {
		raw, err := proto.Marshal(k.Submission)
		if err != nil {
			return fmt.Errorf("encoding submission of message %s: %w", k.MessageID, err)
		}
		rows = append(rows, row{k: k, raw: len(raw), body: zenc.EncodeAll(raw, make([]byte, 0, len(raw)/3))})
	}
	now := s.now().UnixNano()
	return s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
		for len(rows) > 0 {
			chunk := rows[:min(len(rows), submissionsPerStatement)]
			rows = rows[len(chunk):]
			var b strings.Builder
			b.WriteString(`INSERT INTO tracker_submissions (message_id, tenant_id, stored_ns, keep_until_ns, raw_bytes, body) VALUES `)
			args := make([]any, 0, 6*len(chunk))
			for i, r := range chunk {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString("(?, ?, ?, ?, ?, ?)")
				args = append(args, r.k.MessageID, r.k.Submission.GetTenantId(), now, r.k.KeepUntil.UnixNano(), r.raw, r.body)
			}
			// A batch may hold a redelivered record twice; the first stays.
			b.WriteString(` ON CONFLICT (message_id) DO NOTHING`)
			if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
				return fmt.Errorf("storing %d submissions: %w", len(chunk), err)
			}
		}
		return nil
	})
}

// Submission returns the submission of a message: ErrNotFound when none
// was stored, a *RetentionError when it is past its retention (purged or
// not yet).
func (s *Store) Submission(ctx context.Context, msgID string) (*mailbusv1.Submission, error) {
	var keepNS int64
	var body []byte
	err := s.db.QueryRowContext(ctx, `SELECT keep_until_ns, body FROM tracker_submissions WHERE message_id = ?`, msgID).Scan(&keepNS, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading submission of message %s: %w", msgID, err)
	}
	if keep := time.Unix(0, keepNS); !s.now().Before(keep) {
		return nil, &RetentionError{MessageID: msgID, KeptUntil: keep}
	}
	raw, err := zdec.DecodeAll(body, nil)
	if err != nil {
		return nil, fmt.Errorf("decompressing submission of message %s: %w", msgID, err)
	}
	sub := &mailbusv1.Submission{}
	if err := proto.Unmarshal(raw, sub); err != nil {
		return nil, fmt.Errorf("decoding submission of message %s: %w", msgID, err)
	}
	return sub, nil
}

// PurgeSubmissions deletes up to limit submissions past their retention
// and returns how many it deleted; the caller repeats while it gets limit.
// Small batches keep each transaction (and SQLite's write lock) short.
func (s *Store) PurgeSubmissions(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		limit = 1000
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM tracker_submissions WHERE message_id IN
		(SELECT message_id FROM tracker_submissions WHERE keep_until_ns <= ? ORDER BY keep_until_ns LIMIT ?)`,
		s.now().UnixNano(), limit)
	if err != nil {
		return 0, fmt.Errorf("purging expired submissions: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("purging expired submissions: %w", err)
	}
	return int(n), nil
}

// SubmissionStats sums the stored submissions: how many, and their bytes
// before and after compression.
func (s *Store) SubmissionStats(ctx context.Context) (count, rawBytes, storedBytes int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(raw_bytes), 0), COALESCE(SUM(LENGTH(body)), 0) FROM tracker_submissions`).
		Scan(&count, &rawBytes, &storedBytes)
	if err != nil {
		err = fmt.Errorf("summing stored submissions: %w", err)
	}
	return count, rawBytes, storedBytes, err
}

// CancelledMessage names a message with cancelled recipients.
type CancelledMessage struct {
	TenantID string
	ID       string
	Created  time.Time
}

// CancelledSince returns the messages created at or after since that have
// cancelled recipients: those whose cancel markers must still be in Redis.
func (s *Store) CancelledSince(ctx context.Context, since time.Time) ([]CancelledMessage, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant_id, id, create_ns FROM tracker_messages
		WHERE create_ns >= ? AND n_cancelled > 0 ORDER BY create_ns, id`, since.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("listing cancelled messages: %w", err)
	}
	defer rows.Close()
	var out []CancelledMessage
	for rows.Next() {
		var c CancelledMessage
		var ns int64
		if err := rows.Scan(&c.TenantID, &c.ID, &ns); err != nil {
			return nil, fmt.Errorf("listing cancelled messages: %w", err)
		}
		c.Created = time.Unix(0, ns)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing cancelled messages: %w", err)
	}
	return out, nil
}
