package messagesvc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/sqlstore"
	"github.com/mailbus/mailbus/services/tracker/internal/messagesvc"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	queued    = mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED
	sent      = mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT
	deferred  = mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED
	failed    = mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED
	cancelled = mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// The callers of the tests, by token.
var identities = map[string]auth.Identity{
	"admin-token-0123456789":    {Role: auth.RoleAdmin, Name: "ops"},
	"pipeline-token-0123456789": {Role: auth.RolePipeline, Name: "router"},
	"t1-admin-token-0123456789": {Role: auth.RoleTenantAdmin, TenantID: "t1"},
	"t2-admin-token-0123456789": {Role: auth.RoleTenantAdmin, TenantID: "t2"},
	"alice-token-0123456789":    {Role: auth.RoleUser, TenantID: "t1", UserID: "alice"},
	"bob-token-0123456789":      {Role: auth.RoleUser, TenantID: "t1", UserID: "bob"},
	// Same user id in another tenant: must not see t1's alice.
	"t2-alice-token-0123456789": {Role: auth.RoleUser, TenantID: "t2", UserID: "alice"},
}

// resubmissions records what RetryMessage asked to send again; fail makes
// the next call fail.
type resubmissions struct {
	mu   sync.Mutex
	got  []messagesvc.Resubmission
	fail error
}

func (r *resubmissions) Resubmit(_ context.Context, s messagesvc.Resubmission) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fail; err != nil {
		r.fail = nil
		return err
	}
	r.got = append(r.got, s)
	return nil
}

func (r *resubmissions) calls() []messagesvc.Resubmission {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// cancels records the cancel markers CancelMessage set; fail makes the
// next call fail.
type cancels struct {
	mu   sync.Mutex
	got  []string
	fail error
}

func (c *cancels) Cancel(_ context.Context, tenantID, messageID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.fail; err != nil {
		c.fail = nil
		return err
	}
	c.got = append(c.got, tenantID+"/"+messageID)
	return nil
}

func (c *cancels) calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

type fixture struct {
	store    *store.Store
	resubmit *resubmissions
	cancel   *cancels
	addr     string
}

// start serves MessageService on a loopback port, with the auth
// interceptors and a SQLite message log, and seeds the log:
//
//	m-alice-1, m-alice-2  t1/alice  (m-alice-2 has a failed and a deferred recipient)
//	m-bob-1               t1/bob
//	m-t2-alice            t2/alice
func start(t *testing.T, resubmit bool) *fixture {
	t.Helper()
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "tracker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := store.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: store.New(db, store.WithClock(func() time.Time { return t0.Add(time.Hour) })), resubmit: &resubmissions{}, cancel: &cancels{}}
	seed(t, f.store)

	tokens, err := auth.NewTokens(identities)
	if err != nil {
		t.Fatal(err)
	}
	var r messagesvc.Resubmitter
	if resubmit {
		r = f.resubmit
	}
	srv := grpc.NewServer(auth.NewInterceptor(tokens, nil).ServerOptions()...)
	messagesvc.New(f.store, messagesvc.Deps{Resubmit: r, Cancel: f.cancel, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}).Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	f.addr = lis.Addr().String()
	return f
}

func seed(t *testing.T, s *store.Store) {
	t.Helper()
	ev := func(id, msg, tenant, user string, st mailbusv1.DeliveryStatus, sec int, rcpts ...string) *mailbusv1.DeliveryEvent {
		e := &mailbusv1.DeliveryEvent{EventId: id, MessageId: msg, TenantId: tenant, UserId: user, Status: st,
			Recipients: rcpts, Stage: "sender", OccurTime: timestamppb.New(t0.Add(time.Duration(sec) * time.Second))}
		if st == queued && len(rcpts) == 0 {
			e.Stage = "router"
			e.Summary = &mailbusv1.MessageSummary{Subject: "about " + msg, From: user + "@t.example",
				Recipients: []string{"a@x.example", "b@x.example", "c@x.example"}}
		}
		return e
	}
	_, err := s.ApplyBatch(context.Background(), []*mailbusv1.DeliveryEvent{
		ev("a1q", "m-alice-1", "t1", "alice", queued, 1),
		ev("a1s", "m-alice-1", "t1", "alice", sent, 2),
		ev("a2q", "m-alice-2", "t1", "alice", queued, 3),
		ev("a2f", "m-alice-2", "t1", "alice", failed, 4, "a@x.example"),
		ev("a2d", "m-alice-2", "t1", "alice", deferred, 4, "b@x.example"),
		ev("a2s", "m-alice-2", "t1", "alice", sent, 4, "c@x.example"),
		ev("b1q", "m-bob-1", "t1", "bob", queued, 5),
		ev("t2q", "m-t2-alice", "t2", "alice", queued, 6),
	})
	if err != nil {
		t.Fatal(err)
	}
}

// client returns a MessageService client that sends token (none when empty).
func (f *fixture) client(t *testing.T, token string) mailbusv1.MessageServiceClient {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.StaticToken{Token: token, AllowInsecure: true}))
	}
	conn, err := grpc.NewClient(f.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return mailbusv1.NewMessageServiceClient(conn)
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("got %v (%v), want %v", got, err, want)
	}
}

