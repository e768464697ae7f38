package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Page sizes of List.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// ErrNotFound is returned for a message that is not in the log.
var ErrNotFound = errors.New("message not found")

// ErrInvalidPageToken is returned for a page token that List did not make,
// or made for other filters.
var ErrInvalidPageToken = errors.New("invalid page token")

// Message returns a message with its recipients and its history (sorted by
// occur_time, then event_id), or ErrNotFound.
func (s *Store) Message(ctx context.Context, id string) (*mailbusv1.Message, error) {
	var out *mailbusv1.Message
	err := s.db.InReadTx(ctx, func(tx *sqlstore.Tx) error {
		m, err := scanMessage(tx.QueryRowContext(ctx,
			`SELECT `+messageColumns+` FROM tracker_messages WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("reading message %q: %w", id, err)
		}
		if out, err = m.proto(); err != nil {
			return err
		}
		rs, err := loadRecipients(ctx, tx, id, true, nil)
		if err != nil {
			return fmt.Errorf("reading message %q: %w", id, err)
		}
		out.Recipients = recipientsProto(rs)
		history, err := loadHistory(ctx, tx, id, s.now())
		if err != nil {
			return fmt.Errorf("reading message %q: %w", id, err)
		}
		for _, e := range history {
			out.History = append(out.History, e.pb)
		}
		return nil
	})
	return out, err
}

// ListQuery selects messages for List. Empty fields do not filter.
type ListQuery struct {
	TenantID string
	UserID   string
	// Status is the message's overall status.
	Status mailbusv1.DeliveryStatus
	// RelayID selects messages with a recipient last routed through the
	// relay.
	RelayID string
	// CampaignID is the summary's campaign.
	CampaignID string
	// Start and End bound the message's create_time: Start <= t < End. A
	// zero time is no bound.
	Start, End time.Time
	// PageSize is 1..MaxPageSize; 0 means DefaultPageSize and larger values
	// are cut to MaxPageSize.
	PageSize int
	// PageToken continues a listing; it is NextPageToken of the previous
	// page, with the same filters.
	PageToken string
}

// Page is a page of List.
type Page struct {
	// Messages are newest first (create_time, then id, descending), with
	// recipients but without history.
	Messages []*mailbusv1.Message
	// NextPageToken is empty on the last page.
	NextPageToken string
}

// pageToken is the position after which the next page starts, and a
// fingerprint of the filters it was made for.
type pageToken struct {
	NS     int64  `json:"t"`
	ID     string `json:"i"`
	Filter uint64 `json:"f"`
}

func (q ListQuery) fingerprint() uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\x00%d\x00%s\x00%s", q.TenantID, q.UserID, q.Status, unixNano(q.Start), unixNano(q.End),
		q.RelayID, q.CampaignID)
	return h.Sum64()
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// List returns a page of messages. Pages are cut by keyset (create_time,
// id), so a listing neither repeats nor skips messages while new ones
// arrive; a message whose create_time moves back (an earlier event arrived
// late) may move to a page already read.
func (s *Store) List(ctx context.Context, q ListQuery) (Page, error) {
	size := q.PageSize
	switch {
	case size <= 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	var where []string
	var args []any
	if q.TenantID != "" {
		where, args = append(where, "tenant_id = ?"), append(args, q.TenantID)
	}
	if q.UserID != "" {
		where, args = append(where, "user_id = ?"), append(args, q.UserID)
	}
	if q.Status != mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED {
		where, args = append(where, "status = ?"), append(args, int32(q.Status))
	}
	if q.CampaignID != "" {
		where, args = append(where, "campaign_id = ?"), append(args, q.CampaignID)
	}
	if q.RelayID != "" {
		where, args = append(where, "EXISTS (SELECT 1 FROM tracker_recipients r WHERE r.message_id = tracker_messages.id AND r.relay_id = ?)"),
			append(args, q.RelayID)
	}
	if !q.Start.IsZero() {
		where, args = append(where, "create_ns >= ?"), append(args, q.Start.UnixNano())
	}
	if !q.End.IsZero() {
		where, args = append(where, "create_ns < ?"), append(args, q.End.UnixNano())
	}
	if q.PageToken != "" {
		tok, err := decodePageToken(q.PageToken)
		if err != nil || tok.Filter != q.fingerprint() {
			return Page{}, ErrInvalidPageToken
		}
		where, args = append(where, "(create_ns, id) < (?, ?)"), append(args, tok.NS, tok.ID)
	}
	query := `SELECT ` + messageColumns + ` FROM tracker_messages`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY create_ns DESC, id DESC LIMIT ?`
	args = append(args, size+1)

	var page Page
	err := s.db.InReadTx(ctx, func(tx *sqlstore.Tx) error {
		page = Page{}
		rows, err := tx.QueryContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("listing messages: %w", err)
		}
		defer rows.Close()
		var ms []*message
		for rows.Next() {
			m, err := scanMessage(rows)
			if err != nil {
				return fmt.Errorf("listing messages: %w", err)
			}
			ms = append(ms, m)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("listing messages: %w", err)
		}
		if len(ms) > size {
			ms = ms[:size]
			last := ms[size-1]
			page.NextPageToken = encodePageToken(pageToken{NS: last.createNS, ID: last.id, Filter: q.fingerprint()})
		}
		byID := make(map[string]*mailbusv1.Message, len(ms))
		ids := make([]string, 0, len(ms))
		for _, m := range ms {
			pm, err := m.proto()
			if err != nil {
				return err
			}
			page.Messages = append(page.Messages, pm)
			byID[m.id] = pm
			ids = append(ids, m.id)
		}
		return loadPageRecipients(ctx, tx, ids, byID)
	})
	if err != nil {
		return Page{}, err
	}
	return page, nil
}

// loadPageRecipients fills in the recipients of a page of messages with
// one query per chunk of messages.
func loadPageRecipients(ctx context.Context, tx *sqlstore.Tx, ids []string, byID map[string]*mailbusv1.Message) error {
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), MaxPageSize)]
		ids = ids[len(chunk):]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+recipientColumns+`, message_id FROM tracker_recipients
			WHERE message_id IN (`+placeholders(len(chunk))+`)`, args...)
		if err != nil {
			return fmt.Errorf("listing recipients: %w", err)
		}
		grouped := map[string]map[string]*recipient{}
		for rows.Next() {
			var msgID string
			r, err := scanRecipient(rows, &msgID)
			if err != nil {
				rows.Close()
				return fmt.Errorf("listing recipients: %w", err)
			}
			if grouped[msgID] == nil {
				grouped[msgID] = map[string]*recipient{}
			}
			grouped[msgID][r.address] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("listing recipients: %w", err)
		}
		for id, rs := range grouped {
			byID[id].Recipients = recipientsProto(rs)
		}
	}
	return nil
}

