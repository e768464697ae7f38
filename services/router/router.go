// Package router is the router stage of mailbus. It is a placeholder until its issue
// lands; cmd/mailbus and cmd/router already wire it.
package router

import (
	"context"
	"log/slog"
)

// Config configures the router service.
type Config struct{}

// Service is the router service.
type Service struct {
	cfg Config
	log *slog.Logger
}

// New builds the service.
func New(cfg Config, log *slog.Logger) *Service { return &Service{cfg: cfg, log: log} }

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}
