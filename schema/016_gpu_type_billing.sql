-- 016_gpu_type_billing: time billing charges a replica's ready seconds x GPUs x the price of the
-- GPU type of the devices it actually holds (gpu_type_prices, versioned), falling back to the
-- device kind's price (device_prices) where a device has no priced type: CPU slots, models no
-- gpu_types row matches. Billing by the devices held, not by endpoints.gpu_type (which is NULL
-- for "any GPU" and is the customer's request), is what cannot be gamed: an endpoint without a
-- type placed on an H200 pays for the H200.

-- The GPU type of a device: the oldest type of its kind whose model_match is the device's model
-- as its agent reports it (gpus.model). NULL: none.
CREATE FUNCTION gpu_type_of(kind text, model text) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT id FROM gpu_types
     WHERE device_kind = kind AND model_match = model AND model_match <> ''
     ORDER BY id LIMIT 1
$$;

-- Micro-units per device-hour at time t: the type's price version in force at t, else the device
-- kind's. NULL: neither has a price at t.
CREATE FUNCTION device_price_at(kind text, type_id bigint, t timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT micros_per_gpu_hour FROM gpu_type_prices
          WHERE gpu_type_id = type_id AND effective_at <= t
          ORDER BY effective_at DESC, id DESC LIMIT 1),
        (SELECT micros_per_device_hour FROM device_prices
          WHERE device_kind = kind AND effective_at <= t
          ORDER BY effective_at DESC LIMIT 1))
$$;

-- A ready interval is now per (replica, GPU type): a replica holding devices of two types (any
-- GPU on a mixed host) has one open row per type. The type is fixed when the interval opens, so
-- an operator editing a type's model_match later reprices nothing already ready. Intervals open
-- at this migration keep NULL (the kind price) until their replica is next ready.
ALTER TABLE ready_intervals ADD COLUMN gpu_type_id bigint REFERENCES gpu_types(id);
DROP INDEX ready_intervals_open;
CREATE UNIQUE INDEX ready_intervals_open ON ready_intervals (replica_id, COALESCE(gpu_type_id, 0))
    WHERE ended_at IS NULL;

CREATE OR REPLACE FUNCTION replicas_ready_interval() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
BEGIN
    IF OLD.state = 'ready' AND (NEW.state <> 'ready' OR NEW.epoch <> OLD.epoch) THEN
        UPDATE ready_intervals SET ended_at = t WHERE replica_id = OLD.id AND ended_at IS NULL;
    END IF;
    IF NEW.state = 'ready' AND (OLD.state <> 'ready' OR NEW.epoch <> OLD.epoch) THEN
        INSERT INTO ready_intervals (replica_id, epoch, account_id, endpoint_id, device_kind,
                                     gpu_type_id, devices, started_at, billed_until)
        SELECT NEW.id, NEW.epoch, NEW.account_id, NEW.endpoint_id, e.device_kind, d.type_id,
               d.n, t, t
          FROM endpoints e CROSS JOIN LATERAL (
                 SELECT gpu_type_of(g.kind, g.model) AS type_id, count(*)::int AS n
                   FROM unnest(NEW.devices) u LEFT JOIN gpus g ON g.uuid = u
                  GROUP BY 1
                 UNION ALL SELECT NULL, 1 WHERE cardinality(NEW.devices) = 0) d
         WHERE e.id = NEW.endpoint_id;
    END IF;
    RETURN NEW;
END $$;

-- The GPU type a time charge was priced for (its name; names never change), for statements.
ALTER TABLE ledger_entries ADD COLUMN gpu_type text;
