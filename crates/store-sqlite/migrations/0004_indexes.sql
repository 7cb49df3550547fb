-- Sagas by concurrency key in id order, for lists filtered by key (a rollout's progress reads
-- its sagas by their key `rollout:<id>`): without it such a list walked the whole table.
CREATE INDEX sagas_by_concurrency_key ON sagas (concurrency_key, id) WHERE concurrency_key IS NOT NULL;
