/* lease: see lease.h. */
#include "lease.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "log.h"
#include "util.h"

#define LEASE_TICK_MS 250
#define LEASE_SHORT_MS 250    /* a short account asks the database again after this */
#define LEASE_IDLE_MS 3000    /* an account unused this long, with nothing pending, is released */
#define LEASE_SETTLE_MAX 1000 /* request ids looked up per query */

struct pend {
    char rid[64]; /* request ids are at most 4 + 24 + 2 + 19 characters */
    int64_t amount;
    int64_t ended_ms; /* 0 while the request runs */
};

/* An account this process holds (or held) a lease for. Never freed while the lease lives, so
 * that a pointer found under mu stays valid after it is released. */
struct lacct {
    int64_t id;
    int64_t granted; /* the amount of our row in holds (what requests may reserve up to) */
    int64_t used;    /* sum of the reservations in pend */
    int64_t short_until_ms;
    int64_t renew_at_ms;
    int64_t last_use_ms;
    int want;      /* the request path asked for a top-up */
    int cap_bound; /* the last refresh was bounded by the monthly spend cap */
    int has_hold;  /* our row exists */
    struct pend *pend;
    size_t npend, cap;
    struct lacct *next;
};

struct lease {
    struct lease_config cfg;
    char holder[33];
    char *url;
    struct db_pool *pool;
    pthread_mutex_t mu;    /* the in-memory state */
    pthread_mutex_t db_mu; /* one refresh at a time: a refresh reads and writes granted */
    pthread_cond_t cv;
    pthread_t th;
    int stop, started;
    struct lacct *accts;
};

int64_t lease_cost(int64_t pt, int64_t ct, int64_t in, int64_t out)
{
    if (pt < 0) pt = 0;
    if (ct < 0) ct = 0;
    if (in < 0) in = 0;
    if (out < 0) out = 0;
    const int64_t max = INT64_MAX / 4;
    if ((in && pt > max / in) || (out && ct > max / out)) return max / 1000000;
    int64_t s = pt * in + ct * out;
    return s / 1000000 + (s % 1000000 != 0);
}

/* Called with mu held. */
static struct lacct *find(struct lease *l, int64_t id, int add)
{
    for (struct lacct *a = l->accts; a; a = a->next)
        if (a->id == id) return a;
    if (!add) return NULL;
    struct lacct *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->id = id;
    a->next = l->accts;
    l->accts = a;
    return a;
}

/* Called with mu held. */
static int pend_add(struct lacct *a, const char *rid, int64_t amount)
{
    if (a->npend == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        struct pend *p = realloc(a->pend, cap * sizeof *p);
        if (!p) return -1;
        a->pend = p;
        a->cap = cap;
    }
    struct pend *p = &a->pend[a->npend++];
    snprintf(p->rid, sizeof p->rid, "%s", rid);
    p->amount = amount;
    p->ended_ms = 0;
    a->used += amount;
    return 0;
}

/* Called with mu held. */
static void pend_drop(struct lacct *a, size_t i)
{
    a->used -= a->pend[i].amount;
    if (a->used < 0) a->used = 0;
    a->pend[i] = a->pend[--a->npend];
}

struct refresh {
    struct lease *l;
    int64_t account_id, target, floor, amount;
    int cap_bound; /* the spend cap, not the balance, bounded what may be held */
};

/* In one transaction: lock the account's row (holders of one account serialize here), compute
 * what this holder may hold, write it. */
