-- Who made a subscription that belongs to a tenant: `managed` when the operator made it for the
-- tenant (the tenant sees it and its deliveries, but only the operator changes it, and its
-- destination is the operator's, checked as the operator's). Additive: older binaries ignore it.
ALTER TABLE subscriptions ADD COLUMN managed BOOLEAN NOT NULL DEFAULT false;
