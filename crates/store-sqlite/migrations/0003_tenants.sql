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