static enum db_status refresh_txn(PGconn *c, void *arg)
{
    struct refresh *rf = arg;
    char acct[24], period[32], ttl[24], od[24];
    snprintf(acct, sizeof acct, "%lld", (long long)rf->account_id);
    snprintf(period, sizeof period, "%lld seconds", (long long)rf->l->cfg.billing_period_s);
    snprintf(ttl, sizeof ttl, "%lld", (long long)rf->l->cfg.ttl_s);
    snprintf(od, sizeof od, "%lld", (long long)rf->l->cfg.overdraft_micros);
    const char *p1[] = {acct};
    enum db_status st = db_cmd(c, "SELECT 1 FROM accounts WHERE id = $1::bigint FOR UPDATE", 1, p1);
    if (st < 0) return st;
    if (st == DB_NONE) {
        rf->amount = rf->floor;
        return DB_NONE;
    }
    /* Unbilled value usage is priced exactly as metering will price it: per (endpoint, period
     * of arrival) at the price in force at the period's start, rounded up. */
    const char *p2[] = {acct, rf->l->holder, period, od};
    PGresult *r;
    /* The monthly spend cap (quotas.monthly_spend_cap_micros, NULL: none) bounds the hold the
     * same way: cap - this month's charges - unbilled usage - other holds. */
    st = db_exec(c,
                 "WITH s AS (SELECT u.endpoint_id, e.model_id, "
                 "    date_bin($3::interval, u.created_at, timestamptz 'epoch') AS ps, "
                 "    sum(u.prompt_tokens) AS pt, sum(u.completion_tokens) AS ct "
                 "  FROM usage_events u JOIN endpoints e ON e.id = u.endpoint_id "
                 "  WHERE u.account_id = $1::bigint AND u.billed_in IS NULL "
                 "    AND e.billing_mode = 'value' GROUP BY 1, 2, 3), "
                 "un AS (SELECT COALESCE(sum(ceil((s.pt * p.i + s.ct * p.o) / 1000000.0)), 0) "
                 "         AS v FROM s CROSS JOIN LATERAL (SELECT "
                 "       mp.input_price_micros_per_mtok AS i, "
                 "       mp.output_price_micros_per_mtok AS o FROM model_prices mp "
                 "       WHERE mp.model_id = s.model_id AND mp.effective_at <= s.ps "
                 "       ORDER BY mp.effective_at DESC LIMIT 1) p), "
                 "oh AS (SELECT COALESCE(sum(amount_micros), 0) AS v FROM holds "
                 "     WHERE account_id = $1::bigint AND holder <> $2 AND expires_at > now()) "
                 "SELECT (SELECT COALESCE(sum(amount_micros), 0) FROM ledger_entries "
                 "         WHERE account_id = $1::bigint) - un.v - oh.v + $4::bigint, "
                 "  account_spend_cap($1::bigint) - account_month_spend($1::bigint) "
                 "    - un.v - oh.v "
                 "FROM un, oh",
                 4, p2, &r, NULL);
    if (st < 0) return st;
    int64_t avail = db_int(r, 0, 0);
    rf->cap_bound = 0;
    if (!PQgetisnull(r, 0, 1) && db_int(r, 0, 1) < avail) {
        avail = db_int(r, 0, 1);
        rf->cap_bound = 1;
    }
    PQclear(r);
    int64_t amount = avail < rf->target ? avail : rf->target;
    if (amount < rf->floor) amount = rf->floor; /* already admitted: keep it counted */
    if (amount < 0) amount = 0;
    rf->amount = amount;
    char am[24];
    snprintf(am, sizeof am, "%lld", (long long)amount);
    const char *p3[] = {acct, rf->l->holder, am, ttl};
    if (amount == 0)
        st = db_cmd(c, "DELETE FROM holds WHERE account_id = $1::bigint AND holder = $2", 2, p3);
    else
        st = db_cmd(c,
                    "INSERT INTO holds (account_id, holder, amount_micros, expires_at) "
                    "VALUES ($1::bigint, $2, $3::bigint, now() + $4::bigint * interval '1 second') "
                    "ON CONFLICT (account_id, holder) DO UPDATE SET "
                    "  amount_micros = EXCLUDED.amount_micros, expires_at = EXCLUDED.expires_at",
                    4, p3);
    if (st < 0) return st;
    /* Lapsed holds of crashed holders are dead weight: drop them. */
    st = db_cmd(c,
                "DELETE FROM holds WHERE account_id = $1::bigint AND expires_at < now() - "
                "interval '1 minute'",
                1, p1);
    return st < 0 ? st : DB_ROWS;
}

/* Recomputes a's hold, asking for `need` of room beyond what is reserved. Called with db_mu
 * held (not mu). While the transaction runs, requests may reserve only up to `floor`, which the
 * written amount never goes below; so the row always covers what was admitted. 0 or -1. */
static int refresh(struct lease *l, struct lacct *a, int64_t need, int release)
{
    pthread_mutex_lock(&l->mu);
    int64_t room = need > l->cfg.chunk_micros ? 2 * need : l->cfg.chunk_micros;
    struct refresh rf = {l, a->id, release ? a->used : a->used + room, 0, 0, 0};
    rf.floor = a->granted < rf.target ? a->granted : rf.target;
    a->granted = rf.floor;
    a->want = 0;
    pthread_mutex_unlock(&l->mu);
    PGconn *c = db_acquire(l->pool);
    enum db_status st = c ? db_txn_run(c, refresh_txn, &rf) : DB_HARD;
    if (c) db_release(l->pool, c);
    pthread_mutex_lock(&l->mu);
    if (st >= 0) {
        a->granted = rf.amount;
        a->has_hold = rf.amount > 0;
        a->cap_bound = rf.cap_bound;
        a->renew_at_ms = util_now_ms() + l->cfg.ttl_s * 1000 / 3;
    }
    pthread_mutex_unlock(&l->mu);
    if (st < 0) log_warn("lease: could not renew the hold of account %lld", (long long)a->id);
    return st < 0 ? -1 : 0;
}

