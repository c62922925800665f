-- 004_quotas: per-account limits, and stopping what an account can no longer pay for.

-- The row with account_id NULL holds the defaults; an account's own row, when present, replaces
-- them whole. NULL in a column means "no limit".
CREATE TABLE quotas (
    id                        bigserial PRIMARY KEY,
    account_id                bigint REFERENCES accounts(id),
    max_devices               integer CHECK (max_devices >= 0),
    max_endpoints             integer CHECK (max_endpoints >= 0),
    requests_per_min          integer CHECK (requests_per_min > 0),
    requests_burst            integer NOT NULL DEFAULT 1 CHECK (requests_burst > 0),
    monthly_spend_cap_micros  bigint CHECK (monthly_spend_cap_micros >= 0),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX quotas_account ON quotas (COALESCE(account_id, 0));
INSERT INTO quotas (account_id, max_devices, max_endpoints, requests_per_min, requests_burst)
    VALUES (NULL, 16, 10, 600, 60);

-- Since when an account's balance has been below zero (NULL: it is not); kept by the leader.
ALTER TABLE accounts ADD COLUMN overdrawn_since timestamptz;

-- An endpoint can be stopped (by its owner, or for lack of credit) and started again.
ALTER TABLE endpoints DROP CONSTRAINT endpoints_state_check;
ALTER TABLE endpoints ADD CONSTRAINT endpoints_state_check
    CHECK (state IN ('active', 'stopped', 'deleted'));
ALTER TABLE endpoints ADD COLUMN state_reason text NOT NULL DEFAULT '';
