-- Built-in sample: the accounts service's first table. Portable SQL (PostgreSQL and SQLite);
-- tenant_id lets the same file serve pooled tenants under row-level security.
CREATE TABLE accounts (
    id        INTEGER PRIMARY KEY,
    tenant_id TEXT    NOT NULL,
    name      TEXT    NOT NULL
);
