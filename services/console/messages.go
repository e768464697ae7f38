package console

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// statuses are the recipient states in the order a person reads them.
var statuses = []mailbusv1.DeliveryStatus{
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED,
	mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED,
}

// messageFilter is the message log's search form. MessageService filters
// by tenant, status and time itself; recipient, sender, subject and
// campaign are matched here on the summaries it returns (case-insensitive
// substrings), over at most ScanLimit messages.
type messageFilter struct {
	Recipient, Sender, Subject, Campaign, Status, From, To string
}

func (f messageFilter) match(m *mailbusv1.Message) bool {
	sum := m.GetSummary()
	has := func(hay, needle string) bool {
		return needle == "" || strings.Contains(strings.ToLower(hay), strings.ToLower(strings.TrimSpace(needle)))
	}
	if !has(sum.GetFrom(), f.Sender) || !has(sum.GetSubject(), f.Subject) || !has(sum.GetCampaignId(), f.Campaign) {
		return false
	}
	if f.Recipient == "" {
		return true
	}
	for _, r := range m.GetRecipients() {
		if has(r.GetAddress(), f.Recipient) {
			return true
		}
	}
	for _, r := range sum.GetRecipients() {
		if has(r, f.Recipient) {
			return true
		}
	}
	return false
}

// formTime is the value of a datetime-local input, read as UTC.
const formTime = "2006-01-02T15:04"

type messagesData struct {
	Filter    messageFilter
	Statuses  []mailbusv1.DeliveryStatus
	Messages  []*mailbusv1.Message
	Scanned   int
	Truncated bool
	Shown     int
}

const maxShown = 200

func (q *req) messages() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	v := q.r.URL.Query()
	f := messageFilter{
		Recipient: v.Get("recipient"), Sender: v.Get("sender"), Subject: v.Get("subject"),
		Campaign: v.Get("campaign"), Status: v.Get("status"), From: v.Get("from"), To: v.Get("to"),
	}
	lr := &mailbusv1.ListMessagesRequest{TenantId: tenant.GetId()}
	if f.Status != "" {
		lr.Status = mailbusv1.DeliveryStatus(mailbusv1.DeliveryStatus_value["DELIVERY_STATUS_"+strings.ToUpper(f.Status)])
	}
	var inputErr error
	if f.From != "" {
		if t, perr := time.Parse(formTime, f.From); perr == nil {
			lr.StartTime = timestamppb.New(t)
		} else {
			inputErr = status.Errorf(codes.InvalidArgument, "from: not a date and time (%s)", f.From)
		}
	}
	if f.To != "" {
		if t, perr := time.Parse(formTime, f.To); perr == nil {
			lr.EndTime = timestamppb.New(t)
		} else {
			inputErr = status.Errorf(codes.InvalidArgument, "to: not a date and time (%s)", f.To)
		}
	}
	data := messagesData{Filter: f, Statuses: statuses}
	if inputErr == nil {
		data.Messages, data.Scanned, data.Truncated, err = q.scanMessages(lr, f.match, maxShown)
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
	} else {
		err = inputErr
	}
	data.Shown = len(data.Messages)
	q.render(http.StatusOK, "messages", "Messages", "messages", data, err)
	return nil
}

// scanMessages pages through the log with lr's filters and keeps the
// messages that keep accepts, up to want of them and at most ScanLimit
// read; truncated says that the limit stopped it.
func (q *req) scanMessages(lr *mailbusv1.ListMessagesRequest, keep func(*mailbusv1.Message) bool, want int) (out []*mailbusv1.Message, scanned int, truncated bool, err error) {
	ctx, cancel := q.call()
	defer cancel()
	lr.PageSize = 500
	for {
		resp, err := q.s.api.Messages.ListMessages(ctx, lr)
		if err != nil {
			return out, scanned, false, err
		}
		for _, m := range resp.GetMessages() {
			scanned++
			if keep == nil || keep(m) {
				out = append(out, m)
				if want > 0 && len(out) >= want {
					return out, scanned, resp.GetNextPageToken() != "", nil
				}
			}
		}
		lr.PageToken = resp.GetNextPageToken()
		if lr.PageToken == "" {
			return out, scanned, false, nil
		}
		if scanned >= q.s.cfg.ScanLimit {
			return out, scanned, true, nil
		}
	}
}

