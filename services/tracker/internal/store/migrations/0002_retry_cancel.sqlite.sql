-- What RetryMessage needs to send a message again, and the columns the
-- bulk actions filter on (sqlite). Keep in step with 0002_retry_cancel.*.sql.

-- The original Submission of each message, as the tracker read it from
-- mail.submit: protobuf compressed with zstd. Kept until keep_until_ns
-- (the retention, 7 days by default), then purged; a retry after that is
-- refused with the reason.
CREATE TABLE tracker_submissions (
    message_id    TEXT NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    stored_ns     BIGINT  NOT NULL,
    keep_until_ns BIGINT  NOT NULL,
    -- Size of the protobuf before compression, for the operator's sums.
    raw_bytes     BIGINT  NOT NULL,
    body          BLOB   NOT NULL
) WITHOUT ROWID;

CREATE INDEX tracker_submissions_keep_until ON tracker_submissions (keep_until_ns);

-- The campaign from the message's summary, for bulk actions by campaign.
ALTER TABLE tracker_messages ADD COLUMN campaign_id TEXT NOT NULL DEFAULT '';
CREATE INDEX tracker_messages_campaign_time ON tracker_messages (tenant_id, campaign_id, create_ns, id);
-- Bulk actions by relay look for recipients last routed through it.
CREATE INDEX tracker_recipients_relay ON tracker_recipients (relay_id, message_id);
