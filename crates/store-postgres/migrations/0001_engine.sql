-- Saga engine schema (PostgreSQL). Times are epoch milliseconds (BIGINT) so the engine's
-- injected clock is the only clock; tenant_id is on every saga-related row so it can serve as
-- the distribution key on Citus-like engines. No foreign keys, no advisory locks.
CREATE TABLE definitions (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    document   JSONB   NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE sagas (
    id               UUID    PRIMARY KEY,   -- UUIDv7: sorts by creation time
    tenant_id        TEXT,
    definition       TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    input            JSONB   NOT NULL,
    state            JSON    NOT NULL,      -- rewritten on every transition: JSON skips JSONB's conversion
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           BIGINT  NOT NULL,      -- due time; equals lease_expires_at while leased
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    fencing_token    BIGINT  NOT NULL DEFAULT 0,
    previous_owner   TEXT,                  -- lease_owner before the latest claim
    event_seq        BIGINT  NOT NULL DEFAULT 0,
    idempotency_key  TEXT    UNIQUE,
    request_hash     TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    completed_at     BIGINT
);

CREATE INDEX sagas_due ON sagas (priority DESC, run_at)
    WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING');
CREATE INDEX sagas_by_status ON sagas (status, id);
CREATE INDEX sagas_by_tenant ON sagas (tenant_id, id);
CREATE INDEX sagas_by_definition ON sagas (definition, id);

CREATE TABLE saga_events (
    saga_id   UUID    NOT NULL,
    seq       BIGINT  NOT NULL,
    tenant_id TEXT,
    kind      TEXT    NOT NULL,
    step      TEXT,
    attempt   INTEGER,
    worker    TEXT,
    data      JSONB   NOT NULL,
    at        BIGINT  NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- Room on each page so a transition that keeps the lease (no indexed column changes) is a HOT
-- update: no index writes, less vacuum.
ALTER TABLE sagas SET (fillfactor = 70);
