package limits

// Every key of one tenant carries the tenant id as its Redis Cluster hash tag
// ({tenant}), so all keys that one script touches live in one slot and the
// scripts run unchanged on Redis Cluster.

// tenantKey is the tenant part of every key: prefix + "{tenant}".
func (l *Limits) tenantKey(tenant string) string {
	return l.prefix + "{" + tenant + "}"
}

// relayDayKey counts recipients sent through one relay on one day.
func (l *Limits) relayDayKey(tenant, relayID, day string) string {
	return l.tenantKey(tenant) + ":relay:" + relayID + ":" + day
}

// tenantDayKey counts recipients of the tenant over every route on one day.
func (l *Limits) tenantDayKey(tenant, day string) string {
	return l.tenantKey(tenant) + ":tenant:" + day
}

// relayCeilKey is how far the relay's counter of one day may grow: the
// ledger holds at least this value (see Ledger).
func (l *Limits) relayCeilKey(tenant, relayID, day string) string {
	return l.tenantKey(tenant) + ":ceil:relay:" + relayID + ":" + day
}

// tenantCeilKey is the same for the tenant's counter.
func (l *Limits) tenantCeilKey(tenant, day string) string {
	return l.tenantKey(tenant) + ":ceil:tenant:" + day
}

// restoredKey marks a tenant whose state in this Redis is complete: it was
// restored from the ledger, or started empty with the ledger's blessing.
// It has no expiry, so that it goes only when Redis loses data; its absence
// is how every script with a ledger tells a lost counter from a zero one.
func (l *Limits) restoredKey(tenant string) string {
	return l.tenantKey(tenant) + ":restored"
}

// seenKey is a delivery's idempotency marker: a hash holding the decision per
// route and the delivery's current charge.
func (l *Limits) seenKey(tenant, deliveryID string) string {
	return l.tenantKey(tenant) + ":seen:" + deliveryID
}

// rateKey holds the relay's GCRA state (redis_rate adds its own "rate:"
// prefix in front, which leaves the hash tag intact).
func (l *Limits) rateKey(tenant, relayID string) string {
	return l.tenantKey(tenant) + ":rate:" + relayID
}

// failKey counts a relay's consecutive failures on one day. The day is in
// the key, so a relay disabled today is usable tomorrow even if the key's
// expiry were late (or, on an embedded server, never ran).
func (l *Limits) failKey(tenant, relayID, day string) string {
	return l.tenantKey(tenant) + ":fail:" + relayID + ":" + day
}
