-- 001_init: the first tables. Money is bigint micro-units (1 USD = 1 000 000), named *_micros.
-- Every row a customer can reach carries account_id; every API query filters by it.

CREATE TABLE accounts (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- role: 'admin' is the operator; 'owner' | 'member' are roles within a customer account.
CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts(id),
    email          text NOT NULL,
    password_hash  text,                       -- argon2id encoded; NULL until a password is set
    role           text NOT NULL CHECK (role IN ('admin', 'owner', 'member')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Only the SHA-256 of each key's secret is stored; prefix is shown to people to tell keys apart.
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts(id),
    user_id       bigint REFERENCES users(id),
    name          text NOT NULL DEFAULT '',
    prefix        text NOT NULL,
    secret_hash   text NOT NULL UNIQUE,
    scopes        text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

-- The operator's catalog. source is a checkpoint directory present on every host for now
-- (a weights cache that fetches by manifest comes later).
CREATE TABLE models (
    id                          bigserial PRIMARY KEY,
    name                        text NOT NULL UNIQUE,
    family                      text NOT NULL,
    source                      text NOT NULL,
    context_length              integer NOT NULL CHECK (context_length > 0),
    min_devices                 integer NOT NULL DEFAULT 1 CHECK (min_devices > 0),
    device_kinds                text[] NOT NULL DEFAULT '{gpu}',
    input_price_micros_per_mtok  bigint NOT NULL DEFAULT 0 CHECK (input_price_micros_per_mtok >= 0),
    output_price_micros_per_mtok bigint NOT NULL DEFAULT 0 CHECK (output_price_micros_per_mtok >= 0),
    created_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosts (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    address        text NOT NULL,
    key_hash       text NOT NULL,
    agent_version  text NOT NULL DEFAULT '',
    pool           text NOT NULL DEFAULT 'default',
    state          text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'lost')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Narrow on purpose: heartbeats rewrite only this row, never the wide hosts row.
CREATE TABLE host_seen (
    host_id  bigint PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    seen_at  timestamptz NOT NULL
);

-- Devices a host offers. kind 'cpu' rows are development CPU slots, labelled as such everywhere.
CREATE TABLE gpus (
    id          bigserial PRIMARY KEY,
    host_id     bigint NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    uuid        text NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('gpu', 'cpu')),
    model       text NOT NULL DEFAULT '',
    memory_mib  bigint NOT NULL DEFAULT 0,
    healthy     boolean NOT NULL DEFAULT true
);
CREATE INDEX gpus_host ON gpus (host_id);

CREATE TABLE endpoints (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id        bigint NOT NULL REFERENCES accounts(id),
    name              text NOT NULL,
    model_id          bigint NOT NULL REFERENCES models(id),
    device_kind       text NOT NULL CHECK (device_kind IN ('gpu', 'cpu')),
    gpus_per_replica  integer NOT NULL CHECK (gpus_per_replica BETWEEN 1 AND 8),
    replicas          integer NOT NULL CHECK (replicas BETWEEN 1 AND 16),
    billing_mode      text NOT NULL DEFAULT 'time' CHECK (billing_mode IN ('time', 'value')),
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'deleted')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);
CREATE UNIQUE INDEX endpoints_live_name ON endpoints (account_id, name) WHERE state <> 'deleted';

-- Every placement gets a new epoch from this sequence; reports, routing and billing check it.
CREATE SEQUENCE replica_epochs;

-- state: pending (no host) -> assigned (host + devices + epoch chosen) -> starting -> ready;
-- failed (the agent restarts it); stopping (not wanted; the agent stops it) -> stopped.
CREATE TABLE replicas (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id  uuid NOT NULL REFERENCES endpoints(id),
    account_id   bigint NOT NULL REFERENCES accounts(id),
    ordinal      integer NOT NULL,
    epoch        bigint NOT NULL DEFAULT 0,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'assigned', 'starting', 'ready', 'failed', 'stopping', 'stopped')),
    reason       text NOT NULL DEFAULT '',
    host_id      bigint REFERENCES hosts(id),
    devices      text[] NOT NULL DEFAULT '{}',
    port         integer,
    secret       text NOT NULL DEFAULT '',       -- set by the scheduler at each placement
    restarts     integer NOT NULL DEFAULT 0,
    ready_at     timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replicas_endpoint ON replicas (endpoint_id);
CREATE INDEX replicas_host_live ON replicas (host_id) WHERE state <> 'stopped';

-- request_id is made by the gateway; UNIQUE makes storing a usage report idempotent.
CREATE TABLE usage_events (
    id                 bigserial PRIMARY KEY,
    request_id         text NOT NULL UNIQUE,
    account_id         bigint NOT NULL REFERENCES accounts(id),
    endpoint_id        uuid NOT NULL REFERENCES endpoints(id),
    replica_id         uuid NOT NULL REFERENCES replicas(id),
    epoch              bigint NOT NULL,
    prompt_tokens      integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  integer NOT NULL CHECK (completion_tokens >= 0),
    finish_reason      text NOT NULL DEFAULT '',
    at                 timestamptz NOT NULL,
    billed_in          text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_unbilled ON usage_events (id) WHERE billed_in IS NULL;

CREATE TABLE ledger_entries (
    id               bigserial PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts(id),
    amount_micros    bigint NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('credit', 'usage_time', 'usage_value', 'adjustment')),
    idempotency_key  text NOT NULL UNIQUE,
    memo             text NOT NULL DEFAULT '',
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id);
