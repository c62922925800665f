-- 006_enrollment: how hosts join and leave the fleet: one-time enrollment tokens, revoking a
-- host, and draining one (moving its replicas away one at a time before maintenance).

-- A token an operator hands to one new host. Only the SHA-256 of the secret is stored (a copy of
-- this table enrolls nobody); prefix tells tokens apart in listings. A token is good once, until
-- expires_at: register consumes it (used_at, used_by_host) in the same transaction as the
-- registration it allows, so two agents racing with one token cannot both get in.
CREATE TABLE enrollment_tokens (
    id            bigserial PRIMARY KEY,
    token_hash    text NOT NULL UNIQUE,
    prefix        text NOT NULL,
    pool          text,                      -- the pool the host joins; NULL: 'default'
    created_by    bigint REFERENCES users(id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_by_host  bigint REFERENCES hosts(id),
    CHECK ((used_at IS NULL) = (used_by_host IS NULL))
);

-- revoked: an operator removed the host (DELETE /v1/admin/hosts/{id}). Its key no longer
-- matches anything, its replicas were placed elsewhere, and it may come back only with a new
-- enrollment token.
ALTER TABLE hosts DROP CONSTRAINT hosts_state_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_state_check CHECK (state IN ('ready', 'lost', 'revoked'));
ALTER TABLE hosts ADD COLUMN revoked_at timestamptz;

-- draining: the operator asked for the host to be emptied (it is cordoned too). The leader's
-- drain pass moves its replicas one at a time: a replacement is made (replicas.replaces names the
-- replica it takes over from), placed elsewhere, and once it is ready the old one is stopped.
ALTER TABLE hosts ADD COLUMN draining boolean NOT NULL DEFAULT false;
ALTER TABLE replicas ADD COLUMN replaces uuid REFERENCES replicas(id);
CREATE UNIQUE INDEX replicas_one_replacement ON replicas (replaces)
    WHERE replaces IS NOT NULL AND state <> 'stopped';
