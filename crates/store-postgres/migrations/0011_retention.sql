-- Retention: finished sagas are found by when they ended (the partial index holds only the
-- finished ones, so running sagas cost it nothing), and the cleaner runs on one instance at a
-- time, holding a named lease in sagaplane_singletons. Additive: older binaries never read either.
CREATE INDEX sagas_finished ON sagas (completed_at) WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED');

CREATE TABLE sagaplane_singletons (
    name       TEXT   PRIMARY KEY,
    owner      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
