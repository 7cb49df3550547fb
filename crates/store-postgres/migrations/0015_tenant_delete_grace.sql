-- A tenant deleted with a grace period stays SUSPENDED until `delete_at` (Unix ms), when its
-- deprovision saga's timer destroys its storage; a restore within the grace clears it. Additive:
-- an older binary never reads it.
ALTER TABLE tenants ADD COLUMN delete_at BIGINT;