enum lease_rc lease_admit(struct lease *l, int64_t account_id, const char *request_id,
                          int64_t max_cost)
{
    if (!l) return LEASE_DB;
    if (max_cost < 0) max_cost = 0;
    pthread_mutex_lock(&l->mu);
    struct lacct *a = find(l, account_id, 1);
    enum lease_rc rc = LEASE_SHORT;
    int ask = 0;
    if (!a) {
        rc = LEASE_DB;
    } else {
        a->last_use_ms = util_now_ms();
        if (a->granted - a->used >= max_cost) {
            rc = pend_add(a, request_id, max_cost) == 0 ? LEASE_OK : LEASE_DB;
            if (a->granted - a->used < l->cfg.chunk_micros / 4 || a->granted - a->used < max_cost) {
                a->want = 1; /* running low: the lease thread tops it up */
                pthread_cond_signal(&l->cv);
            }
        } else if (util_now_ms() >= a->short_until_ms) {
            ask = 1;
        } else if (a->cap_bound) {
            rc = LEASE_CAP;
        }
    }
    pthread_mutex_unlock(&l->mu);
    if (!ask) return rc;

    /* No room: ask the database now (once per LEASE_SHORT_MS while the balance stays short). */
    pthread_mutex_lock(&l->db_mu);
    pthread_mutex_lock(&l->mu);
    int fresh = a->granted - a->used >= max_cost; /* another request's refresh made room */
    int recent = util_now_ms() < a->short_until_ms;
    pthread_mutex_unlock(&l->mu);
    int dbrc = fresh || recent ? 0 : refresh(l, a, max_cost, 0);
    pthread_mutex_lock(&l->mu);
    if (a->granted - a->used >= max_cost) {
        rc = pend_add(a, request_id, max_cost) == 0 ? LEASE_OK : LEASE_DB;
    } else {
        rc = dbrc < 0 ? LEASE_DB : a->cap_bound ? LEASE_CAP : LEASE_SHORT;
        if (dbrc == 0 && !recent) a->short_until_ms = util_now_ms() + LEASE_SHORT_MS;
    }
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&l->db_mu);
    return rc;
}

void lease_end(struct lease *l, int64_t account_id, const char *request_id, int64_t actual_cost,
               int not_sent)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    struct lacct *a = find(l, account_id, 0);
    for (size_t i = a ? a->npend : 0; i-- > 0;) { /* the newest first: usually it is near the end */
        struct pend *p = &a->pend[i];
        if (strcmp(p->rid, request_id) != 0) continue;
        if (not_sent) {
            pend_drop(a, i);
        } else {
            if (actual_cost >= 0 && actual_cost < p->amount) {
                a->used -= p->amount - actual_cost;
                p->amount = actual_cost;
            }
            p->ended_ms = util_now_ms();
        }
        break;
    }
    if (a) a->last_use_ms = util_now_ms();
    pthread_mutex_unlock(&l->mu);
}

static int cmp_rid(const void *x, const void *y)
{
    return strcmp(x, y);
}

/* Drops the finished requests whose usage events are in the database: their cost is counted
 * there now. Requests whose usage never arrives are dropped after 2 × the TTL (at least 120 s).
 * 1 when something was dropped. */
