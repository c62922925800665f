-- 009_admin: what the operator's REST routes manage beyond hosts and credit: suspended accounts,
-- the catalog's descriptive fields and retirement, GPU types with versioned prices, and revoked
-- enrollment tokens.

-- A suspended account's keys and sessions get 403 account_suspended on every listener, and its
-- endpoints were stopped with the reason. NULL: not suspended.
ALTER TABLE accounts
    ADD COLUMN suspended_at    timestamptz,
    ADD COLUMN suspend_reason  text NOT NULL DEFAULT '';

-- Catalog entries: parameter count, a digest of the checkpoint the operator vouches for, the
-- minimum and recommended GPUs per GPU type ({"h100-80gb": {"min": 4, "recommended": 8}}), and
-- retirement: a retired model is no longer shown to customers nor deployable, while what already
-- runs keeps running (endpoints reference models by id).
ALTER TABLE models
    ADD COLUMN parameter_count   bigint CHECK (parameter_count > 0),
    ADD COLUMN sha256            text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN gpu_requirements  jsonb NOT NULL DEFAULT '{}'
                                 CHECK (jsonb_typeof(gpu_requirements) = 'object'),
    ADD COLUMN retired_at        timestamptz,
    ADD COLUMN updated_at        timestamptz NOT NULL DEFAULT now();

-- GPU types the operator rents out (e.g. "h100-80gb"): the NVML model name devices of this type
-- report, their memory, and the device kind placement and time billing use.
CREATE TABLE gpu_types (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    device_kind   text NOT NULL DEFAULT 'gpu' CHECK (device_kind IN ('gpu', 'cpu')),
    model_match   text NOT NULL DEFAULT '',
    memory_mib    bigint NOT NULL DEFAULT 0 CHECK (memory_mib >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A GPU type's price per GPU-hour, versioned like device_prices and model_prices: a change is a
-- new row, never an edit, so any past statement can be recomputed.
CREATE TABLE gpu_type_prices (
    id                    bigserial PRIMARY KEY,
    gpu_type_id           bigint NOT NULL REFERENCES gpu_types(id),
    micros_per_gpu_hour   bigint NOT NULL CHECK (micros_per_gpu_hour >= 0),
    effective_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gpu_type_prices_type ON gpu_type_prices (gpu_type_id, effective_at);

CREATE FUNCTION gpu_type_prices_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'gpu_type_prices is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER gpu_type_prices_append_only BEFORE UPDATE OR DELETE ON gpu_type_prices
    FOR EACH ROW EXECUTE FUNCTION gpu_type_prices_append_only();

-- An enrollment token an operator took back before it was used (its expires_at is moved to the
-- revocation time too, so registration refuses it like an expired one).
ALTER TABLE enrollment_tokens ADD COLUMN revoked_at timestamptz;

-- Cursor pagination of an account's endpoints (created_at, id).
CREATE INDEX endpoints_account_created ON endpoints (account_id, created_at, id);
