package catcher

import (
	"encoding/json"
	"html/template"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

type mimeWordDecoder struct{ mime.WordDecoder }

func (d *mimeWordDecoder) decode(s string) string {
	out, err := d.DecodeHeader(s)
	if err != nil {
		return s
	}
	return out
}

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>mailbus mail catcher</title>
<meta http-equiv="refresh" content="5">
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:.6rem;white-space:pre-wrap;word-break:break-all;font-size:.8rem;margin:.3rem 0 0}
details summary{cursor:pointer}
.muted{color:#777}
</style></head><body>
<h1>mailbus mail catcher</h1>
<p class="muted">{{len .}} message(s) received on this catcher; newest first. JSON at <a href="/api/messages">/api/messages</a>.</p>
<table><tr><th>#</th><th>received</th><th>envelope</th><th>subject and headers</th><th>size</th></tr>
{{range .}}<tr>
<td>{{.ID}}</td>
<td>{{.Received.Format "15:04:05"}}</td>
<td>from {{.From}}<br>to {{range $i, $r := .To}}{{if $i}}, {{end}}{{$r}}{{end}}</td>
<td><details><summary>{{if .Subject}}{{.Subject}}{{else}}<span class="muted">(no subject)</span>{{end}}</summary><pre>{{.Header}}</pre></details>
<a href="/messages/{{.ID}}.eml">raw</a></td>
<td>{{.Size}}</td>
</tr>{{end}}
</table></body></html>`))

// Handler serves the page, a JSON list and raw messages.
func (c *Catcher) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = page.Execute(w, c.Messages())
	})
	mux.HandleFunc("GET /api/messages", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.Messages())
	})
	mux.HandleFunc("GET /messages/{file}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(strings.TrimSuffix(r.PathValue("file"), ".eml"), 10, 64)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		m, ok := c.Message(id)
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "message/rfc822")
		_, _ = w.Write(m.Raw)
	})
	return mux
}
