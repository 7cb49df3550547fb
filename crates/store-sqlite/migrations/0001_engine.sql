-- Saga engine schema (SQLite). Times are epoch milliseconds; JSON is TEXT.
CREATE TABLE definitions (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    document   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE sagas (
    id               TEXT    PRIMARY KEY,   -- UUIDv7, hyphenated: sorts by creation time
    tenant_id        TEXT,
    definition       TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    input            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,      -- due time; equals lease_expires_at while leased
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    fencing_token    INTEGER NOT NULL DEFAULT 0,
    previous_owner   TEXT,                  -- lease_owner before the latest claim
    event_seq        INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT    UNIQUE,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER
);

CREATE INDEX sagas_due ON sagas (priority DESC, run_at)
    WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING');
CREATE INDEX sagas_by_status ON sagas (status, id);
CREATE INDEX sagas_by_tenant ON sagas (tenant_id, id);
CREATE INDEX sagas_by_definition ON sagas (definition, id);

CREATE TABLE saga_events (
    saga_id   TEXT    NOT NULL REFERENCES sagas (id),
    seq       INTEGER NOT NULL,
    tenant_id TEXT,
    kind      TEXT    NOT NULL,
    step      TEXT,
    attempt   INTEGER,
    worker    TEXT,
    data      TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