type messageData struct {
	Message   *mailbusv1.Message
	Relays    map[string]string
	CanRetry  bool
	CanCancel bool
}

func (q *req) message() error {
	ctx, cancel := q.call()
	defer cancel()
	resp, err := q.s.api.Messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: q.r.PathValue("id")})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		q.render(http.StatusNotFound, "message", "Message", "messages", messageData{}, err)
		return nil
	}
	m := resp.GetMessage()
	d := messageData{Message: m, Relays: q.relayNames(m.GetTenantId())}
	for _, r := range m.GetRecipients() {
		switch r.GetStatus() {
		case mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED:
			d.CanRetry = true
		}
		switch r.GetStatus() {
		case mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED:
			d.CanCancel = true
		}
	}
	q.render(http.StatusOK, "message", "Message "+shortID(m.GetId()), "messages", d, nil)
	return nil
}

// relayNames maps relay ids to names for display; a tenant the person may
// not read shows ids.
func (q *req) relayNames(tenantID string) map[string]string {
	names := map[string]string{}
	if tenantID == "" {
		return names
	}
	ctx, cancel := q.call()
	defer cancel()
	resp, err := q.s.api.Config.ListRelays(ctx, &mailbusv1.ListRelaysRequest{TenantId: tenantID, PageSize: 500})
	if err != nil {
		return names
	}
	for _, r := range resp.GetRelays() {
		names[r.GetId()] = r.GetName()
	}
	return names
}

// messageAction is the retry and cancel buttons of a message's page.
func (q *req) messageAction() error {
	id := q.r.PathValue("id")
	to := "/messages/" + id
	switch action := q.r.PathValue("action"); action {
	case "retry", "cancel":
		n, err := q.act(action, id)
		if err != nil {
			if status.Code(err) == codes.Unauthenticated {
				return err
			}
			return q.redirect(to, actionVerb(action)+" failed: "+status.Convert(err).Message(), false)
		}
		return q.redirect(to, fmt.Sprintf("%s: %s.", actionVerb(action), plural(n, "recipient")), true)
	default:
		http.NotFound(q.w, q.r)
		return nil
	}
}

func actionVerb(action string) string {
	if action == "retry" {
		return "Retry"
	}
	return "Cancel"
}

// act retries or cancels a message and returns how many recipients the
// service changed.
func (q *req) act(action, id string) (int, error) {
	ctx, cancel := q.call()
	defer cancel()
	before, err := q.s.api.Messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: id})
	if err != nil {
		return 0, err
	}
	var after *mailbusv1.Message
	if action == "retry" {
		resp, err := q.s.api.Messages.RetryMessage(ctx, &mailbusv1.RetryMessageRequest{Id: id})
		if err != nil {
			return 0, err
		}
		after = resp.GetMessage()
	} else {
		resp, err := q.s.api.Messages.CancelMessage(ctx, &mailbusv1.CancelMessageRequest{Id: id})
		if err != nil {
			return 0, err
		}
		after = resp.GetMessage()
	}
	was := map[string]mailbusv1.DeliveryStatus{}
	for _, r := range before.GetMessage().GetRecipients() {
		was[r.GetAddress()] = r.GetStatus()
	}
	n := 0
	for _, r := range after.GetRecipients() {
		if was[r.GetAddress()] != r.GetStatus() {
			n++
		}
	}
	return n, nil
}

// messagesBulk retries or cancels the messages ticked in the list.
func (q *req) messagesBulk() error {
	action := q.r.PostFormValue("action")
	back := safeNext(q.r.PostFormValue("back"))
	if action != "retry" && action != "cancel" {
		return q.redirect(back, "Choose retry or cancel.", false)
	}
	ids := q.r.PostForm["id"]
	if len(ids) == 0 {
		return q.redirect(back, "Tick the messages first.", false)
	}
	changed, failed := 0, []string{}
	for _, id := range ids {
		n, err := q.act(action, id)
		if err != nil {
			if status.Code(err) == codes.Unauthenticated {
				return err
			}
			failed = append(failed, shortID(id)+": "+status.Convert(err).Message())
			continue
		}
		changed += n
	}
	msg := fmt.Sprintf("%s of %s: %s changed.", actionVerb(action), plural(len(ids), "message"), plural(changed, "recipient"))
	if len(failed) > 0 {
		msg += " Refused: " + strings.Join(failed, "; ")
	}
	return q.redirect(back, msg, len(failed) == 0)
}
