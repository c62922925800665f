-- 015_host_selector: an endpoint may require host labels, like a Kubernetes nodeSelector:
-- {"zone": "eu", "gpu-class": "premium"} places its replicas only on hosts whose labels
-- (hosts.labels, schema 002; set by the agent's --labels or PUT /v1/admin/hosts/{id}/labels)
-- hold every pair. '{}': any host. The API checks names and values (common/labels.c); the CHECK
-- only keeps the shape, as hosts.labels does.
ALTER TABLE endpoints
    ADD COLUMN host_selector jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(host_selector) = 'object');
