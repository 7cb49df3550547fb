-- The engine's control surface (see the PostgreSQL migration of the same number).
ALTER TABLE sagas ADD COLUMN cancel_requested_at INTEGER;
ALTER TABLE sagas ADD COLUMN wake_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sagas ADD COLUMN deadline_at INTEGER;
ALTER TABLE sagas ADD COLUMN concurrency_key TEXT;
ALTER TABLE sagas ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE sagas ADD COLUMN admitted INTEGER NOT NULL DEFAULT 0;

DROP INDEX sagas_due;
CREATE INDEX sagas_due ON sagas ((run_at - priority * 1000))
    WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND (concurrency_key IS NULL OR admitted);
CREATE INDEX sagas_awaiting_admission ON sagas (concurrency_key, run_at)
    WHERE concurrency_key IS NOT NULL AND NOT admitted AND status = 'PENDING';
CREATE INDEX sagas_running_by_key ON sagas (concurrency_key)
    WHERE admitted AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING');

CREATE TABLE saga_signals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id     TEXT    NOT NULL,
    tenant_id   TEXT,
    name        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX saga_signals_by_saga ON saga_signals (saga_id, name, id);

CREATE TABLE saga_callbacks (
    token_hash           TEXT    PRIMARY KEY,
    saga_id              TEXT    NOT NULL,
    tenant_id            TEXT,
    step                 TEXT    NOT NULL,
    attempt              INTEGER NOT NULL,
    heartbeat_timeout_ms INTEGER,
    deadline_at          INTEGER,
    result               TEXT,
    created_at           INTEGER NOT NULL,
    completed_at         INTEGER
);
CREATE INDEX saga_callbacks_by_attempt ON saga_callbacks (saga_id, step, attempt);
