-- When a subscription's attempts started failing with no success since (NULL: its last attempt
-- succeeded, or none failed): a subscription failing for SAGAPLANE_DELIVERY_DISABLE_AFTER is
-- disabled. Partial index: the sweep looks at failing active subscriptions only.
ALTER TABLE subscriptions ADD COLUMN failing_since BIGINT;
CREATE INDEX subscriptions_failing ON subscriptions (failing_since) WHERE status = 'active' AND failing_since IS NOT NULL;
