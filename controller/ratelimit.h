/* ratelimit: request rate limits per account, in memory, by GCRA (the generic cell rate
 * algorithm: a token bucket kept as one timestamp per key). Each gateway process enforces the
 * limits on its own, so N gateways behind a load balancer admit up to N times the rate; an
 * operator running several divides the configured rates accordingly (documented in
 * docs/architecture.md). No database access: the request path stays free of commits. */
#ifndef ORP_RATELIMIT_H
#define ORP_RATELIMIT_H

#include <stdint.h>

struct rl_table;

struct rl_result {
    int64_t limit;       /* requests per minute */
    int64_t remaining;   /* further requests admissible right now */
    int64_t reset_s;     /* seconds until the bucket is full again */
    int64_t retry_after; /* seconds to wait when refused */
};

struct rl_table *rl_new(void);
void rl_free(struct rl_table *t); /* accepts NULL */

/* Admits one request for key at now_us (a monotonic clock in microseconds) under rate_per_min
 * with burst requests allowed at once. 1 admitted, 0 refused; out filled either way. */
int rl_admit(struct rl_table *t, int64_t key, int64_t now_us, int64_t rate_per_min, int64_t burst,
             struct rl_result *out);

#endif
