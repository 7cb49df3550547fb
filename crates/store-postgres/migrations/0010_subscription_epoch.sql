-- A counter every change to which subscriptions want what moves (a row added or removed, or its
-- status, filters or tenant changed), in the same transaction as the change: an instance matches
-- events to subscriptions in Rust over the active ones it read at some epoch, and its commit
-- writes only while the epoch is still that one (else it reads them again and commits anew).
-- Additive: older binaries match in SQL and never read it; their subscription changes move it
-- through the trigger.
CREATE TABLE subscription_epoch (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    epoch BIGINT NOT NULL
);
INSERT INTO subscription_epoch (one, epoch) VALUES (true, 1);

CREATE FUNCTION sagaplane_subscription_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subscription_epoch SET epoch = epoch + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscription_epoch_bump
    AFTER INSERT OR DELETE OR UPDATE OF status, events, tenant_id ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION sagaplane_subscription_epoch_bump();