func ids(ms []*mailbusv1.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.GetId())
	}
	return out
}

func TestMessageService_callersSeeOnlyTheirMessages(t *testing.T) {
	f := start(t, true)
	all := []string{"m-alice-1", "m-alice-2", "m-bob-1", "m-t2-alice"}
	tests := []struct {
		name    string
		token   string
		visible []string // newest first, as listed
	}{
		{"admin sees all", "admin-token-0123456789", []string{"m-t2-alice", "m-bob-1", "m-alice-2", "m-alice-1"}},
		{"tenant admin sees the tenant's", "t1-admin-token-0123456789", []string{"m-bob-1", "m-alice-2", "m-alice-1"}},
		{"other tenant's admin sees its own only", "t2-admin-token-0123456789", []string{"m-t2-alice"}},
		{"user sees own", "alice-token-0123456789", []string{"m-alice-2", "m-alice-1"}},
		{"other user of the tenant sees own", "bob-token-0123456789", []string{"m-bob-1"}},
		{"same user id in another tenant sees that tenant's", "t2-alice-token-0123456789", []string{"m-t2-alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := f.client(t, tt.token)
			for _, id := range append(all, "no-such-message") {
				res, err := c.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: id})
				if slices.Contains(tt.visible, id) {
					if err != nil || res.GetMessage().GetId() != id || len(res.GetMessage().GetHistory()) == 0 {
						t.Errorf("GetMessage(%s) = %v, %v", id, res, err)
					}
					continue
				}
				// Not yours and not there look the same.
				if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `message "`+id+`" not found` {
					t.Errorf("GetMessage(%s) = %v, want the plain NotFound", id, err)
				}
			}
			list, err := c.ListMessages(ctx, &mailbusv1.ListMessagesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(list.GetMessages()); !slices.Equal(got, tt.visible) {
				t.Errorf("ListMessages = %v, want %v", got, tt.visible)
			}
			for _, m := range list.GetMessages() {
				if len(m.GetHistory()) != 0 || len(m.GetRecipients()) != 3 || m.GetSummary().GetSubject() == "" {
					t.Errorf("listed %s: %d history, %d recipients, summary %v", m.GetId(), len(m.GetHistory()), len(m.GetRecipients()), m.GetSummary())
				}
			}
			for _, id := range all {
				if slices.Contains(tt.visible, id) {
					continue
				}
				_, err := c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id})
				wantCode(t, err, codes.NotFound)
				_, err = c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: id})
				wantCode(t, err, codes.NotFound)
			}
		})
	}
	if n := len(f.resubmit.calls()); n != 0 {
		t.Errorf("%d resubmissions for messages the caller may not see", n)
	}
}

