package limits

import (
	"context"
	"log/slog"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// Health tells the router which relays are disabled for today after
// repeated failures (see RecordFailure).
type Health struct {
	Limits *Limits
	Log    *slog.Logger
}

// Disabled reports whether relayID is disabled today in the tenant's zone.
// When Redis cannot answer the relay counts as enabled: the sender records
// a failure again if it really is broken, while treating it as disabled
// would silently move mail to the default server.
func (h Health) Disabled(ctx context.Context, tenant *mailbusv1.Tenant, relayID string) bool {
	off, err := h.Limits.IsDisabled(ctx, tenant.GetId(), relayID, Zone(tenant.GetTimeZone()))
	if err != nil && h.Log != nil {
		h.Log.Warn("cannot read relay health, treating relay as enabled", "tenant_id", tenant.GetId(), "relay_id", relayID, "err", err)
	}
	return off
}
