-- Outbound delivery (API.md §7). An event is written in the same transaction as the change it
-- reports, only when an active subscription wants it, together with one delivery per such
-- subscription; dispatchers claim due deliveries like drivers claim sagas.
CREATE TABLE subscriptions (
    id                    UUID    PRIMARY KEY,
    url                   TEXT,
    nats_url              TEXT,
    nats_subject          TEXT,
    events                JSONB   NOT NULL,
    tenant_id             TEXT,
    status                TEXT    NOT NULL,
    rate_limit_per_s      INTEGER,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,
    previous_secret_until BIGINT,
    created_at            BIGINT  NOT NULL,
    updated_at            BIGINT  NOT NULL
);
CREATE INDEX subscriptions_active ON subscriptions (status, tenant_id);

CREATE TABLE events (
    id         UUID    PRIMARY KEY,
    type       TEXT    NOT NULL,
    tenant_id  TEXT,
    data       JSONB   NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE deliveries (
    id               UUID    PRIMARY KEY,
    event_id         UUID    NOT NULL REFERENCES events (id),
    subscription_id  UUID    NOT NULL,
    event_type       TEXT    NOT NULL,
    tenant_id        TEXT,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- attempts made before the last replay: the retry schedule starts again from there
    attempts_before_replay INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    delivered_at     BIGINT,
    lease_owner      TEXT,
    fencing_token    BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (event_id, subscription_id)
);
-- Due deliveries, newest event first; a claimed one is not due again until its lease ends.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_status ON deliveries (status, id);

CREATE TABLE delivery_attempts (
    delivery_id UUID    NOT NULL,
    n           INTEGER NOT NULL,
    at          BIGINT  NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms BIGINT  NOT NULL,
    PRIMARY KEY (delivery_id, n)
);
