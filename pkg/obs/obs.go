// Package obs is mailbus's observability: structured logging with slog,
// Prometheus metrics, health endpoints and W3C trace-context propagation.
// Every service builds its logger and its HTTP admin server here so that
// SREs see the same shape of logs and endpoints everywhere.
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// LogConfig chooses the log format and level.
type LogConfig struct {
	// Format is "json" (default, for machines) or "text" (for people).
	Format string
	// Level is debug, info (default), warn or error.
	Level string
}

// NewLogger builds a structured logger writing to w.
func NewLogger(w io.Writer, cfg LogConfig) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(orDefault(cfg.Level, "info")))); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if strings.EqualFold(cfg.Format, "text") {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// LogConfigFromEnv reads MAILBUS_LOG_FORMAT and MAILBUS_LOG_LEVEL.
func LogConfigFromEnv() LogConfig {
	return LogConfig{Format: os.Getenv("MAILBUS_LOG_FORMAT"), Level: os.Getenv("MAILBUS_LOG_LEVEL")}
}

// NewRegistry returns a Prometheus registry with the Go and process
// collectors, so that one process (mailbus dev) can host every service's
// metrics without the global registry.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Health tracks readiness; liveness is the process answering at all.
type Health struct {
	ready atomic.Bool
}

// SetReady marks the service ready (or not) to take traffic.
func (h *Health) SetReady(v bool) { h.ready.Store(v) }

// Ready reports readiness.
func (h *Health) Ready() bool { return h.ready.Load() }

// AdminHandler serves /metrics, /healthz and /readyz.
func AdminHandler(reg prometheus.Gatherer, h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if h != nil && !h.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// ServeAdmin serves AdminHandler on addr until ctx ends. An empty addr
// disables the admin server.
func ServeAdmin(ctx context.Context, addr string, reg prometheus.Gatherer, h *Health) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for admin http on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: AdminHandler(reg, h), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve admin http: %w", err)
	}
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