func encodePageToken(t pageToken) string {
	b, _ := json.Marshal(t) // a struct of plain fields always encodes
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodePageToken(s string) (pageToken, error) {
	var t pageToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return t, err
	}
	err = json.Unmarshal(b, &t)
	return t, err
}

// proto converts the message row; recipients and history are the caller's.
func (m *message) proto() (*mailbusv1.Message, error) {
	out := &mailbusv1.Message{
		Id:         m.id,
		TenantId:   m.tenantID,
		UserId:     m.userID,
		Status:     m.status,
		CreateTime: timestamppb.New(time.Unix(0, m.createNS)),
		UpdateTime: timestamppb.New(time.Unix(0, m.updateNS)),
	}
	if m.summary != nil {
		out.Summary = &mailbusv1.MessageSummary{}
		if err := proto.Unmarshal(m.summary, out.Summary); err != nil {
			return nil, fmt.Errorf("decoding summary of message %q: %w", m.id, err)
		}
	}
	return out, nil
}

// recipientsProto converts recipients, sorted by address.
func recipientsProto(rs map[string]*recipient) []*mailbusv1.RecipientState {
	out := make([]*mailbusv1.RecipientState, 0, len(rs))
	for _, r := range rs {
		st := &mailbusv1.RecipientState{
			Address:    r.address,
			Status:     r.status,
			Reason:     r.reason,
			Detail:     r.detail,
			RelayId:    r.relayID,
			Attempts:   r.attempts,
			DeliveryId: r.deliveryID,
		}
		if r.replyCode != 0 || r.replyEnhanced != "" || r.replyText != "" {
			st.Reply = &mailbusv1.SmtpReply{Code: r.replyCode, EnhancedCode: r.replyEnhanced, Text: r.replyText}
		}
		if r.statusAt.id != "" {
			st.UpdateTime = timestamppb.New(time.Unix(0, r.statusAt.ns))
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *mailbusv1.RecipientState) int { return cmp.Compare(a.Address, b.Address) })
	return out
}
