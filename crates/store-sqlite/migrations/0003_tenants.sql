-- Tenants of the control plane (API.md §6). The status machine lives in saga_core::tenant;
-- every status write is conditional on the statuses it may come from.
CREATE TABLE tenants (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    tier         TEXT    NOT NULL,
    storage_mode TEXT    NOT NULL,
    sla_tier     TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    domains      TEXT    NOT NULL,
    contacts     TEXT    NOT NULL,
    metadata     TEXT    NOT NULL,
    storage      TEXT    NOT NULL DEFAULT 'null',
    migrations   TEXT    NOT NULL DEFAULT '[]',
    saga_id      TEXT,
    error        TEXT ,
    created_at   INTEGER  NOT NULL,
    updated_at   INTEGER  NOT NULL
);
CREATE INDEX tenants_by_status ON tenants (status, id);

CREATE TABLE tenant_api_keys (
    id         TEXT    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tenant_api_keys_by_tenant ON tenant_api_keys (tenant_id);

CREATE TABLE tenant_users (
    id         TEXT    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE webhook_receipts (
    source      TEXT    NOT NULL,
    webhook_id  TEXT    NOT NULL,
    response    TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (source, webhook_id)
);
