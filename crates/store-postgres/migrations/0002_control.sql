-- The engine's control surface: cancel requests, wake-ups for parked sagas, saga deadlines,
-- per-key concurrency limits, buffered signals, async-step callbacks, aged priorities.
ALTER TABLE sagas
    ADD COLUMN cancel_requested_at BIGINT,
    ADD COLUMN wake_seq            BIGINT  NOT NULL DEFAULT 0,   -- bumped by every delivery
    ADD COLUMN deadline_at         BIGINT,
    ADD COLUMN concurrency_key     TEXT,
    ADD COLUMN concurrency_limit   INTEGER,
    ADD COLUMN admitted            BOOLEAN NOT NULL DEFAULT FALSE; -- holds a slot of its key

-- Claim order: one priority point is worth 1 s of waiting (saga_store::PRIORITY_STEP_MS), so
-- higher priorities go first without starving older work. Keyed sagas enter only once admitted.
DROP INDEX sagas_due;
CREATE INDEX sagas_due ON sagas ((run_at - priority::bigint * 1000))
    WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND (concurrency_key IS NULL OR admitted);
CREATE INDEX sagas_awaiting_admission ON sagas (concurrency_key, run_at)
    WHERE concurrency_key IS NOT NULL AND NOT admitted AND status = 'PENDING';
CREATE INDEX sagas_running_by_key ON sagas (concurrency_key)
    WHERE admitted AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING');

-- One row per concurrency key: admission locks it, so two instances never admit past the limit.
CREATE TABLE concurrency_keys (
    key TEXT PRIMARY KEY
);

CREATE TABLE saga_signals (
    id          BIGSERIAL PRIMARY KEY,
    saga_id     UUID    NOT NULL,
    tenant_id   TEXT,
    name        TEXT    NOT NULL,
    payload     JSONB   NOT NULL,
    received_at BIGINT  NOT NULL
);
CREATE INDEX saga_signals_by_saga ON saga_signals (saga_id, name, id);

CREATE TABLE saga_callbacks (
    token_hash           TEXT    PRIMARY KEY,   -- sha256 of the single-use token
    saga_id              UUID    NOT NULL,
    tenant_id            TEXT,
    step                 TEXT    NOT NULL,
    attempt              INTEGER NOT NULL,
    heartbeat_timeout_ms BIGINT,
    deadline_at          BIGINT,
    result               JSONB,
    created_at           BIGINT  NOT NULL,
    completed_at         BIGINT
);
CREATE INDEX saga_callbacks_by_attempt ON saga_callbacks (saga_id, step, attempt);
