package console

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func (q *req) domains() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	if tenant == nil {
		q.render(http.StatusOK, "domains", "Domains", "domains", nil, errNoTenant)
		return nil
	}
	ctx, cancel := q.call()
	defer cancel()
	resp, err := q.s.api.Config.ListDomains(ctx, &mailbusv1.ListDomainsRequest{TenantId: tenant.GetId(), PageSize: 500})
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	q.render(http.StatusOK, "domains", "Domains", "domains", resp.GetDomains(), err)
	return nil
}

type suppressionsData struct {
	Query     string
	Entries   []*mailbusv1.Suppression
	Scanned   int
	Truncated bool
}

// listSuppressions pages through the tenant's list and keeps the entries
// whose address contains query.
func (q *req) listSuppressions(tenantID, query string, limit int) (out []*mailbusv1.Suppression, scanned int, truncated bool, err error) {
	ctx, cancel := q.call()
	defer cancel()
	query = strings.ToLower(strings.TrimSpace(query))
	token := ""
	for {
		resp, err := q.s.api.Suppressions.ListSuppressions(ctx, &mailbusv1.ListSuppressionsRequest{TenantId: tenantID, PageSize: 1000, PageToken: token})
		if err != nil {
			return out, scanned, false, err
		}
		for _, e := range resp.GetSuppressions() {
			scanned++
			if query == "" || strings.Contains(e.GetAddress(), query) {
				out = append(out, e)
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, scanned, false, nil
		}
		if limit > 0 && scanned >= limit {
			return out, scanned, true, nil
		}
	}
}

func (q *req) suppressions() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	if tenant == nil {
		q.render(http.StatusOK, "suppressions", "Suppression list", "suppressions", suppressionsData{}, errNoTenant)
		return nil
	}
	d := suppressionsData{Query: q.r.URL.Query().Get("q")}
	d.Entries, d.Scanned, d.Truncated, err = q.listSuppressions(tenant.GetId(), d.Query, q.s.cfg.ScanLimit)
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	q.render(http.StatusOK, "suppressions", "Suppression list", "suppressions", d, err)
	return nil
}

// suppressionsCSV exports the whole list (or the search's matches).
func (q *req) suppressionsCSV() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	if tenant == nil {
		return errNoTenant
	}
	entries, _, _, err := q.listSuppressions(tenant.GetId(), q.r.URL.Query().Get("q"), 0)
	if err != nil {
		return err
	}
	q.w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	q.w.Header().Set("Content-Disposition", `attachment; filename="suppressions-`+url.PathEscape(tenant.GetId())+`.csv"`)
	cw := csv.NewWriter(q.w)
	_ = cw.Write([]string{"address", "reason", "source", "detail", "added"})
	for _, e := range entries {
		_ = cw.Write([]string{csvSafe(e.GetAddress()), csvSafe(e.GetReason()), csvSafe(e.GetSource()), csvSafe(e.GetDetail()),
			e.GetCreateTime().AsTime().UTC().Format(time.RFC3339)})
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe keeps a spreadsheet from reading a remote server's words as a
// formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func (q *req) suppressionAdd() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	addr := strings.TrimSpace(q.r.PostFormValue("address"))
	_, err = q.s.api.Suppressions.AddSuppression(ctx, &mailbusv1.AddSuppressionRequest{Suppression: &mailbusv1.Suppression{
		TenantId: tenant.GetId(), Address: addr, Reason: strings.TrimSpace(q.r.PostFormValue("reason")),
	}})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		return q.redirect("/suppressions", "Could not add "+addr+": "+status.Convert(err).Message(), false)
	}
	return q.redirect("/suppressions?q="+url.QueryEscape(strings.ToLower(addr)), "Added "+addr+" to the suppression list.", true)
}

func (q *req) suppressionRemove() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	addr := q.r.PostFormValue("address")
	resp, err := q.s.api.Suppressions.RemoveSuppression(ctx, &mailbusv1.RemoveSuppressionRequest{TenantId: tenant.GetId(), Address: addr})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		return q.redirect("/suppressions", "Could not remove "+addr+": "+status.Convert(err).Message(), false)
	}
	if !resp.GetRemoved() {
		return q.redirect("/suppressions", addr+" was not on the list.", false)
	}
	return q.redirect("/suppressions", "Removed "+addr+" from the suppression list.", true)
}

type webhooksData struct {
	Available   bool
	Endpoints   []*mailbusv1.WebhookEndpoint
	DeadLetters []*mailbusv1.WebhookDeadLetter
	MoreDead    bool
}

// webhooks lists the tenant's endpoints and the webhooks that gave up
// after 72 hours of retries, with replay.
func (q *req) webhooks() error {
	if q.s.api.Webhooks == nil {
		q.render(http.StatusOK, "webhooks", "Webhooks", "webhooks", webhooksData{}, nil)
		return nil
	}
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	d := webhooksData{Available: true}
	if tenant == nil {
		q.render(http.StatusOK, "webhooks", "Webhooks", "webhooks", d, errNoTenant)
		return nil
	}
	ctx, cancel := q.call()
	defer cancel()
	eps, err := q.s.api.Webhooks.ListWebhookEndpoints(ctx, &mailbusv1.ListWebhookEndpointsRequest{TenantId: tenant.GetId()})
	if err == nil {
		d.Endpoints = eps.GetEndpoints()
		var dead *mailbusv1.ListDeadLettersResponse
		dead, err = q.s.api.Webhooks.ListDeadLetters(ctx, &mailbusv1.ListDeadLettersRequest{TenantId: tenant.GetId(), PageSize: 100})
		d.DeadLetters, d.MoreDead = dead.GetDeadLetters(), dead.GetNextPageToken() != ""
	}
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	q.render(http.StatusOK, "webhooks", "Webhooks", "webhooks", d, err)
	return nil
}

// webhooksReplay sends dead letters again: one (webhook_id), an
// endpoint's, or all of the tenant's.
func (q *req) webhooksReplay() error {
	if q.s.api.Webhooks == nil {
		return q.redirect("/webhooks", "This console has no webhook service to ask.", false)
	}
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	req := &mailbusv1.ReplayDeadLettersRequest{TenantId: tenant.GetId(), EndpointId: q.r.PostFormValue("endpoint_id")}
	if id := q.r.PostFormValue("webhook_id"); id != "" {
		req.WebhookIds = []string{id}
	}
	resp, err := q.s.api.Webhooks.ReplayDeadLetters(ctx, req)
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		return q.redirect("/webhooks", "Could not replay: "+status.Convert(err).Message(), false)
	}
	return q.redirect("/webhooks", fmt.Sprintf("Replayed %d webhook(s); they are delivered again from now on.", resp.GetReplayed()), true)
}
