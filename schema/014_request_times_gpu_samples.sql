-- 014: what the console charts beyond counts.
--
-- usage_events: the runtime's time to first token and whole duration of each request, in
-- milliseconds with microsecond digits (the runtime's usage journal). NULL for events stored before
-- this migration, from runtimes that predate the fields, and ttft_ms for a request cancelled before
-- its first token. They feed GET /v1/endpoints/{id}/stats; billing never reads them.
ALTER TABLE usage_events
    ADD COLUMN ttft_ms      double precision CHECK (ttft_ms >= 0),
    ADD COLUMN duration_ms  double precision CHECK (duration_ms >= 0);

-- gpu_samples: the latest reading of each GPU the agent sends on its heartbeats (NVML
-- utilization, memory in use, die temperature), one narrow row per GPU so a heartbeat rewrites
-- neither `gpus` (inventory, written only when it changes) nor any wide row. A column is NULL when
-- the GPU cannot give that reading. The row goes with its GPU.
CREATE TABLE gpu_samples (
    gpu_id               bigint PRIMARY KEY REFERENCES gpus(id) ON DELETE CASCADE,
    utilization_percent  smallint CHECK (utilization_percent BETWEEN 0 AND 100),
    memory_used_mib      bigint CHECK (memory_used_mib >= 0),
    temperature_c        smallint CHECK (temperature_c BETWEEN -100 AND 200),
    sampled_at           timestamptz NOT NULL
);
