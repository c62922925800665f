-- 005_accounts: log-in sessions, API key restrictions, idempotency keys and the audit log.

-- A browser session. The cookie carries 256 random bits; only their SHA-256 is stored, so a
-- copy of this table opens no session. expires_at is absolute; last_seen_at drives the idle
-- timeout and is refreshed at most once a minute.
CREATE TABLE sessions (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user ON sessions (user_id);

-- NULL: the key may call every endpoint of its account; else only these (through the gateway).
-- scopes (001): '{}' on keys made before scopes existed means every scope.
ALTER TABLE api_keys ADD COLUMN endpoint_ids uuid[];
CREATE INDEX api_keys_account ON api_keys (account_id);

-- One row per Idempotency-Key: written in the same transaction as the effect it guards, with
-- the reply that effect got, so a retry gets that reply again and a concurrent duplicate waits
-- on the row's unique index instead of doing the effect twice. scope is 'account:<id>', or
-- 'signup:<lower(email)>' before an account exists. request_hash is SHA-256 of method, route
-- and body (signup bodies without the password: a fast hash of a password must not be stored).
CREATE TABLE idempotency_keys (
    scope         text NOT NULL,
    key           text NOT NULL,
    account_id    bigint REFERENCES accounts(id),
    request_hash  text NOT NULL,
    status        integer NOT NULL DEFAULT 0,
    body          text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Every state-changing call on the public API: who (account, user, key), what (method, route
-- pattern, path, object id), when, from where, and the request id of the logs.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    account_id  bigint REFERENCES accounts(id),
    user_id     bigint,
    key_id      bigint,
    method      text NOT NULL,
    route       text NOT NULL,
    path        text NOT NULL,
    object_id   text,
    address     text NOT NULL DEFAULT '',
    request_id  text NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, id);
