-- Tenants of the control plane (API.md §6). The status machine lives in saga_core::tenant;
-- every status write is conditional on the statuses it may come from.
CREATE TABLE tenants (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    tier         TEXT    NOT NULL,
    storage_mode TEXT    NOT NULL,
    sla_tier     TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    domains      JSONB   NOT NULL,
    contacts     JSONB   NOT NULL,
    metadata     JSONB   NOT NULL,
    storage      JSONB   NOT NULL DEFAULT 'null',
    migrations   JSONB   NOT NULL DEFAULT '[]',
    saga_id      UUID,
    error        JSONB,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX tenants_by_status ON tenants (status, id);

-- Tenant API keys: only the SHA-256 of the token is stored.
CREATE TABLE tenant_api_keys (
    id         UUID    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at BIGINT  NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tenant_api_keys_by_tenant ON tenant_api_keys (tenant_id);

CREATE TABLE tenant_users (
    id         UUID    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    UNIQUE (tenant_id, email)
);

-- Inbound webhooks seen, by source and webhook-id, with the first answer (replays get it again).
CREATE TABLE webhook_receipts (
    source      TEXT    NOT NULL,
    webhook_id  TEXT    NOT NULL,
    response    JSONB,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (source, webhook_id)
);
