-- When a subscription's attempts started failing with no success since (NULL: its last attempt
-- succeeded, or none failed): a subscription failing for SAGAPLANE_DELIVERY_DISABLE_AFTER is
-- disabled.
ALTER TABLE subscriptions ADD COLUMN failing_since INTEGER;
