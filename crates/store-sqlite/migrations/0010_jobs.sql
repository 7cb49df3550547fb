-- Bulk jobs: one action on every saga or delivery a filter matched when the job was asked for.
-- The matched ids are written with the job (sagaplane_job_items), each pending until the
-- transaction that acts on it marks it done, so an item is acted on at most once across
-- restarts and instances, as on PostgreSQL. Additive: older binaries never read either table.
CREATE TABLE sagaplane_jobs (
    id          TEXT   PRIMARY KEY,
    kind        TEXT   NOT NULL,          -- sagas | deliveries
    action      TEXT   NOT NULL,
    status      TEXT   NOT NULL,          -- running | succeeded | failed | cancelled
    filter      TEXT   NOT NULL,
    arguments   TEXT,
    tenant_id   TEXT,                     -- a tenant key's job acts only within this tenant
    matched     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX sagaplane_jobs_running ON sagaplane_jobs (created_at) WHERE status = 'running';
CREATE INDEX sagaplane_jobs_finished ON sagaplane_jobs (finished_at) WHERE status <> 'running';

CREATE TABLE sagaplane_job_items (
    job_id      TEXT   NOT NULL,
    item_id     TEXT   NOT NULL,
    state       TEXT   NOT NULL DEFAULT 'pending',   -- pending | done | failed
    error       TEXT,
    finished_at INTEGER,
    PRIMARY KEY (job_id, item_id)
);
CREATE INDEX sagaplane_job_items_pending ON sagaplane_job_items (job_id, item_id) WHERE state = 'pending';
