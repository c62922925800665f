-- 011: the runtimes' log lines, the replica state 'downloading', and hosts' free disk.
--
-- replica_logs keeps the last lines (LOGS_KEEP_PER_REPLICA in controller/agentapi.c, 2 000) of
-- each replica's stdout and stderr, shipped by its agent with each heartbeat and streamed to the
-- customer by GET /v1/endpoints/{id}/logs (controller/logs.c). id is the event id of the stream:
-- lines of one endpoint are inserted under a per-endpoint advisory lock, so their ids commit in
-- increasing order and a reader that resumes after an id misses none. (replica_id, epoch, stream,
-- pos) is where the line was in the runtime's log: an agent that resends it stores nothing twice.
CREATE TABLE replica_logs (
    id          bigserial PRIMARY KEY,
    replica_id  uuid NOT NULL REFERENCES replicas (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    epoch       bigint NOT NULL,
    stream      text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    pos         bigint NOT NULL CHECK (pos >= 0),
    at          timestamptz NOT NULL,
    line        text NOT NULL,
    UNIQUE (replica_id, epoch, stream, pos)
);
CREATE INDEX replica_logs_endpoint ON replica_logs (endpoint_id, id);
CREATE INDEX replica_logs_replica ON replica_logs (replica_id, id);

-- downloading: the agent fetches the model's weights into its cache before the runtime starts;
-- the reason carries the progress ("downloading weights: 37 %").
ALTER TABLE replicas DROP CONSTRAINT replicas_state_check;
ALTER TABLE replicas ADD CONSTRAINT replicas_state_check
    CHECK (state IN ('pending', 'assigned', 'downloading', 'starting', 'ready', 'failed',
                     'stopping', 'stopped'));

-- What each host's agent says of its weights cache with every heartbeat (docs/contracts.md): the
-- room for a new model, and the models already cached there. The scheduler places a replica whose
-- model must be fetched only on a host with room for it. NULL: not reported (an older agent).
ALTER TABLE host_seen ADD COLUMN disk_free_bytes bigint;
ALTER TABLE host_seen ADD COLUMN cached_models text[] NOT NULL DEFAULT '{}';
