-- 013: the endpoint page's traffic series (GET /v1/endpoints/{id}/stats) reads one endpoint's
-- usage events over a time range; without this index it scans every account's events
-- (ops/bench/console-stats: 5.5 requests/s without it, 1 395 with it, on 1 M events).
CREATE INDEX usage_events_endpoint_at ON usage_events (endpoint_id, at);
