/* ratelimit: request and token rate limits per account, in memory, by GCRA (the generic cell
 * rate algorithm: a token bucket kept as one timestamp per key). Each gateway process enforces the
 * limits on its own, so N gateways behind a load balancer admit up to N times the rate; an
 * operator running several divides the configured rates accordingly (documented in
 * docs/architecture.md). No database access: the request path stays free of commits. */
#ifndef ORP_RATELIMIT_H
#define ORP_RATELIMIT_H

#include <stdint.h>

struct rl_table;

struct rl_result {
    int64_t limit;       /* requests (or tokens) per minute */
    int64_t remaining;   /* further requests (tokens) admissible right now */
    int64_t reset_s;     /* seconds until the bucket is full again */
    int64_t retry_after; /* seconds to wait when refused */
};

struct rl_table *rl_new(void);
void rl_free(struct rl_table *t); /* accepts NULL */

/* Admits one request for key at now_us (a monotonic clock in microseconds) under rate_per_min
 * with burst requests allowed at once. 1 admitted, 0 refused; out filled either way. */
int rl_admit(struct rl_table *t, int64_t key, int64_t now_us, int64_t rate_per_min, int64_t burst,
             struct rl_result *out);

/* Tokens per minute: a bucket of tokens_per_min tokens that refills over a minute. Charges
 * `tokens` (a request's most) for key at now_us: 1 admitted, 0 refused (also when tokens is more
 * than the whole bucket: out->retry_after is then 0, as waiting does not help); out filled either
 * way. A key's requests and tokens must use distinct keys of one table, or two tables. */
int rl_charge(struct rl_table *t, int64_t key, int64_t now_us, int64_t tokens_per_min,
              int64_t tokens, struct rl_result *out);

/* Gives back tokens charged by rl_charge that the request did not use (its settlement). */
void rl_refund(struct rl_table *t, int64_t key, int64_t now_us, int64_t tokens_per_min,
               int64_t tokens);

#endif
