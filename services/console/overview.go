package console

import (
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// series are the statuses the hourly chart stacks, with their colours;
// the same colours mark the status badges elsewhere.
var series = []struct {
	Status mailbusv1.DeliveryStatus
	Color  string
}{
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, "#2f9e6b"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, "#4c7bd9"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "#e0a526"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, "#d9534f"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, "#8e2b2b"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED, "#8a8f98"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED, "#b9bec7"},
	{mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED, "#9b59b6"},
}

type total struct {
	Status mailbusv1.DeliveryStatus
	Color  string
	Count  int
}

type overviewData struct {
	Since      time.Time
	Messages   int
	Recipients int
	Totals     []total
	Hourly     template.HTML
	Bounces    template.HTML
	TopRelays  template.HTML
	Partial    bool
}

// overview charts the last 24 hours of the message log: recipients per
// hour by status, bounces by reason, and the relays that carried most.
func (q *req) overview() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	now := q.s.now().UTC()
	end := now.Truncate(time.Hour).Add(time.Hour)
	start := end.Add(-24 * time.Hour)
	d := overviewData{Since: start}
	msgs, _, partial, err := q.scanMessages(&mailbusv1.ListMessagesRequest{TenantId: tenant.GetId(), StartTime: timestamppb.New(start)}, nil, 0)
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	d.Partial, d.Messages = partial, len(msgs)
	hours := make([]map[mailbusv1.DeliveryStatus]int, 24)
	for i := range hours {
		hours[i] = map[mailbusv1.DeliveryStatus]int{}
	}
	counts := map[mailbusv1.DeliveryStatus]int{}
	bounces := map[string]int{}
	relays := map[string]int{}
	for _, m := range msgs {
		h := int(m.GetCreateTime().AsTime().Sub(start) / time.Hour)
		if h < 0 || h >= 24 {
			continue
		}
		for _, r := range m.GetRecipients() {
			d.Recipients++
			hours[h][r.GetStatus()]++
			counts[r.GetStatus()]++
			switch r.GetStatus() {
			case mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
				mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED:
				bounces[orDash(r.GetReason(), "unknown")]++
			case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT:
				relays[r.GetRelayId()]++
			}
		}
	}
	for _, s := range series {
		d.Totals = append(d.Totals, total{Status: s.Status, Color: s.Color, Count: counts[s.Status]})
	}
	d.Hourly = hourlyChart(start, hours)
	d.Bounces = barChart(topN(bounces, 8, nil), "#d9534f", "no bounces or failures in these 24 hours")
	names := q.relayNames(tenant.GetId())
	d.TopRelays = barChart(topN(relays, 8, func(id string) string {
		if id == "" {
			return "default server"
		}
		return orDash(names[id], id)
	}), "#2f9e6b", "nothing sent in these 24 hours")
	q.render(http.StatusOK, "overview", "Overview", "overview", d, err)
	return nil
}

func orDash(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

type bar struct {
	Label string
	Value int
}

func topN(m map[string]int, n int, label func(string) string) []bar {
	var out []bar
	for k, v := range m {
		if label != nil {
			k = label(k)
		}
		out = append(out, bar{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Value != out[j].Value {
			return out[i].Value > out[j].Value
		}
		return out[i].Label < out[j].Label
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// hourlyChart draws stacked columns, one per hour, in SVG.
func hourlyChart(start time.Time, hours []map[mailbusv1.DeliveryStatus]int) template.HTML {
	const w, h, left, bottom, top = 720, 220, 36, 24, 10
	maxV := 0
	for _, hr := range hours {
		sum := 0
		for _, v := range hr {
			sum += v
		}
		maxV = max(maxV, sum)
	}
	scale := niceMax(maxV)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="Recipients per hour by status">`, w, h)
	plotH := float64(h - bottom - top)
	colW := float64(w-left-4) / float64(len(hours))
	for i := 0; i <= 4; i++ {
		y := float64(top) + plotH*float64(i)/4
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e6e8ec"/>`, left, y, w-4, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="axis" text-anchor="end">%d</text>`, left-4, y+4, scale*(4-i)/4)
	}
	for i, hr := range hours {
		x := float64(left) + colW*float64(i) + 2
		y := float64(top) + plotH
		for _, s := range series {
			v := hr[s.Status]
			if v == 0 {
				continue
			}
			bh := plotH * float64(v) / float64(scale)
			y -= bh
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %d</title></rect>`,
				x, y, colW-4, bh, s.Color, start.Add(time.Duration(i)*time.Hour).Format("15:04"), statusName(s.Status), v)
		}
		if i%3 == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="axis" text-anchor="middle">%s</text>`, x+colW/2-2, h-6,
				start.Add(time.Duration(i)*time.Hour).Format("15:04"))
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built here from numbers and fixed strings
}

// barChart draws horizontal bars with their labels and values in SVG.
func barChart(bars []bar, color, empty string) template.HTML {
	if len(bars) == 0 {
		return template.HTML(`<p class="muted">` + template.HTMLEscapeString(empty) + `</p>`)
	}
	const w, rowH, labelW = 460, 28, 150
	h := rowH*len(bars) + 4
	maxV := 1
	for _, b := range bars {
		maxV = max(maxV, b.Value)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %d %d" role="img">`, w, h)
	for i, b := range bars {
		y := i*rowH + 4
		bw := float64(w-labelW-50) * float64(b.Value) / float64(maxV)
		fmt.Fprintf(&sb, `<text x="%d" y="%d" class="label" text-anchor="end">%s</text>`, labelW-8, y+15, template.HTMLEscapeString(clip(b.Label, 22)))
		fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%.1f" height="18" rx="3" fill="%s"><title>%s: %d</title></rect>`,
			labelW, y+2, max(bw, 2), color, template.HTMLEscapeString(b.Label), b.Value)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%d" class="value">%d</text>`, float64(labelW)+max(bw, 2)+6, y+15, b.Value)
	}
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) //nolint:gosec // labels are escaped above
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// niceMax rounds a chart's top up to 4, 8, 20, 40, ... so the four grid
// lines fall on whole numbers.
func niceMax(v int) int {
	if v <= 4 {
		return 4
	}
	step := 1
	for {
		for _, m := range []int{1, 2, 5} {
			if top := 4 * m * step; top >= v {
				return top
			}
		}
		step *= 10
	}
}
