-- The tracker's message log (SQLite). Keep in step with
-- 0001_message_log.postgres.sql: the two differ only in the byte type
-- (BLOB/BYTEA) and SQLite's WITHOUT ROWID, which stores rows in their
-- primary key's b-tree so a recipient or event look-up reads one b-tree.
--
-- Times are Unix nanoseconds in BIGINT columns: the same Go code reads them
-- in both dialects, and they compare exactly in keyset pagination.

CREATE TABLE tracker_messages (
    id           TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL DEFAULT '',
    user_id      TEXT    NOT NULL DEFAULT '',
    -- Overall status (mailbus.v1.DeliveryStatus): the least final state
    -- among the recipients, derived from the n_* counters.
    status       INTEGER NOT NULL DEFAULT 0,
    -- mailbus.v1.MessageSummary as protobuf, NULL until an event carries it.
    summary      BLOB,
    -- Earliest and latest occur_time of the message's events.
    create_ns    BIGINT  NOT NULL,
    update_ns    BIGINT  NOT NULL,
    -- How many recorded events apply to all recipients (empty recipient
    -- list): a recipient that appears later must be rebuilt from history.
    all_events   INTEGER NOT NULL DEFAULT 0,
    -- Recipients per status, so the overall status needs no scan of the
    -- recipients of a large message on every event.
    n_queued     INTEGER NOT NULL DEFAULT 0,
    n_sent       INTEGER NOT NULL DEFAULT 0,
    n_deferred   INTEGER NOT NULL DEFAULT 0,
    n_bounced    INTEGER NOT NULL DEFAULT 0,
    n_failed     INTEGER NOT NULL DEFAULT 0,
    n_suppressed INTEGER NOT NULL DEFAULT 0,
    n_cancelled  INTEGER NOT NULL DEFAULT 0,
    n_complained INTEGER NOT NULL DEFAULT 0
);

-- ListMessages: newest first, keyset on (create_ns, id), narrowed by
-- tenant, by tenant and user, or by tenant and status; the last two serve
-- the admin's listings across tenants (all, or by status: "failed mail").
CREATE INDEX tracker_messages_tenant_time ON tracker_messages (tenant_id, create_ns, id);
CREATE INDEX tracker_messages_user_time ON tracker_messages (tenant_id, user_id, create_ns, id);
CREATE INDEX tracker_messages_status_time ON tracker_messages (tenant_id, status, create_ns, id);
CREATE INDEX tracker_messages_time ON tracker_messages (create_ns, id);
CREATE INDEX tracker_messages_any_tenant_status_time ON tracker_messages (status, create_ns, id);

CREATE TABLE tracker_recipients (
    message_id      TEXT    NOT NULL,
    -- Lower-cased addr-spec.
    address         TEXT    NOT NULL,
    status          INTEGER NOT NULL DEFAULT 0,
    reason          TEXT    NOT NULL DEFAULT '',
    detail          TEXT    NOT NULL DEFAULT '',
    reply_code      INTEGER NOT NULL DEFAULT 0,
    reply_enhanced  TEXT    NOT NULL DEFAULT '',
    reply_text      TEXT    NOT NULL DEFAULT '',
    relay_id        TEXT    NOT NULL DEFAULT '',
    delivery_id     TEXT    NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- occur_time and id of the event that set the status (update_time).
    status_ns       BIGINT  NOT NULL DEFAULT 0,
    status_event_id TEXT    NOT NULL DEFAULT '',
    -- Position (occur_time, event_id) of the latest event folded into the
    -- state; an older event arriving later makes the store re-fold.
    last_ns         BIGINT  NOT NULL DEFAULT 0,
    last_event_id   TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, address)
) WITHOUT ROWID;

CREATE TABLE tracker_events (
    event_id   TEXT    NOT NULL PRIMARY KEY,
    message_id TEXT    NOT NULL,
    occur_ns   BIGINT  NOT NULL,
    -- mailbus.v1.DeliveryEvent as protobuf, exactly as applied.
    payload    BLOB    NOT NULL
) WITHOUT ROWID;

CREATE INDEX tracker_events_message ON tracker_events (message_id, occur_ns);
