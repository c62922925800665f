-- 010_spend_cap_shared: the monthly spend cap, and shared value-billed endpoints.

-- What an account was charged for usage (time and tokens) in the current calendar month, UTC:
-- the ledger's usage entries written since the month began. Credits and adjustments do not
-- count. The spend cap (quotas.monthly_spend_cap_micros) is compared with this, plus what is
-- used but not billed yet (controller/lease.c adds unbilled value usage and live holds).
CREATE FUNCTION account_month_spend(acct bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(-sum(amount_micros), 0)::bigint FROM ledger_entries
     WHERE account_id = acct AND kind IN ('usage_time', 'usage_value')
       AND at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- The account's monthly spend cap: its own quotas row, else the defaults; NULL: no cap.
CREATE FUNCTION account_spend_cap(acct bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT monthly_spend_cap_micros FROM quotas
     WHERE account_id = acct OR account_id IS NULL
     ORDER BY account_id NULLS LAST LIMIT 1
$$;

CREATE INDEX ledger_entries_account_at ON ledger_entries (account_id, at);

-- A shared endpoint is run by the operator (value-billed) and callable by any account's key by
-- its name; the caller pays. Shared names are unique among live shared endpoints, so a name
-- resolves to one of them.
ALTER TABLE endpoints ADD COLUMN shared boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX endpoints_shared_name ON endpoints (name) WHERE shared AND state <> 'deleted';
ALTER TABLE endpoints ADD CONSTRAINT endpoints_shared_value CHECK (NOT shared OR billing_mode = 'value');

-- The payer of a request to a shared endpoint is the caller, whom only the gateway knows: it
-- makes such request ids as req_<24 hex>_a<caller's account id> (runtimes accept only requests
-- from the gateway, which presents their secret). When the usage event arrives, the caller
-- becomes its account, so metering, leases and the usage reads charge and show it to the caller
-- with no other change. Other endpoints' events keep the endpoint owner's account.
CREATE FUNCTION usage_events_payer() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payer bigint;
BEGIN
    IF NEW.request_id ~ '^req_[0-9a-f]{24}_a[0-9]{1,18}$'
       AND EXISTS (SELECT 1 FROM endpoints WHERE id = NEW.endpoint_id AND shared) THEN
        payer := substring(NEW.request_id FROM '_a([0-9]+)$')::bigint;
        IF EXISTS (SELECT 1 FROM accounts WHERE id = payer) THEN
            NEW.account_id := payer;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER usage_events_payer BEFORE INSERT ON usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_events_payer();
