-- The location app's tables, shared by every pooled tenant: each row carries `tenant_id`, and
-- Sagaplane puts row-level security on every such table (a tenant's role sees only its rows).
CREATE TABLE app_users (
    tenant_id     TEXT NOT NULL,
    id            TEXT NOT NULL,
    email         TEXT NOT NULL,
    password_salt TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);
CREATE TABLE login_sessions (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash)
);
CREATE TABLE tracking_sessions (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE locations (
    tenant_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    tracking_id TEXT NOT NULL,
    lat         DOUBLE PRECISION NOT NULL,
    lon         DOUBLE PRECISION NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
