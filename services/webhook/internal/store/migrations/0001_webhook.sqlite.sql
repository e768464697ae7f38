-- The webhook service's endpoints and outbox (SQLite). Keep in step with
-- 0001_webhook.postgres.sql: the two differ only in the byte type
-- (BLOB/BYTEA) and the outbox's sequence (AUTOINCREMENT/BIGSERIAL).
-- Times are Unix nanoseconds in BIGINT columns.

CREATE TABLE webhook_endpoints (
    id                  TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL,
    url                 TEXT    NOT NULL,
    description         TEXT    NOT NULL DEFAULT '',
    -- Comma-separated event types; empty means all.
    event_types         TEXT    NOT NULL DEFAULT '',
    final_only          BOOLEAN NOT NULL DEFAULT FALSE,
    active              BOOLEAN NOT NULL DEFAULT TRUE,
    -- whsec_ secrets sealed with pkg/seal (MAILBUS_SECRET_KEY).
    sealed_secret       BLOB    NOT NULL,
    sealed_previous     BLOB,
    previous_expire_ns  BIGINT  NOT NULL DEFAULT 0,
    create_ns           BIGINT  NOT NULL,
    update_ns           BIGINT  NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

-- One row per (endpoint, event): the outbox. state 0 = due, 1 = delivered,
-- 2 = dead letter. Delivered rows stay a while so that a redelivered Kafka
-- record does not send an event again.
CREATE TABLE webhook_deliveries (
    seq          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT    NOT NULL,
    endpoint_id  TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    tenant_id    TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    -- mailbus.v1.DeliveryEvent as protobuf, for the dead-letter list.
    event        BLOB    NOT NULL,
    -- The JSON body that is signed and posted, the same on every attempt.
    body         BLOB    NOT NULL,
    state        INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_ns      BIGINT  NOT NULL,
    -- Whether every earlier row of the message to this endpoint is done:
    -- only ready rows are posted, which keeps a message's events in order.
    ready        BOOLEAN NOT NULL DEFAULT TRUE,
    -- A dispatcher owns a due row until lease_ns (crash safety).
    lease_ns     BIGINT  NOT NULL DEFAULT 0,
    last_error   TEXT    NOT NULL DEFAULT '',
    create_ns    BIGINT  NOT NULL,
    -- Start of the retry schedule: creation, or the last replay.
    schedule_ns  BIGINT  NOT NULL,
    done_ns      BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (endpoint_id, webhook_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, state, ready, next_ns);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (endpoint_id, message_id, state, seq);
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (state, done_ns);
