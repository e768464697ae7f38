package store

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"google.golang.org/protobuf/proto"
)

// Component is the name under which the tracker's migrations are recorded
// in schema_migrations.
const Component = "tracker"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate brings the message log's schema up to date. It is safe to run
// from several replicas at once.
func Migrate(ctx context.Context, db *sqlstore.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrating the message log: %w", err)
	}
	if err := sqlstore.Migrate(ctx, db, Component, sub); err != nil {
		return fmt.Errorf("migrating the message log: %w", err)
	}
	return nil
}

// Store is the message log. It is safe for concurrent use.
type Store struct {
	db  *sqlstore.DB
	now func() time.Time
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock that stamps events without an occur_time and the
// events the tracker records itself (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// New returns a store on db, whose schema Migrate must have brought up to
// date.
func New(db *sqlstore.DB, opts ...Option) *Store {
	s := &Store{db: db, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Now returns the store's clock reading.
func (s *Store) Now() time.Time { return s.now() }

// Outcome says what Apply did with an event.
type Outcome int

const (
	// Applied means the event was new: it is recorded and folded in.
	Applied Outcome = iota + 1
	// Duplicate means an event with the same event_id was already recorded;
	// nothing changed.
	Duplicate
)

// String returns "applied" or "duplicate".
func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// BatchResult says what ApplyBatch did.
type BatchResult struct {
	// Applied counts the new events, recorded and folded in.
	Applied int
	// Duplicates counts the events already recorded (also repeats within
	// the batch).
	Duplicates int
	// Rejected lists the events that can never be applied; the others were
	// applied without them.
	Rejected []Rejection
	// Fresh are the applied events (Applied of them), for counting
	// outcomes once however often an event is redelivered.
	Fresh []*mailbusv1.DeliveryEvent
}

// Rejection is an event of a batch that can never be applied.
type Rejection struct {
	// Index is the event's position in the batch.
	Index int
	// Err wraps ErrInvalidEvent.
	Err error
}

// Apply records one event and folds it into its message in one
// transaction. A redelivered event returns Duplicate and changes nothing.
// An error wrapping ErrInvalidEvent is permanent; other errors are the
// database's and worth retrying. Apply may fill a missing occur_time of ev.
func (s *Store) Apply(ctx context.Context, ev *mailbusv1.DeliveryEvent) (Outcome, error) {
	res, err := s.ApplyBatch(ctx, []*mailbusv1.DeliveryEvent{ev})
	switch {
	case err != nil:
		return 0, err
	case len(res.Rejected) > 0:
		return 0, res.Rejected[0].Err
	case res.Duplicates > 0:
		return Duplicate, nil
	}
	return Applied, nil
}

// ApplyBatch records many events and folds them into their messages in one
// transaction: the Kafka consumer's hot path. The result is the same as
// applying the events one by one in any order. Invalid events are left out
// and listed in the result; an error means that nothing was applied and the
// whole batch may be retried. ApplyBatch may fill missing occur_times.
func (s *Store) ApplyBatch(ctx context.Context, evs []*mailbusv1.DeliveryEvent) (BatchResult, error) {
	var res BatchResult
	now := s.now()
	valid := make([]*event, 0, len(evs))
	for i, pb := range evs {
		e, err := newEvent(pb, now)
		if err != nil {
			res.Rejected = append(res.Rejected, Rejection{Index: i, Err: err})
			continue
		}
		valid = append(valid, e)
	}
	if len(valid) == 0 {
		return res, nil
	}
	var applied int
	err := s.db.InTx(ctx, func(tx *sqlstore.Tx) error {
		fresh, err := insertEvents(ctx, tx, valid)
		if err != nil {
			return err
		}
		applied = len(fresh)
		res.Fresh = res.Fresh[:0]
		for _, e := range fresh {
			res.Fresh = append(res.Fresh, e.pb)
		}
		byMessage := map[string][]*event{}
		for _, e := range fresh {
			byMessage[e.pb.GetMessageId()] = append(byMessage[e.pb.GetMessageId()], e)
		}
		// Message-id order is the lock order, so two batches on PostgreSQL
		// never wait for each other in a cycle.
		ids := make([]string, 0, len(byMessage))
		for id := range byMessage {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if err := s.applyMessage(ctx, tx, id, byMessage[id]); err != nil {
				return fmt.Errorf("applying events of message %q: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return BatchResult{}, err
	}
	res.Applied, res.Duplicates = applied, len(valid)-applied
	return res, nil
}

// applyMessage folds newly recorded events into their message.
func (s *Store) applyMessage(ctx context.Context, tx *sqlstore.Tx, msgID string, fresh []*event) error {
	sortEvents(fresh)

	m, err := lockMessage(ctx, tx, msgID, fresh[0].pos.ns, fresh[len(fresh)-1].pos.ns)
	if err != nil {
		return err
	}
	priorAllEvents := m.allEvents

	// Which recipients the new events touch, and which they name.
	all := false
	named := map[string]bool{}
	for _, e := range fresh {
		if err := m.absorb(e); err != nil {
			return err
		}
		if e.appliesToAll() {
			all = true
		}
		if e.class != classHistory {
			for _, a := range e.recipients {
				named[a] = true
			}
		}
		for _, a := range e.pb.GetSummary().GetRecipients() {
			if a = normalizeAddress(a); a != "" {
				named[a] = true
			}
		}
	}
	var addrs []string
	if !all {
		addrs = make([]string, 0, len(named))
		for a := range named {
			addrs = append(addrs, a)
		}
		slices.Sort(addrs)
	}
	existing, err := loadRecipients(ctx, tx, msgID, all, addrs)
	if err != nil {
		return err
	}
	for a := range named {
		if _, ok := existing[a]; !ok {
			existing[a] = nil
		}
	}

	var history []*event // loaded when a recipient must be re-folded
	var dirty []*recipient
	for addr, old := range existing {
		isNew := old == nil
		var concerning []*event
		outOfOrder := false
		for _, e := range fresh {
			if e.concerns(addr) {
				concerning = append(concerning, e)
				if !isNew && e.pos.before(old.last) {
					outOfOrder = true
				}
			}
		}
		if !isNew && len(concerning) == 0 {
			continue
		}
		var next *recipient
		if outOfOrder || (isNew && priorAllEvents > 0) {
			if history == nil {
				if history, err = loadHistory(ctx, tx, msgID, s.now()); err != nil {
					return err
				}
			}
			next = fold(addr, history)
		} else {
			next = &recipient{address: addr}
			if !isNew {
				*next = *old
			}
			for _, e := range concerning {
				step(next, e)
			}
		}
		if !isNew {
			if *next == *old {
				continue
			}
			m.counts.add(old.status, -1)
		}
		m.counts.add(next.status, 1)
		dirty = append(dirty, next)
	}
	if err := saveRecipients(ctx, tx, msgID, dirty); err != nil {
		return err
	}
	if err := m.save(ctx, tx); err != nil {
		return err
	}
	return nil
}

// eventsPerStatement keeps a multi-row insert of events well under
// SQLite's limit of 32766 bound parameters (4 per row).
const eventsPerStatement = 1000

// insertEvents records events and returns those that were not recorded yet
// (a repeat within evs counts once). Rows go in in event-id order, so two
// transactions inserting the same events (a redelivery racing the
// original) wait for each other in one direction only, never in a cycle;
// and this happens before any message row is locked.
func insertEvents(ctx context.Context, tx *sqlstore.Tx, evs []*event) ([]*event, error) {
	sorted := slices.Clone(evs)
	slices.SortStableFunc(sorted, func(a, b *event) int { return cmp.Compare(a.pos.id, b.pos.id) })
	sorted = slices.CompactFunc(sorted, func(a, b *event) bool { return a.pos.id == b.pos.id })
	byID := make(map[string]*event, len(sorted))
	fresh := make([]*event, 0, len(sorted))
	for len(sorted) > 0 {
		chunk := sorted[:min(len(sorted), eventsPerStatement)]
		sorted = sorted[len(chunk):]
		var b strings.Builder
		b.WriteString(`INSERT INTO tracker_events (event_id, message_id, occur_ns, payload) VALUES `)
		args := make([]any, 0, 4*len(chunk))
		for i, e := range chunk {
			payload, err := proto.Marshal(e.pb)
			if err != nil {
				return nil, fmt.Errorf("encoding event %q: %w", e.pos.id, err)
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?)")
			args = append(args, e.pos.id, e.pb.GetMessageId(), e.pos.ns, payload)
			byID[e.pos.id] = e
		}
		b.WriteString(` ON CONFLICT (event_id) DO NOTHING RETURNING event_id`)
		rows, err := tx.QueryContext(ctx, b.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("recording events: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("recording events: %w", err)
			}
			fresh = append(fresh, byID[id])
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("recording events: %w", err)
		}
	}
	return fresh, nil
}

// message is a row of tracker_messages.
type message struct {
	id        string
	tenantID  string
	userID    string
	status    mailbusv1.DeliveryStatus
	summary   []byte
	createNS  int64
	updateNS  int64
	allEvents int64
	counts    counts
	// campaignID is the summary's, for the bulk actions' filter.
	campaignID string
}

// messageColumns lists the n_* counters in the order of the status numbers
// 1..8 of DeliveryStatus, which index counts.
const messageColumns = `id, tenant_id, user_id, status, summary, create_ns, update_ns, all_events,
	n_queued, n_sent, n_deferred, n_bounced, n_failed, n_suppressed, n_cancelled, n_complained, campaign_id`

func scanMessage(sc interface{ Scan(...any) error }) (*message, error) {
	m := &message{}
	var status int32
	err := sc.Scan(&m.id, &m.tenantID, &m.userID, &status, &m.summary, &m.createNS, &m.updateNS, &m.allEvents,
		&m.counts[1], &m.counts[2], &m.counts[3], &m.counts[4], &m.counts[5], &m.counts[6], &m.counts[7], &m.counts[8], &m.campaignID)
	m.status = mailbusv1.DeliveryStatus(status)
	return m, err
}

// lockMessage reads a message row for update, creating it when it does not
// exist yet. Creating it first, even empty, gives concurrent transactions
// on PostgreSQL one row to queue on.
func lockMessage(ctx context.Context, tx *sqlstore.Tx, id string, firstNS, lastNS int64) (*message, error) {
	pg := tx.Dialect() == sqlstore.Postgres
	forUpdate := ""
	if pg {
		forUpdate = " FOR UPDATE"
	}
	query := `SELECT ` + messageColumns + ` FROM tracker_messages WHERE id = ?` + forUpdate
	for attempt := 0; attempt < 2; attempt++ {
		m, err := scanMessage(tx.QueryRowContext(ctx, query, id))
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("reading message: %w", err)
		}
		if !pg {
			// The transaction holds SQLite's only write lock: nobody else
			// can create the row, and save inserts it.
			return &message{id: id, createNS: firstNS, updateNS: lastNS}, nil
		}
		res, err := tx.ExecContext(ctx,
			`INSERT INTO tracker_messages (id, create_ns, update_ns) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			id, firstNS, lastNS)
		if err != nil {
			return nil, fmt.Errorf("creating message: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("creating message: %w", err)
		} else if n > 0 {
			return &message{id: id, createNS: firstNS, updateNS: lastNS}, nil
		}
		// Another transaction created it in the meantime: read and lock it.
	}
	return nil, errors.New("reading message: created concurrently but not found")
}

// absorb takes the message-level facts of e: tenant, user, summary, times.
// The first non-empty tenant, user and summary stay; they are set on the
// first event of a message and are not expected to change.
func (m *message) absorb(e *event) error {
	if m.tenantID == "" {
		m.tenantID = e.pb.GetTenantId()
	}
	if m.userID == "" {
		m.userID = e.pb.GetUserId()
	}
	if m.summary == nil && e.pb.GetSummary() != nil {
		b, err := proto.Marshal(e.pb.GetSummary())
		if err != nil {
			return fmt.Errorf("encoding summary of event %q: %w", e.pos.id, err)
		}
		if b == nil {
			b = []byte{} // an empty summary is still a summary
		}
		m.summary = b
		m.campaignID = e.pb.GetSummary().GetCampaignId()
	}
	m.createNS = min(m.createNS, e.pos.ns)
	m.updateNS = max(m.updateNS, e.pos.ns)
	if e.appliesToAll() {
		m.allEvents++
	}
	return nil
}

// save writes the message row, inserting it when it is new (SQLite; on
// PostgreSQL lockMessage already made it).
func (m *message) save(ctx context.Context, tx *sqlstore.Tx) error {
	m.status = m.counts.overall()
	_, err := tx.ExecContext(ctx, `INSERT INTO tracker_messages (`+messageColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
		tenant_id = excluded.tenant_id, user_id = excluded.user_id, status = excluded.status,
		summary = excluded.summary, create_ns = excluded.create_ns, update_ns = excluded.update_ns,
		all_events = excluded.all_events, n_queued = excluded.n_queued, n_sent = excluded.n_sent,
		n_deferred = excluded.n_deferred, n_bounced = excluded.n_bounced, n_failed = excluded.n_failed,
		n_suppressed = excluded.n_suppressed, n_cancelled = excluded.n_cancelled, n_complained = excluded.n_complained,
		campaign_id = excluded.campaign_id`,
		m.id, m.tenantID, m.userID, int32(m.status), m.summary, m.createNS, m.updateNS, m.allEvents,
		m.counts[1], m.counts[2], m.counts[3], m.counts[4], m.counts[5], m.counts[6], m.counts[7], m.counts[8], m.campaignID)
	if err != nil {
		return fmt.Errorf("saving message: %w", err)
	}
	return nil
}

const recipientColumns = `address, status, reason, detail, reply_code, reply_enhanced, reply_text,
	relay_id, delivery_id, attempts, status_ns, status_event_id, last_ns, last_event_id`

func scanRecipient(sc interface{ Scan(...any) error }, extra ...any) (*recipient, error) {
	r := &recipient{}
	var status int32
	dest := append([]any{&r.address, &status, &r.reason, &r.detail, &r.replyCode, &r.replyEnhanced, &r.replyText,
		&r.relayID, &r.deliveryID, &r.attempts, &r.statusAt.ns, &r.statusAt.id, &r.last.ns, &r.last.id}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return nil, err
	}
	r.status = mailbusv1.DeliveryStatus(status)
	return r, nil
}

// loadRecipients reads all recipients of a message, or those in addrs.
func loadRecipients(ctx context.Context, q sqlstore.Querier, msgID string, all bool, addrs []string) (map[string]*recipient, error) {
	out := map[string]*recipient{}
	if !all && len(addrs) == 0 {
		return out, nil
	}
	query := `SELECT ` + recipientColumns + ` FROM tracker_recipients WHERE message_id = ?`
	args := []any{msgID}
	if !all {
		query += ` AND address IN (` + placeholders(len(addrs)) + `)`
		for _, a := range addrs {
			args = append(args, a)
		}
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("reading recipients: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanRecipient(rows)
		if err != nil {
			return nil, fmt.Errorf("reading recipients: %w", err)
		}
		out[r.address] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading recipients: %w", err)
	}
	return out, nil
}

// recipientsPerStatement keeps a multi-row upsert under SQLite's limit of
// 32766 bound parameters (16 per row) with room to spare.
const recipientsPerStatement = 500

// saveRecipients writes new and changed recipients, many per statement.
func saveRecipients(ctx context.Context, tx *sqlstore.Tx, msgID string, rs []*recipient) error {
	// A stable order keeps lock order and test output deterministic.
	slices.SortFunc(rs, func(a, b *recipient) int { return cmp.Compare(a.address, b.address) })
	for len(rs) > 0 {
		chunk := rs[:min(len(rs), recipientsPerStatement)]
		rs = rs[len(chunk):]
		var b strings.Builder
		b.WriteString(`INSERT INTO tracker_recipients (message_id, ` + recipientColumns + `) VALUES `)
		args := make([]any, 0, len(chunk)*15)
		for i, r := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, msgID, r.address, int32(r.status), r.reason, r.detail, r.replyCode, r.replyEnhanced,
				r.replyText, r.relayID, r.deliveryID, r.attempts, r.statusAt.ns, r.statusAt.id, r.last.ns, r.last.id)
		}
		b.WriteString(` ON CONFLICT (message_id, address) DO UPDATE SET
			status = excluded.status, reason = excluded.reason, detail = excluded.detail,
			reply_code = excluded.reply_code, reply_enhanced = excluded.reply_enhanced, reply_text = excluded.reply_text,
			relay_id = excluded.relay_id, delivery_id = excluded.delivery_id, attempts = excluded.attempts,
			status_ns = excluded.status_ns, status_event_id = excluded.status_event_id,
			last_ns = excluded.last_ns, last_event_id = excluded.last_event_id`)
		if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("saving recipients: %w", err)
		}
	}
	return nil
}

// loadHistory reads all events of a message, sorted by position.
func loadHistory(ctx context.Context, q sqlstore.Querier, msgID string, now time.Time) ([]*event, error) {
	rows, err := q.QueryContext(ctx, `SELECT payload FROM tracker_events WHERE message_id = ?`, msgID)
	if err != nil {
		return nil, fmt.Errorf("reading history: %w", err)
	}
	defer rows.Close()
	var out []*event
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, fmt.Errorf("reading history: %w", err)
		}
		pb := &mailbusv1.DeliveryEvent{}
		if err := proto.Unmarshal(payload, pb); err != nil {
			return nil, fmt.Errorf("decoding a recorded event: %w", err)
		}
		e, err := newEvent(pb, now)
		if err != nil {
			return nil, fmt.Errorf("decoding a recorded event: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading history: %w", err)
	}
	sortEvents(out)
	return out, nil
}

func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}
