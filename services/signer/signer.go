// Package signer is the signer stage of mailbus. It is a placeholder until its issue
// lands; cmd/mailbus and cmd/signer already wire it.
package signer

import (
	"context"
	"log/slog"
)

// Config configures the signer service.
type Config struct{}

// Service is the signer service.
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