func TestMessageService_refusesCallersWithoutAReadingRole(t *testing.T) {
	f := start(t, true)
	ctx := context.Background()
	for _, tc := range []struct {
		token string
		code  codes.Code
	}{
		{"pipeline-token-0123456789", codes.PermissionDenied},
		{"", codes.Unauthenticated},
		{"wrong-token-0123456789", codes.Unauthenticated},
	} {
		c := f.client(t, tc.token)
		_, err := c.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: "m-alice-1"})
		wantCode(t, err, tc.code)
		_, err = c.ListMessages(ctx, &mailbusv1.ListMessagesRequest{})
		wantCode(t, err, tc.code)
		_, err = c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: "m-alice-2"})
		wantCode(t, err, tc.code)
		_, err = c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: "m-alice-2"})
		wantCode(t, err, tc.code)
	}
}

func TestMessageService_listFiltersBeyondTheCallersScopeAreRefused(t *testing.T) {
	f := start(t, false)
	ctx := context.Background()
	tests := []struct {
		name  string
		token string
		req   *mailbusv1.ListMessagesRequest
		code  codes.Code
		want  []string
	}{
		{"user asks for another user", "alice-token-0123456789", &mailbusv1.ListMessagesRequest{UserId: "bob"}, codes.PermissionDenied, nil},
		{"user asks for another tenant", "alice-token-0123456789", &mailbusv1.ListMessagesRequest{TenantId: "t2"}, codes.PermissionDenied, nil},
		{"user names themself", "alice-token-0123456789", &mailbusv1.ListMessagesRequest{TenantId: "t1", UserId: "alice"}, codes.OK, []string{"m-alice-2", "m-alice-1"}},
		{"tenant admin asks for another tenant", "t1-admin-token-0123456789", &mailbusv1.ListMessagesRequest{TenantId: "t2"}, codes.PermissionDenied, nil},
		{"tenant admin filters by user", "t1-admin-token-0123456789", &mailbusv1.ListMessagesRequest{UserId: "bob"}, codes.OK, []string{"m-bob-1"}},
		{"admin filters by tenant and user", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{TenantId: "t2", UserId: "alice"}, codes.OK, []string{"m-t2-alice"}},
		{"status", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{Status: sent}, codes.OK, []string{"m-alice-1"}},
		{"time range", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{
			StartTime: timestamppb.New(t0.Add(3 * time.Second)), EndTime: timestamppb.New(t0.Add(6 * time.Second)),
		}, codes.OK, []string{"m-bob-1", "m-alice-2"}},
		{"empty time range", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{
			StartTime: timestamppb.New(t0.Add(3 * time.Second)), EndTime: timestamppb.New(t0.Add(3 * time.Second)),
		}, codes.InvalidArgument, nil},
		{"negative page size", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{PageSize: -1}, codes.InvalidArgument, nil},
		{"forged page token", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{PageToken: "xyz"}, codes.InvalidArgument, nil},
		{"huge page size is cut", "admin-token-0123456789", &mailbusv1.ListMessagesRequest{PageSize: 100000}, codes.OK,
			[]string{"m-t2-alice", "m-bob-1", "m-alice-2", "m-alice-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := f.client(t, tt.token).ListMessages(ctx, tt.req)
			wantCode(t, err, tt.code)
			if got := ids(res.GetMessages()); err == nil && !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMessageService_listPagesThroughTokens(t *testing.T) {
	f := start(t, false)
	c := f.client(t, "t1-admin-token-0123456789")
	ctx := context.Background()
	var got []string
	req := &mailbusv1.ListMessagesRequest{PageSize: 2}
	for range 10 {
		res, err := c.ListMessages(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetMessages()) > 2 {
			t.Fatalf("page of %d", len(res.GetMessages()))
		}
		got = append(got, ids(res.GetMessages())...)
		if res.GetNextPageToken() == "" {
			break
		}
		req.PageToken = res.GetNextPageToken()
	}
	if want := []string{"m-bob-1", "m-alice-2", "m-alice-1"}; !slices.Equal(got, want) {
		t.Errorf("pages = %v, want %v", got, want)
	}
	// A token is bound to its filters: another caller's scope changes them.
	first, err := c.ListMessages(ctx, &mailbusv1.ListMessagesRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client(t, "alice-token-0123456789").ListMessages(ctx, &mailbusv1.ListMessagesRequest{PageSize: 1, PageToken: first.GetNextPageToken()})
	wantCode(t, err, codes.InvalidArgument)
}

func statuses(m *mailbusv1.Message) map[string]mailbusv1.DeliveryStatus {
	out := map[string]mailbusv1.DeliveryStatus{}
	for _, r := range m.GetRecipients() {
		out[r.GetAddress()] = r.GetStatus()
	}
	return out
}

func TestMessageService_retryResubmitsFailedRecipientsOnce(t *testing.T) {
	f := start(t, true)
	c := f.client(t, "alice-token-0123456789")
	ctx := context.Background()

	// A resubmission that fails records nothing and can be repeated.
	f.resubmit.mu.Lock()
	f.resubmit.fail = errors.New("broker down")
	f.resubmit.mu.Unlock()
	_, err := c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: "m-alice-2"})
	wantCode(t, err, codes.Unavailable)
	m, err := c.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: "m-alice-2"})
	if err != nil || statuses(m.GetMessage())["a@x.example"] != failed {
		t.Fatalf("after a failed retry: %v, %v", m, err)
	}

	for range 2 {
		res, err := c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: "m-alice-2"})
		if err != nil {
			t.Fatal(err)
		}
		// The deferred recipient is not retried: the pipeline still has it.
		want := map[string]mailbusv1.DeliveryStatus{"a@x.example": queued, "b@x.example": deferred, "c@x.example": sent}
		if got := statuses(res.GetMessage()); !maps.Equal(got, want) || res.GetMessage().GetStatus() != queued {
			t.Errorf("after retry: %v (status %v), want %v", got, res.GetMessage().GetStatus(), want)
		}
	}
	calls := f.resubmit.calls()
	if len(calls) != 1 || !slices.Equal(calls[0].Recipients, []string{"a@x.example"}) || calls[0].Retry != 1 ||
		calls[0].Message.GetId() != "m-alice-2" || calls[0].ID == "" || calls[0].Message.GetSummary().GetSubject() == "" ||
		!strings.Contains(calls[0].By, "alice") {
		t.Fatalf("resubmissions = %+v, want one for a, retry 1, by alice", calls)
	}
	last := m.GetMessage().GetHistory()
	res, _ := c.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: "m-alice-2"})
	history := res.GetMessage().GetHistory()
	if len(history) != len(last)+1 || history[len(history)-1].GetEventId() != calls[0].ID ||
		history[len(history)-1].GetReason() != store.ReasonRetryRequested {
		t.Errorf("history does not end with the retry %s: %v", calls[0].ID, history)
	}

	// Nothing to retry: no resubmission, the message as it is.
	res2, err := c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: "m-alice-1"})
	if err != nil || res2.GetMessage().GetStatus() != sent || len(f.resubmit.calls()) != 1 {
		t.Errorf("retrying a sent message = %v, %v; %d resubmissions", res2, err, len(f.resubmit.calls()))
	}
	_, err = c.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{})
	wantCode(t, err, codes.InvalidArgument)
}

