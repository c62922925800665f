-- 017_tokens_per_min: a per-account limit on tokens per minute, enforced by the gateway.

-- The tokens a request may use (its prompt, estimated from above, plus max_tokens) are charged
-- at admission against a bucket of tokens_per_min tokens refilling over a minute, and what the
-- reply shows it did not use is given back (controller/ratelimit.c). NULL: no limit; the
-- defaults row keeps NULL.
ALTER TABLE quotas ADD COLUMN tokens_per_min integer CHECK (tokens_per_min > 0);
