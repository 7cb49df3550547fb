-- Outbound delivery (API.md §7). An event is written in the same transaction as the change it
-- reports, only when an active subscription wants it, together with one delivery per such
-- subscription; dispatchers claim due deliveries like drivers claim sagas.
CREATE TABLE subscriptions (
    id                    TEXT    PRIMARY KEY,
    url                   TEXT,
    nats_url              TEXT,
    nats_subject          TEXT,
    events                TEXT   NOT NULL,
    tenant_id             TEXT,
    status                TEXT    NOT NULL,
    rate_limit_per_s      INTEGER,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,
    previous_secret_until INTEGER,
    created_at            INTEGER  NOT NULL,
    updated_at            INTEGER  NOT NULL
);
CREATE INDEX subscriptions_active ON subscriptions (status, tenant_id);

CREATE TABLE events (
    id         TEXT    PRIMARY KEY,
    type       TEXT    NOT NULL,
    tenant_id  TEXT,
    data       TEXT   NOT NULL,
    created_at INTEGER  NOT NULL
);

CREATE TABLE deliveries (
    id               TEXT    PRIMARY KEY,
    event_id         TEXT    NOT NULL REFERENCES events (id),
    subscription_id  TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    tenant_id        TEXT,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- attempts made before the last replay: the retry schedule starts again from there
    attempts_before_replay INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER  NOT NULL,
    last_error       TEXT,
    created_at       INTEGER  NOT NULL,
    delivered_at     INTEGER,
    lease_owner      TEXT,
    fencing_token    INTEGER  NOT NULL DEFAULT 0,
    UNIQUE (event_id, subscription_id)
);
-- Due deliveries, newest event first; a claimed one is not due again until its lease ends.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_status ON deliveries (status, id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT    NOT NULL,
    n           INTEGER NOT NULL,
    at          INTEGER  NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER  NOT NULL,
    PRIMARY KEY (delivery_id, n)
);
