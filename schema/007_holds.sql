-- 007_holds: balance leases. Each gateway process (holder: a random id per process) reserves a
-- chunk of an account's balance here and admits value-billed requests against it in memory, so
-- that concurrent requests, on one gateway or many, can never spend more than the balance (plus
-- the operator's overdraft). Holds are not ledger rows: they move no money, and a crashed
-- gateway's holds lapse at expires_at. Written only by controller/lease.c.
CREATE TABLE holds (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts(id),
    holder         text NOT NULL,
    amount_micros  bigint NOT NULL CHECK (amount_micros >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    UNIQUE (account_id, holder)
);
CREATE INDEX holds_live ON holds (account_id, expires_at);
