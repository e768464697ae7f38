// Package bounce is the bounce stage of mailbus. It is a placeholder until its issue
// lands; cmd/mailbus and cmd/bounce already wire it.
package bounce

import (
	"context"
	"log/slog"
)

// Config configures the bounce service.
type Config struct{}

// Service is the bounce service.
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
