-- An event may expire (`core.emit` with `expires_at`): a delivery still pending then is dead
-- instead of sent, e.g. a location update of a tracking session that has ended.
ALTER TABLE events ADD COLUMN expires_at BIGINT;