func TestMessageService_retryWithoutResubmitterIsUnimplemented(t *testing.T) {
	f := start(t, false)
	_, err := f.client(t, "admin-token-0123456789").RetryMessage(context.Background(), &mailbusv1.RetryMessageRequest{Id: "m-alice-2"})
	wantCode(t, err, codes.Unimplemented)
}

func TestMessageService_cancelStopsOnlyWhatIsNotFinal(t *testing.T) {
	f := start(t, true)
	c := f.client(t, "t1-admin-token-0123456789")
	ctx := context.Background()
	var historyLen int
	for i := range 2 {
		res, err := c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: "m-alice-2"})
		if err != nil {
			t.Fatal(err)
		}
		m := res.GetMessage()
		want := map[string]mailbusv1.DeliveryStatus{"a@x.example": failed, "b@x.example": cancelled, "c@x.example": sent}
		if got := statuses(m); !maps.Equal(got, want) {
			t.Errorf("after cancel: %v, want %v", got, want)
		}
		if i == 1 && len(m.GetHistory()) != historyLen {
			t.Errorf("a repeated cancel added history: %d → %d events", historyLen, len(m.GetHistory()))
		}
		historyLen = len(m.GetHistory())
	}
	res, err := c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: "m-bob-1"})
	if err != nil || res.GetMessage().GetStatus() != cancelled {
		t.Errorf("cancelling a queued message = %v, %v", res, err)
	}
}

