// Package quota is the quota stage of mailbus. It is a placeholder until its issue
// lands; cmd/mailbus and cmd/quota already wire it.
package quota

import (
	"context"
	"log/slog"
)

// Config configures the quota service.
type Config struct{}

// Service is the quota service.
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
