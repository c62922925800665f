-- 012_console: what the console's deploy defaults and charts need (issue 8).
--
-- An endpoint may ask for one GPU type (gpus.model as the agents report it, e.g.
-- 'NVIDIA H100 80GB HBM3'); the scheduler then places its replicas on GPUs of that type only.
-- NULL: any device of the endpoint's kind (CPU endpoints, and GPU ones made before types).
-- POST /v1/endpoints fills it in from the model's size when the deploy names none (presets.c).
ALTER TABLE endpoints ADD COLUMN gpu_type text;

-- GET /v1/endpoints/{id}/stats reads one endpoint's usage events of the last hour (or days),
-- every few seconds while its page is open: without this it scans every account's events.
CREATE INDEX usage_events_endpoint_at ON usage_events (endpoint_id, at);