func TestMessageService_cancelSetsTheMarkerBeforeRecording(t *testing.T) {
	f := start(t, true)
	c := f.client(t, "bob-token-0123456789")
	ctx := context.Background()
	f.cancel.mu.Lock()
	f.cancel.fail = errors.New("redis down")
	f.cancel.mu.Unlock()
	_, err := c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: "m-bob-1"})
	wantCode(t, err, codes.Unavailable)
	m, err := c.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: "m-bob-1"})
	if err != nil || m.GetMessage().GetStatus() != queued {
		t.Fatalf("a cancellation whose marker failed changed the message: %v, %v", m, err)
	}
	res, err := c.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: "m-bob-1"})
	if err != nil || res.GetMessage().GetStatus() != cancelled {
		t.Fatalf("CancelMessage = %v, %v", res, err)
	}
	if got := f.cancel.calls(); !slices.Equal(got, []string{"t1/m-bob-1"}) {
		t.Errorf("markers set: %v", got)
	}
	h := res.GetMessage().GetHistory()
	if last := h[len(h)-1]; !strings.Contains(last.GetDetail(), "cancelled by user tenant=t1 user=bob") {
		t.Errorf("the cancellation does not say who: %v", last)
	}
}

func TestMessageService_bulkActionsActOnlyOnWhatTheCallerMaySee(t *testing.T) {
	f := start(t, true)
	ctx := context.Background()

	// Another tenant's admin may not name tenant t1.
	_, err := f.client(t, "t2-admin-token-0123456789").CancelMessages(ctx, &mailbusv1.CancelMessagesRequest{
		Filter: &mailbusv1.MessageFilter{TenantId: "t1"}})
	wantCode(t, err, codes.PermissionDenied)
	_, err = f.client(t, "pipeline-token-0123456789").RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{})
	wantCode(t, err, codes.PermissionDenied)

	// Bob's empty filter is bob's messages.
	res, err := f.client(t, "bob-token-0123456789").CancelMessages(ctx, &mailbusv1.CancelMessagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.GetResult(); r.GetMatched() != 1 || r.GetChanged() != 1 || r.GetRecipients() != 3 || r.GetNextPageToken() != "" {
		t.Errorf("bob's bulk cancel: %v", r)
	}
	if got := f.cancel.calls(); !slices.Equal(got, []string{"t1/m-bob-1"}) {
		t.Errorf("markers set: %v", got)
	}

	alice := f.client(t, "alice-token-0123456789")
	rr, err := alice.RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := rr.GetResult()
	if r.GetMatched() != 1 || r.GetChanged() != 1 || r.GetRecipients() != 1 || r.GetNextPageToken() == "" {
		t.Fatalf("alice's first page: %v", r)
	}
	rr, err = alice.RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{PageSize: 1, PageToken: r.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	if r := rr.GetResult(); r.GetMatched() != 1 || r.GetUnchanged() != 1 || r.GetNextPageToken() != "" {
		t.Errorf("alice's second page: %v", r)
	}
	if calls := f.resubmit.calls(); len(calls) != 1 || calls[0].Message.GetId() != "m-alice-2" {
		t.Errorf("resubmissions: %+v", calls)
	}

	// A cancelled message is refused by name, and the page goes on.
	if _, err := alice.CancelMessages(ctx, &mailbusv1.CancelMessagesRequest{Filter: &mailbusv1.MessageFilter{Status: queued}}); err != nil {
		t.Fatal(err)
	}
	rr, err = alice.RetryMessages(ctx, &mailbusv1.RetryMessagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r := rr.GetResult(); r.GetMatched() != 2 || r.GetUnchanged() != 1 || !strings.Contains(r.GetRefused()["m-alice-2"], "cancelled") {
		t.Errorf("retry after cancel: %v", r)
	}
	_, err = alice.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: "m-alice-2"})
	wantCode(t, err, codes.FailedPrecondition)
}
