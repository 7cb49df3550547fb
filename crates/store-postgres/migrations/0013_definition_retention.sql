-- A definition's own `retention:`: each saga keeps it (NULL: the deployment's default), and the
-- cleaner finds finished sagas through two partial indexes, those on the default by finish time
-- and those with their own by when it ends. Additive: an older binary's cleaner would treat
-- every saga on the default retention (it knows no `retention:`).
ALTER TABLE sagas ADD COLUMN retention_ms BIGINT;
DROP INDEX sagas_finished;
CREATE INDEX sagas_finished ON sagas (completed_at)
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED') AND retention_ms IS NULL;
CREATE INDEX sagas_finished_own ON sagas ((completed_at + retention_ms))
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED') AND retention_ms IS NOT NULL;
