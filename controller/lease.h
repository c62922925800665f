/* lease: balance leases for value-billed requests (issue 7).
 *
 * Purpose: a gateway process admits requests to value-billed endpoints against a chunk of the
 * account's balance that it reserved in the `holds` table (one row per account and holder; this
 * module is the only writer of that table). Each request reserves its maximum cost in memory;
 * the request path touches the database only when the lease has no room left (and then at most
 * once per LEASE_SHORT_MS per account while the balance stays short). A background thread renews
 * the holds before they expire, tops them up when they run low, settles finished requests once
 * their usage events are in the database (their cost is then counted from there), and releases
 * idle holds; lease_free() releases all of this process's holds. A crashed process's holds lapse
 * at their expiry (--lease-ttl-s).
 *
 * The amount a holder may hold = sum(ledger) − unbilled value usage (priced exactly as metering
 * will price it) − other holders' live holds + the operator's overdraft, and, when the account
 * has a monthly spend cap, at most cap − this month's usage charges − unbilled value usage −
 * other holders' live holds; computed and written in one transaction that locks the account's
 * row, so that holders of one account serialize.
 * A reservation leaves this process's hold only once its cost is visible in the usage events (or
 * the request certainly never reached a runtime), so the sum of holds plus the database's view
 * never undercounts what was admitted. */
#ifndef ORP_LEASE_H
#define ORP_LEASE_H

#include <stdint.h>

struct lease;

struct lease_config {
    const char *database_url;
    int64_t ttl_s;            /* a hold lapses this long after its last renewal */
    int64_t chunk_micros;     /* room asked for beyond what is reserved */
    int64_t overdraft_micros; /* how far below zero admitted requests may take a balance */
    int64_t billing_period_s; /* metering's period: unbilled usage is priced per period */
};

/* NULL on failure (out of memory). Starts the lease thread. */
struct lease *lease_new(const struct lease_config *cfg);
/* Stops the thread and deletes this holder's holds. Accepts NULL. */
void lease_free(struct lease *l);

enum lease_rc { LEASE_OK = 0, LEASE_SHORT = 1, LEASE_CAP = 2, LEASE_DB = -1 };

/* Reserves max_cost for request_id of account_id: LEASE_OK, LEASE_SHORT (the balance cannot
 * cover it: answer 402), LEASE_CAP (the account's monthly spend cap cannot: 402 too), or
 * LEASE_DB (the database could not be asked: answer 503). */
enum lease_rc lease_admit(struct lease *l, int64_t account_id, const char *request_id,
                          int64_t max_cost);

/* The request ended. actual_cost: its cost when the reply carried usage, else -1 (the whole
 * maximum stays reserved until its usage event arrives). not_sent: no runtime ever received it
 * (its reservation is returned at once). */
void lease_end(struct lease *l, int64_t account_id, const char *request_id, int64_t actual_cost,
               int not_sent);

/* ceil((prompt_tokens × in + completion_tokens × out) / 10^6), saturating. */
int64_t lease_cost(int64_t prompt_tokens, int64_t completion_tokens, int64_t in_price,
                   int64_t out_price);

#endif