static int settle(struct lease *l, struct lacct *a)
{
    int64_t give_up = 2 * l->cfg.ttl_s * 1000;
    if (give_up < 120000) give_up = 120000;
    int dropped = 0;
    size_t n = 0;
    char(*ids)[64] = NULL;
    pthread_mutex_lock(&l->mu);
    int64_t now = util_now_ms();
    for (size_t i = 0; i < a->npend;) {
        struct pend *p = &a->pend[i];
        if (p->ended_ms && now - p->ended_ms > give_up) {
            log_warn("lease: no usage reported for request %s after %lld s; its reservation is "
                     "returned",
                     p->rid, (long long)(give_up / 1000));
            pend_drop(a, i);
            dropped = 1;
            continue;
        }
        i++;
    }
    if (a->npend) ids = malloc(a->npend * sizeof *ids);
    for (size_t i = 0; ids && i < a->npend; i++)
        if (a->pend[i].ended_ms) memcpy(ids[n++], a->pend[i].rid, sizeof ids[0]);
    pthread_mutex_unlock(&l->mu);
    if (!n) {
        free(ids);
        return dropped;
    }
    /* Look them up in batches; found ids are moved to the front of ids. */
    size_t found = 0;
    PGconn *c = db_acquire(l->pool);
    for (size_t off = 0; c && off < n; off += LEASE_SETTLE_MAX) {
        struct buf q = {0};
        size_t end = off + LEASE_SETTLE_MAX < n ? off + LEASE_SETTLE_MAX : n;
        for (size_t i = off; i < end; i++) {
            buf_append(&q, i == off ? "{" : ",", 1);
            buf_append(&q, ids[i], strlen(ids[i]));
        }
        buf_append(&q, "}", 2); /* with the terminating NUL */
        PGresult *r = NULL;
        const char *p[] = {q.data};
        enum db_status st =
            q.data
                ? db_exec(c,
                          "SELECT request_id FROM usage_events WHERE request_id = ANY($1::text[])",
                          1, p, &r, NULL)
                : DB_HARD;
        buf_free(&q);
        if (st < 0) break;
        for (int k = 0; k < PQntuples(r) && found < n; k++)
            snprintf(ids[found++], sizeof ids[0], "%s", PQgetvalue(r, k, 0));
        PQclear(r);
    }
    if (c) db_release(l->pool, c);
    if (found) {
        qsort(ids, found, sizeof ids[0], cmp_rid);
        pthread_mutex_lock(&l->mu);
        for (size_t i = 0; i < a->npend;) {
            if (a->pend[i].ended_ms &&
                bsearch(a->pend[i].rid, ids, found, sizeof ids[0], cmp_rid)) {
                /* Its cost is counted by the database now (unbilled usage): it leaves our hold
                 * with its reservation, so the room left (granted - used) stays what it was.
                 * Returning it as room would admit requests that the balance, as the next
                 * refresh will see it, no longer covers. */
                a->granted -= a->pend[i].amount;
                if (a->granted < 0) a->granted = 0;
                pend_drop(a, i);
                dropped = 1;
            } else {
                i++;
            }
        }
        pthread_mutex_unlock(&l->mu);
    }
    free(ids);
    return dropped;
}

static void *lease_thread(void *arg)
{
    struct lease *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += LEASE_TICK_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        if (l->stop) break;
        struct lacct *head = l->accts; /* new accounts are pushed in front: this list is stable */
        pthread_mutex_unlock(&l->mu);
        for (struct lacct *a = head; a; a = a->next) {
            /* Settling and refreshing exclude each other (db_mu): a refresh that read the usage
             * events before a settle saw them must not then grant room the settle freed, or a
             * request's cost would count neither in the hold nor in the database. */
            pthread_mutex_lock(&l->db_mu);
            int dropped = settle(l, a);
            pthread_mutex_lock(&l->mu);
            int64_t now = util_now_ms();
            int idle = a->has_hold && a->npend == 0 && now - a->last_use_ms > LEASE_IDLE_MS;
            int due = a->want || (a->has_hold && now >= a->renew_at_ms) || (a->has_hold && dropped);
            pthread_mutex_unlock(&l->mu);
            if (idle || due) refresh(l, a, 0, idle);
            pthread_mutex_unlock(&l->db_mu);
        }
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

struct lease *lease_new(const struct lease_config *cfg)
{
    struct lease *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->cfg = *cfg;
    if (l->cfg.ttl_s < 3) l->cfg.ttl_s = 3;
    if (l->cfg.billing_period_s < 1) l->cfg.billing_period_s = 60;
    if (l->cfg.chunk_micros < 0) l->cfg.chunk_micros = 0;
    l->url = strdup(cfg->database_url ? cfg->database_url : "");
    l->pool = db_pool_new(l->url, 2, 5000, "lease");
    if (!l->url || !l->pool || util_random_hex(l->holder, 16) != 0) {
        db_pool_free(l->pool);
        free(l->url);
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->db_mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->started = pthread_create(&l->th, NULL, lease_thread, l) == 0;
    if (!l->started) log_error("lease: cannot start the lease thread");
    log_info("balance leases: holder %s, ttl %lld s", l->holder, (long long)l->cfg.ttl_s);
    return l;
}

void lease_free(struct lease *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (l->started) pthread_join(l->th, NULL);
    PGconn *c = db_acquire(l->pool);
    const char *p[] = {l->holder};
    if (!c || db_cmd(c, "DELETE FROM holds WHERE holder = $1", 1, p) < 0)
        log_warn("lease: could not release this process's holds (they lapse at their expiry)");
    if (c) db_release(l->pool, c);
    db_pool_free(l->pool);
    for (struct lacct *a = l->accts, *n; a; a = n) {
        n = a->next;
        free(a->pend);
        free(a);
    }
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->db_mu);
    pthread_cond_destroy(&l->cv);
    free(l->url);
    free(l);
}
