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
