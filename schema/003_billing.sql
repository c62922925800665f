-- 003_billing: prices, ready intervals, and an append-only ledger.
--
-- Time billing charges the seconds a replica is ready x its devices x the device price, closed per
-- billing period (a minute in production); value billing charges tokens at the model's prices.
-- Prices are versioned (effective_at), so any statement can be recomputed from the tables.

CREATE TABLE device_prices (
    id                      bigserial PRIMARY KEY,
    device_kind             text NOT NULL CHECK (device_kind IN ('gpu', 'cpu')),
    micros_per_device_hour  bigint NOT NULL CHECK (micros_per_device_hour >= 0),
    effective_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_kind, effective_at)
);
-- Defaults an operator changes with `orp-controller price set`: 2.00 USD per GPU-hour, and a
-- token amount for development CPU slots so that the path is exercised.
INSERT INTO device_prices (device_kind, micros_per_device_hour, effective_at) VALUES
    ('gpu', 2000000, '2000-01-01'), ('cpu', 36000, '2000-01-01');

CREATE TABLE model_prices (
    id                            bigserial PRIMARY KEY,
    model_id                      bigint NOT NULL REFERENCES models(id),
    input_price_micros_per_mtok   bigint NOT NULL CHECK (input_price_micros_per_mtok >= 0),
    output_price_micros_per_mtok  bigint NOT NULL CHECK (output_price_micros_per_mtok >= 0),
    effective_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_prices_model ON model_prices (model_id, effective_at);
INSERT INTO model_prices (model_id, input_price_micros_per_mtok, output_price_micros_per_mtok,
                          effective_at)
    SELECT id, input_price_micros_per_mtok, output_price_micros_per_mtok, '2000-01-01' FROM models;

-- A model's current token prices are versioned on every change, by the database itself.
CREATE FUNCTION models_price_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR NEW.input_price_micros_per_mtok IS DISTINCT FROM OLD.input_price_micros_per_mtok
       OR NEW.output_price_micros_per_mtok IS DISTINCT FROM OLD.output_price_micros_per_mtok THEN
        INSERT INTO model_prices (model_id, input_price_micros_per_mtok,
                                  output_price_micros_per_mtok, effective_at)
        VALUES (NEW.id, NEW.input_price_micros_per_mtok, NEW.output_price_micros_per_mtok,
                CASE WHEN TG_OP = 'INSERT' THEN '2000-01-01'::timestamptz ELSE now() END);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER models_price_version AFTER INSERT OR UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION models_price_version();

-- When a replica was ready, kept by the database on every state change (a trigger, so no code
-- path can forget it). billed_until: time billing has charged this interval up to there.
CREATE TABLE ready_intervals (
    id            bigserial PRIMARY KEY,
    replica_id    uuid NOT NULL REFERENCES replicas(id),
    epoch         bigint NOT NULL,
    account_id    bigint NOT NULL REFERENCES accounts(id),
    endpoint_id   uuid NOT NULL REFERENCES endpoints(id),
    device_kind   text NOT NULL,
    devices       integer NOT NULL CHECK (devices > 0),
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    billed_until  timestamptz NOT NULL,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX ready_intervals_unbilled ON ready_intervals (billed_until)
    WHERE ended_at IS NULL OR billed_until < ended_at;
CREATE UNIQUE INDEX ready_intervals_open ON ready_intervals (replica_id) WHERE ended_at IS NULL;

CREATE FUNCTION replicas_ready_interval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'ready' AND (NEW.state <> 'ready' OR NEW.epoch <> OLD.epoch) THEN
        UPDATE ready_intervals SET ended_at = clock_timestamp()
         WHERE replica_id = OLD.id AND ended_at IS NULL;
    END IF;
    IF NEW.state = 'ready' AND (OLD.state <> 'ready' OR NEW.epoch <> OLD.epoch) THEN
        INSERT INTO ready_intervals (replica_id, epoch, account_id, endpoint_id, device_kind,
                                     devices, started_at, billed_until)
        SELECT NEW.id, NEW.epoch, NEW.account_id, NEW.endpoint_id, e.device_kind,
               greatest(cardinality(NEW.devices), 1), clock_timestamp(), clock_timestamp()
          FROM endpoints e WHERE e.id = NEW.endpoint_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER replicas_ready_interval AFTER UPDATE OF state, epoch ON replicas
    FOR EACH ROW EXECUTE FUNCTION replicas_ready_interval();

-- The ledger is append-only: corrections are new entries, never edits.
CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

-- What a usage-billed entry was made of, for statements and recomputation.
ALTER TABLE ledger_entries ADD COLUMN endpoint_id uuid REFERENCES endpoints(id);
ALTER TABLE ledger_entries ADD COLUMN period_start timestamptz;
ALTER TABLE ledger_entries ADD COLUMN quantity bigint;      -- device-milliseconds or tokens
ALTER TABLE ledger_entries ADD COLUMN unit text;            -- 'device_ms' | 'tokens'
CREATE INDEX ledger_entries_account_id ON ledger_entries (account_id, id);

CREATE INDEX usage_events_unbilled_created ON usage_events (created_at) WHERE billed_in IS NULL;
