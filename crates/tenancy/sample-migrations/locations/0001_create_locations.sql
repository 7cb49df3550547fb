-- Built-in sample: the location-tracking service.
CREATE TABLE locations (
    id          INTEGER PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    latitude    REAL    NOT NULL,
    longitude   REAL    NOT NULL,
    recorded_at TEXT    NOT NULL
);
