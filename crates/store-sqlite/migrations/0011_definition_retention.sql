-- A definition's own `retention:`: each saga keeps it (NULL: the deployment's default), and the
-- cleaner finds finished sagas through two partial indexes, as on PostgreSQL. An older binary's
-- cleaner names the index it knew (INDEXED BY), so this schema is for this binary and newer.
ALTER TABLE sagas ADD COLUMN retention_ms INTEGER;
DROP INDEX sagas_finished;
CREATE INDEX sagas_finished ON sagas (completed_at)
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED') AND retention_ms IS NULL;
CREATE INDEX sagas_finished_own ON sagas (completed_at + retention_ms)
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED') AND retention_ms IS NOT NULL;
