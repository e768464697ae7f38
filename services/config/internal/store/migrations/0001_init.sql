-- Configuration of tenants, domains, DKIM keys, relays and the default
-- server, plus the change log that WatchChanges streams.
--
-- Portable SQL for SQLite and PostgreSQL. Times are unix microseconds;
-- sealed secrets are base64 text ('' = none); lists are JSON arrays.

-- One row. Every write transaction locks it first, so writes are serialised
-- and revisions are handed out in commit order (a watcher that has seen
-- revision n can never later find a committed n-1).
CREATE TABLE config_revision (
    id       INTEGER PRIMARY KEY,
    revision BIGINT  NOT NULL
);
INSERT INTO config_revision (id, revision) VALUES (1, 0);

CREATE TABLE config_changes (
    revision    BIGINT  PRIMARY KEY,
    kind        INTEGER NOT NULL,
    resource_id TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    deleted     BOOLEAN NOT NULL,
    change_time BIGINT  NOT NULL
);

CREATE TABLE tenants (
    id                      TEXT    PRIMARY KEY,
    name                    TEXT    NOT NULL,
    time_zone               TEXT    NOT NULL,
    daily_limit             BIGINT  NOT NULL,
    default_from            TEXT    NOT NULL,
    domain_alias            TEXT    NOT NULL,
    bounce_domain           TEXT    NOT NULL,
    max_relays_per_domain   INTEGER NOT NULL,
    max_domains             INTEGER NOT NULL,
    over_limit_policy       INTEGER NOT NULL,
    admin_emails            TEXT    NOT NULL,
    soft_bounce_threshold   INTEGER NOT NULL,
    soft_bounce_window_days INTEGER NOT NULL,
    active                  BOOLEAN NOT NULL,
    create_time             BIGINT  NOT NULL,
    update_time             BIGINT  NOT NULL
);

CREATE TABLE domains (
    id                 TEXT    PRIMARY KEY,
    tenant_id          TEXT    NOT NULL REFERENCES tenants (id),
    -- A domain belongs to one tenant: signing keys and return paths are
    -- looked up by name.
    name               TEXT    NOT NULL UNIQUE,
    return_path_mode   INTEGER NOT NULL,
    custom_return_path TEXT    NOT NULL,
    create_time        BIGINT  NOT NULL,
    update_time        BIGINT  NOT NULL
);
CREATE INDEX domains_by_tenant ON domains (tenant_id, id);

CREATE TABLE dkim_keys (
    domain_id          TEXT    NOT NULL REFERENCES domains (id),
    selector           TEXT    NOT NULL,
    algorithm          INTEGER NOT NULL,
    public_key         TEXT    NOT NULL,
    sealed_private_key TEXT    NOT NULL,
    active             BOOLEAN NOT NULL,
    create_time        BIGINT  NOT NULL,
    PRIMARY KEY (domain_id, selector)
);

CREATE TABLE relays (
    id                   TEXT    PRIMARY KEY,
    -- NULL for the default server's relay, which belongs to no tenant.
    tenant_id            TEXT    REFERENCES tenants (id),
    name                 TEXT    NOT NULL,
    host                 TEXT    NOT NULL,
    port                 INTEGER NOT NULL,
    security             INTEGER NOT NULL,
    skip_cert_verify     BOOLEAN NOT NULL,
    auth_mechanism       INTEGER NOT NULL,
    auth_username        TEXT    NOT NULL,
    sealed_password      TEXT    NOT NULL,
    sealed_oauth_token   TEXT    NOT NULL,
    client_cert_pem      TEXT    NOT NULL,
    sealed_client_key    TEXT    NOT NULL,
    from_filter          TEXT    NOT NULL,
    priority             INTEGER NOT NULL,
    kinds                TEXT    NOT NULL,
    daily_limit          BIGINT  NOT NULL,
    rate_per_second      DOUBLE PRECISION NOT NULL,
    active               BOOLEAN NOT NULL,
    allow_plaintext_auth BOOLEAN NOT NULL,
    create_time          BIGINT  NOT NULL,
    update_time          BIGINT  NOT NULL
);
CREATE INDEX relays_by_tenant ON relays (tenant_id, id);

CREATE TABLE relay_domains (
    relay_id  TEXT NOT NULL REFERENCES relays (id),
    domain_id TEXT NOT NULL REFERENCES domains (id),
    PRIMARY KEY (relay_id, domain_id)
);
CREATE INDEX relay_domains_by_domain ON relay_domains (domain_id);

-- One row when a default server is set.
CREATE TABLE default_server (
    id        INTEGER PRIMARY KEY,
    mode      INTEGER NOT NULL,
    helo_name TEXT    NOT NULL,
    relay_id  TEXT    REFERENCES relays (id)
);
