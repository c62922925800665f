/* gateway: see gateway.h.
 *
 * This file is the request side: a handler (MHD thread) authenticates the caller (cached),
 * applies its rate limit, resolves `model` to one of its endpoints and up to 8 ready replicas of
 * their current epochs (cached), admits a value-billed request against the account's balance
 * lease, makes the request id, and hands the request to gateway_proxy.c, which carries it to a
 * runtime and the reply back (no thread per request, no database connection held meanwhile). */
#include "gateway.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "billing_api.h"
#include "ctl.h"
#include "gateway_proxy.h"
#include "jsonx.h"
#include "lease.h"
#include "log.h"
#include "ratelimit.h"
#include "util.h"

static enum gw_route_rc resolve_db(PGconn *c, const char *account_id, const char *model,
                                   struct gw_route *rt);

/* ---- caches: no database round trip on the request path of a busy key ----
 *
 * A key's authentication and an (account, model) route are kept for GW_CACHE_MS after they were
 * read: a revoked key, a stopped endpoint, a drained balance or a replica that stopped being ready
 * take effect within that time (a replica that died in between is skipped on a refused
 * connection anyway). Entries are slots in fixed tables, overwritten by hash: the memory is
 * bounded whatever the number of keys. */
#define GW_CACHE_MS 1000
#define GW_CACHE_SLOTS 1024

struct auth_slot {
    char key_hash[65];
    struct auth_ctx a;
    int64_t until_ms;
};

struct route_slot {
    char account_id[24];
    char model[208];
    enum gw_route_rc rc;
    struct gw_route rt;
    int64_t until_ms;
};

static struct auth_slot *gw_auth_cache;
static struct route_slot *gw_route_cache;
static pthread_mutex_t gw_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t gw_once = PTHREAD_ONCE_INIT;

static void gw_init(void)
{
    gw_auth_cache = calloc(GW_CACHE_SLOTS, sizeof *gw_auth_cache);
    gw_route_cache = calloc(GW_CACHE_SLOTS, sizeof *gw_route_cache);
}

static uint32_t hash_str(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* 0 with *a filled, from the cache or the database; -1 after answering. */
static int gw_authenticate(struct httpd_req *req, struct auth_ctx *a)
{
    const char *key = auth_bearer(req);
    char kh[65] = "";
    if (key && gw_auth_cache) {
        util_sha256_hex(key, strlen(key), kh);
        struct auth_slot *sl = &gw_auth_cache[hash_str(2166136261u, kh) % GW_CACHE_SLOTS];
        pthread_mutex_lock(&gw_cache_lock);
        int hit = !strcmp(sl->key_hash, kh) && sl->until_ms > util_now_ms();
        if (hit) *a = sl->a;
        pthread_mutex_unlock(&gw_cache_lock);
        if (hit) {
            char ctx[128] = "req=";
            size_t n = 4 + util_strlcpy(ctx + 4, req->id, sizeof ctx - 4 - 28);
            memcpy(ctx + n, " acct=", 6);
            util_i64toa(ctx + n + 6, a->account_id);
            log_set_context(ctx);
            return 0;
        }
    }
    PGconn *c = auth_db(req, a);
    if (!c) return -1;
    ctl_db_done(req, c);
    if (kh[0]) {
        struct auth_slot *sl = &gw_auth_cache[hash_str(2166136261u, kh) % GW_CACHE_SLOTS];
        pthread_mutex_lock(&gw_cache_lock);
        snprintf(sl->key_hash, sizeof sl->key_hash, "%s", kh);
        sl->a = *a;
        sl->until_ms = util_now_ms() + GW_CACHE_MS;
        pthread_mutex_unlock(&gw_cache_lock);
    }
    return 0;
}

/* resolve_db through the route cache; ROUTE_DB is never cached. */
static enum gw_route_rc gw_resolve(struct ctl_listener *l, const char *account_id,
                                   const char *model, struct gw_route *rt, int *db_busy)
{
    struct route_slot *sl =
        &gw_route_cache[hash_str(hash_str(2166136261u, account_id), model) % GW_CACHE_SLOTS];
    pthread_mutex_lock(&gw_cache_lock);
    int hit = !strcmp(sl->account_id, account_id) && !strcmp(sl->model, model) &&
              sl->until_ms > util_now_ms();
    enum gw_route_rc rc = sl->rc;
    if (hit) *rt = sl->rt;
    pthread_mutex_unlock(&gw_cache_lock);
    if (hit) return rc;
    PGconn *c = db_acquire(l->pool);
    if (!c) {
        *db_busy = 1;
        return ROUTE_DB;
    }
    rc = resolve_db(c, account_id, model, rt);
    db_release(l->pool, c);
    if (rc == ROUTE_DB) return rc;
    pthread_mutex_lock(&gw_cache_lock);
    snprintf(sl->account_id, sizeof sl->account_id, "%s", account_id);
    snprintf(sl->model, sizeof sl->model, "%s", model);
    sl->rc = rc;
    sl->rt = *rt;
    sl->until_ms = util_now_ms() + GW_CACHE_MS;
    pthread_mutex_unlock(&gw_cache_lock);
    return rc;
}

static enum gw_route_rc resolve_db(PGconn *c, const char *account_id, const char *model,
                                   struct gw_route *rt)
{
    const char *p[] = {account_id, model};
    PGresult *r;
    /* The caller's own endpoint of that name, else the shared one of that name. The account's
     * balance, and its monthly spend cap against this month's charges, come with it. */
    enum db_status st = db_exec(
        c,
        "WITH e AS (SELECT e.* FROM endpoints e WHERE (e.account_id = $1::bigint OR e.shared) "
        "  AND e.name = $2 AND e.state IN ('active', 'stopped') "
        "  ORDER BY e.account_id = $1::bigint DESC LIMIT 1) "
        "SELECT e.id, e.state, e.state_reason, "
        "  (SELECT COALESCE(sum(l.amount_micros), 0) FROM ledger_entries l "
        "   WHERE l.account_id = $1::bigint), x.id, x.address, x.port, x.secret, "
        "  e.billing_mode, m.input_price_micros_per_mtok, m.output_price_micros_per_mtok, "
        "  m.context_length, e.shared AND e.account_id <> $1::bigint, "
        "  account_spend_cap($1::bigint), account_month_spend($1::bigint) "
        "FROM e JOIN models m ON m.id = e.model_id LEFT JOIN LATERAL ("
        "  SELECT r.id, h.address, r.port, r.secret FROM replicas r "
        "  JOIN hosts h ON h.id = r.host_id AND h.state = 'ready' "
        "  WHERE r.endpoint_id = e.id AND r.state = 'ready' AND r.port IS NOT NULL "
        "  ORDER BY random() LIMIT 8) x ON true",
        2, p, &r, NULL);
    memset(rt, 0, sizeof *rt);
    if (st < 0) return ROUTE_DB;
    enum gw_route_rc rc = ROUTE_OK;
    if (st == DB_NONE) {
        rc = ROUTE_NOT_FOUND;
    } else {
        snprintf(rt->endpoint_id, sizeof rt->endpoint_id, "%s", PQgetvalue(r, 0, 0));
        snprintf(rt->reason, sizeof rt->reason, "%s", PQgetvalue(r, 0, 2));
        rt->value = !strcmp(PQgetvalue(r, 0, 8), "value");
        rt->in_price = db_int(r, 0, 9);
        rt->out_price = db_int(r, 0, 10);
        rt->context_length = db_int(r, 0, 11);
        rt->shared = !strcmp(PQgetvalue(r, 0, 12), "t");
        rt->spend_cap = PQgetisnull(r, 0, 13) ? -1 : db_int(r, 0, 13);
        rt->month_spend = db_int(r, 0, 14);
        /* Time-billed: an account with nothing left, or at its monthly spend cap, is refused.
         * Value-billed requests are admitted against a balance lease instead (lease.h), by
         * their maximum cost, and the lease keeps them within the cap. */
        if (!strcmp(PQgetvalue(r, 0, 1), "stopped"))
            rc = ROUTE_STOPPED;
        else if (!rt->value && db_int(r, 0, 3) <= 0)
            rc = ROUTE_NO_FUNDS;
        else if (!rt->value && rt->spend_cap >= 0 && rt->month_spend >= rt->spend_cap)
            rc = ROUTE_CAP;
        for (int i = 0; rc == ROUTE_OK && i < PQntuples(r) && i < GW_MAX_CANDIDATES; i++) {
            if (PQgetisnull(r, i, 4)) continue;
            struct gw_candidate *cd = &rt->cand[rt->ncand++];
            snprintf(cd->replica_id, sizeof cd->replica_id, "%s", PQgetvalue(r, i, 4));
            snprintf(cd->url, sizeof cd->url, "http://%s:%s", PQgetvalue(r, i, 5),
                     PQgetvalue(r, i, 6));
            snprintf(cd->secret, sizeof cd->secret, "%s", PQgetvalue(r, i, 7));
        }
    }
    PQclear(r);
    return rc;
}

enum gw_route_rc gw_route_db(struct ctl_listener *l, const char *account_id, const char *model,
                             struct gw_route *rt)
{
    PGconn *c = db_acquire(l->pool);
    if (!c) return ROUTE_DB;
    enum gw_route_rc rc = resolve_db(c, account_id, model, rt);
    db_release(l->pool, c);
    return rc;
}

/* 402 spend_cap_reached: the account's usage charges this month reached its monthly spend cap. */
static void cap_error(struct httpd_req *req, int64_t cap, int64_t spent)
{
    char c[40], sp[40];
    billing_display(cap, c, sizeof c);
    billing_display(spent, sp, sizeof sp);
    httpd_error(req, 402, "spend_cap_reached", NULL,
                "your monthly spend cap of %s is reached (%s charged this month, plus what "
                "requests in flight may cost); the operator can raise it, or wait for the next "
                "month (UTC)",
                c, sp);
}

/* Routes a request (through the cache): 0, or -1 after answering. */
static int resolve(struct httpd_req *req, const struct auth_ctx *a, const char *model,
                   struct gw_route *rt)
{
    int busy = 0;
    switch (gw_resolve(req->app, a->account_id_str, model, rt, &busy)) {
    case ROUTE_OK:
        return 0;
    case ROUTE_DB:
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not route the request%s",
                    busy ? ": the database is busy" : "");
        return -1;
    case ROUTE_NOT_FOUND:
        httpd_error(req, 404, "model_not_found", "model",
                    "the model '%s' does not exist: it must be the name of one of your endpoints",
                    model);
        return -1;
    case ROUTE_STOPPED:
        httpd_error(req, 409, "endpoint_stopped", "model", "endpoint '%s' is stopped (%s)", model,
                    rt->reason);
        return -1;
    case ROUTE_NO_FUNDS:
        /* Admission (time-billed): an account with nothing left is refused before any work. */
        httpd_error(req, 402, "insufficient_balance", NULL,
                    "your balance is used up; add credit to continue");
        return -1;
    case ROUTE_CAP:
        cap_error(req, rt->spend_cap, rt->month_spend);
        return -1;
    }
    return -1;
}

/* Adds the IETF draft RateLimit headers to every reply of this request. */
/* Appends one "Name: value" line to the reply's extra headers (dropped if it does not fit). */
static void add_header(struct httpd_req *req, const char *name, const char *value)
{
    size_t n = strlen(req->extra_headers), nl = strlen(name), vl = strlen(value);
    size_t sep = n ? 2 : 0;
    if (n + sep + nl + 2 + vl >= sizeof req->extra_headers) return; /* does not fit: dropped */
    char *o = req->extra_headers + n;
    memcpy(o, "\r\n", sep);
    memcpy(o + sep, name, nl);
    memcpy(o + sep + nl, ": ", 2);
    memcpy(o + sep + nl + 2, value, vl + 1);
}

/* A limiter's three headers: names[0..2] for the limit, what remains, and the reset (printed with
 * reset_unit after the number: "" or OpenAI's "s"). */
static void limit_headers(struct httpd_req *req, const struct rl_result *r,
                          const char *const names[3], const char *reset_unit)
{
    char v[32];
    util_i64toa(v, r->limit);
    add_header(req, names[0], v);
    util_i64toa(v, r->remaining);
    add_header(req, names[1], v);
    util_strlcpy(v + util_i64toa(v, r->reset_s), reset_unit, 8);
    add_header(req, names[2], v);
}

static void rate_headers(struct httpd_req *req, const struct rl_result *r)
{
    static const char *const names[3] = {"RateLimit-Limit", "RateLimit-Remaining",
                                         "RateLimit-Reset"};
    limit_headers(req, r, names, "");
}

/* CORS for the console's playground, which runs on the API listener's origin and calls this
 * listener with the session cookie. Allowed: the origins listed in --cors-origins (exact match),
 * or, when that is unset, the API listener's own (http://<listen-host>:<api-port> and
 * http://localhost:<api-port>), which serves the console. Any other origin gets no Allow headers,
 * and the browser keeps the reply from its page. 1 when the request's origin is allowed. */
static int origin_listed(const char *origin, const char *list)
{
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, origin, n)) return 1;
        p += len + (end ? 1 : 0);
    }
    return 0;
}

static int cors(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const struct ctl_config *cfg = &l->ctl->cfg;
    const char *origin = httpd_header(req, "Origin");
    if (!origin || strlen(origin) > 200) return 0;
    int ok;
    if (cfg->cors_origins && *cfg->cors_origins) {
        ok = origin_listed(origin, cfg->cors_origins);
    } else {
        char own[160];
        snprintf(own, sizeof own, "http://%s:%lld,http://localhost:%lld", cfg->listen_host,
                 (long long)cfg->api_port, (long long)cfg->api_port);
        ok = origin_listed(origin, own);
    }
    if (!ok) return 0;
    add_header(req, "Access-Control-Allow-Origin", origin);
    add_header(req, "Access-Control-Allow-Credentials", "true");
    add_header(req, "Access-Control-Expose-Headers",
               "x-request-id, x-client-request-id, openrunpod-fingerprint, retry-after, "
               "ratelimit-limit, ratelimit-remaining, ratelimit-reset, x-ratelimit-limit-tokens, "
               "x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens");
    add_header(req, "Vary", "Origin");
    return 1;
}

static void h_preflight(struct httpd_req *req)
{
    if (cors(req)) {
        add_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        add_header(req, "Access-Control-Allow-Headers",
                   "authorization, content-type, x-csrf-token, idempotency-key");
        add_header(req, "Access-Control-Max-Age", "600");
    }
    httpd_reply_raw(req, 204, NULL, "", 0);
}

/* The id a client gave its request (X-Client-Request-Id, or X-Request-Id) is echoed back as
 * X-Client-Request-Id so it can match replies, and used for nothing else: the request id that
 * logs and billing use is made here (X-Request-Id). Up to 128 visible ASCII characters; anything
 * else is dropped rather than refused. */
#define GW_CLIENT_ID_MAX 128
static void echo_client_id(struct httpd_req *req)
{
    const char *id = httpd_header(req, "X-Client-Request-Id");
    if (!id) id = httpd_header(req, "X-Request-Id");
    if (!id) return;
    size_t n = 0;
    for (; n <= GW_CLIENT_ID_MAX && id[n]; n++)
        if (id[n] < 0x21 || id[n] > 0x7e) return;
    if (n > 0 && n <= GW_CLIENT_ID_MAX) add_header(req, "X-Client-Request-Id", id);
}

/* The account's request rate (quotas.requests_per_min, burst requests_burst): 0, or -1 after
 * answering 429 with Retry-After. */
static int rate_limit(struct httpd_req *req, const struct auth_ctx *a)
{
    struct ctl_listener *l = req->app;
    if (a->requests_per_min <= 0 || !l->ctl->rl) return 0;
    struct rl_result r;
    int ok = rl_admit(l->ctl->rl, a->account_id, util_now_ms() * 1000, a->requests_per_min,
                      a->requests_burst, &r);
    rate_headers(req, &r);
    if (ok) return 0;
    req->retry_after = (int)r.retry_after;
    httpd_error(req, 429, "rate_limit_exceeded", NULL,
                "rate limit of %lld requests per minute reached; retry in %lld s",
                (long long)r.limit, (long long)r.retry_after);
    return -1;
}

/* The most completion tokens a request can ask for: max_tokens (or max_completion_tokens), or
 * the model's context length when absent. Its prompt is at most its body's bytes in tokens
 * (byte-level BPE never makes more tokens than bytes, and a chat template adds fewer tokens per
 * message than the message's JSON syntax has bytes). */
static int64_t max_completion(json_t *body, const struct gw_route *rt)
{
    int64_t ctx = rt->context_length > 0 ? rt->context_length : INT32_MAX;
    int64_t ct = ctx;
    json_t *mt = json_object_get(body, "max_tokens");
    if (!json_is_integer(mt)) mt = json_object_get(body, "max_completion_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0 && json_integer_value(mt) < ctx)
        ct = json_integer_value(mt);
    return ct;
}

/* The most a value-billed request can cost: its most tokens at the model's prices, rounded up. */
static int64_t max_cost(const struct httpd_req *req, json_t *body, const struct gw_route *rt)
{
    return lease_cost((int64_t)req->body.len, max_completion(body, rt), rt->in_price,
                      rt->out_price);
}

/* OpenAI's token rate headers, on every reply of this request. */
static void token_headers(struct httpd_req *req, const struct rl_result *r)
{
    static const char *const names[3] = {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                                         "x-ratelimit-reset-tokens"};
    limit_headers(req, r, names, "s");
}

/* The account's tokens per minute (quotas.tokens_per_min): the request's most tokens (body bytes
 * + max_completion) are charged to its bucket, keyed by the negated account id in the table of
 * request rates; what it did not use comes back when its reply is in (gateway_proxy.c). 0 with
 * *charged set (0: no limit), or -1 after answering 429 with Retry-After, or 400 when the request
 * alone needs more than the whole limit (waiting would not help). */
static int token_limit(struct httpd_req *req, const struct auth_ctx *a, int64_t tokens,
                       int64_t *charged)
{
    struct ctl_listener *l = req->app;
    *charged = 0;
    if (a->tokens_per_min <= 0 || !l->ctl->rl) return 0;
    struct rl_result r;
    int ok =
        rl_charge(l->ctl->rl, -a->account_id, util_now_ms() * 1000, a->tokens_per_min, tokens, &r);
    token_headers(req, &r);
    if (ok) {
        *charged = tokens;
        return 0;
    }
    if (tokens > a->tokens_per_min) {
        httpd_error(req, 400, "request_too_large", "max_tokens",
                    "this request may use up to %lld tokens (its prompt, counted as its body's "
                    "%zu bytes, plus max_tokens), more than your whole limit of %lld tokens per "
                    "minute; lower max_tokens or shorten the prompt",
                    (long long)tokens, req->body.len, (long long)a->tokens_per_min);
        return -1;
    }
    req->retry_after = r.retry_after > 0 ? (int)r.retry_after : 1;
    httpd_error(req, 429, "rate_limit_exceeded", NULL,
                "token limit of %lld tokens per minute reached: this request may use up to %lld "
                "tokens (its prompt, counted as its body's bytes, plus max_tokens) and %lld are "
                "left; retry in %d s",
                (long long)r.limit, (long long)tokens, (long long)r.remaining, req->retry_after);
    return -1;
}

/* Returns the tokens token_limit charged to a request that will not run. */
static void tokens_back(struct ctl_listener *l, const struct auth_ctx *a, int64_t tokens)
{
    rl_refund(l->ctl->rl, -a->account_id, util_now_ms() * 1000, a->tokens_per_min, tokens);
}

/* Both generation routes: the same admission, routing and proxying; the runtime does the rest. */
static void proxy_generation(struct httpd_req *req, const char *path)
{
    if (req->state) {
        gwp_respond(req);
        return;
    }
    pthread_once(&gw_once, gw_init);
    cors(req);
    echo_client_id(req);
    struct ctl_listener *l = req->app;
    struct auth_ctx a;
    if (gw_authenticate(req, &a) != 0) return;
    if (rate_limit(req, &a) != 0) return;
    /* The body goes to the runtime as it came; only `model` is read here. The runtime
     * validates the rest and its 400s are passed through. */
    struct jsonx_err je = {0};
    json_t *body = httpd_body_object(req);
    if (!body) return;
    const char *model;
    enum jsonx_rc rc = jsonx_get_string(body, "model", 1, &model, 200, &je);
    if (rc != JSONX_OK) {
        json_decref(body);
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    "model", "%s", je.message);
        return;
    }
    struct gw_route rt;
    int ok = resolve(req, &a, model, &rt); /* no connection is held while waiting on a runtime */
    if (ok == 0) ok = auth_endpoint_allowed(req, &a, rt.endpoint_id, model); /* key's limit */
    if (ok == 0 && rt.ncand == 0 && l->ctl->cfg.hold_s <= 0) {
        req->retry_after = 5;
        httpd_error(req, 503, "endpoint_not_ready", "model",
                    "endpoint '%s' has no ready replica yet; retry shortly", model);
        ok = -1;
    }
    if (ok != 0) {
        json_decref(body);
        return;
    }
    int64_t cost = rt.value ? max_cost(req, body, &rt) : 0;
    int64_t tokens = 0;
    if (token_limit(req, &a, (int64_t)req->body.len + max_completion(body, &rt), &tokens) != 0) {
        json_decref(body);
        return;
    }

    char hex[25], request_id[64];
    if (util_random_hex(hex, 12) != 0) {
        json_decref(body);
        tokens_back(l, &a, tokens);
        httpd_error(req, 500, "internal_error", NULL, "could not make a request id");
        return;
    }
    /* A shared endpoint's caller pays: the id carries the caller's account, and the usage event
     * is charged to it (schema/010's trigger). */
    if (rt.shared)
        snprintf(request_id, sizeof request_id, "req_%s_a%lld", hex, (long long)a.account_id);
    else {
        memcpy(request_id, "req_", 4);
        util_strlcpy(request_id + 4, hex, sizeof request_id - 4);
    }
    struct gwp_request pr = {&rt,        path, a.account_id_str, a.account_id,    model,
                             request_id, 0,    tokens,           a.tokens_per_min};
    if (rt.value) {
        /* Value-billed: the request's maximum cost is reserved from this process's lease on the
         * account's balance (no database round trip while the lease has room). */
        enum lease_rc lr = lease_admit(l->ctl->lease, a.account_id, request_id, cost);
        if (lr != LEASE_OK) {
            json_decref(body);
            tokens_back(l, &a, tokens);
            if (lr == LEASE_CAP) {
                cap_error(req, rt.spend_cap, rt.month_spend);
            } else if (lr == LEASE_SHORT) {
                httpd_error(req, 402, "insufficient_balance", NULL,
                            "your balance cannot cover this request (up to %lld micro-units: "
                            "its prompt and max_tokens at the model's prices); add credit or "
                            "lower max_tokens",
                            (long long)cost);
            } else {
                req->retry_after = 1;
                httpd_error(req, 503, "database_unavailable", NULL,
                            "could not reserve the request's cost; retry shortly");
            }
            return;
        }
        pr.leased = 1;
    }
    util_strlcpy(req->id, request_id, sizeof req->id);
    log_info("request %s -> endpoint %s (%d ready replica%s)", request_id, rt.endpoint_id, rt.ncand,
             rt.ncand == 1 ? "" : "s");
    int started = gwp_start(req, &pr);
    json_decref(body); /* model was borrowed from it */
    if (started != 0) {
        if (pr.leased) lease_end(l->ctl->lease, a.account_id, request_id, -1, 1);
        tokens_back(l, &a, tokens);
        req->retry_after = 1;
        httpd_error(req, 503, "overloaded", NULL, "the gateway cannot take more requests now");
    }
}

static void h_chat(struct httpd_req *req)
{
    proxy_generation(req, "/v1/chat/completions");
}

static void h_completions(struct httpd_req *req)
{
    proxy_generation(req, "/v1/completions");
}

static void h_models(struct httpd_req *req)
{
    cors(req);
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *p[] = {a.account_id_str};
    PGresult *r;
    /* The caller's endpoints, and the shared ones (a shared name the caller also uses for an
     * endpoint of its own is its own: that is what `model` resolves to). */
    enum db_status st =
        db_exec(c,
                "SELECT DISTINCT ON (name) name, extract(epoch FROM created_at)::bigint, id, "
                "  account_id FROM endpoints "
                "WHERE (account_id = $1::bigint OR shared) AND state = 'active' "
                "ORDER BY name, account_id = $1::bigint DESC",
                1, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not list models");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        /* A key limited to some endpoints sees only those. */
        int listed = !a.endpoint_limited;
        for (int k = 0; k < a.n_endpoint_ids && !listed; k++)
            listed = !strcmp(a.endpoint_ids[k], PQgetvalue(r, i, 2));
        if (!listed) continue;
        json_array_append_new(data,
                              json_pack("{s:s, s:s, s:I, s:s}", "id", PQgetvalue(r, i, 0), "object",
                                        "model", "created", (json_int_t)db_int(r, i, 1), "owned_by",
                                        PQgetvalue(r, i, 3)));
    }
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route gateway_routes[] = {
    {"POST", "/v1/chat/completions", h_chat},
    {"POST", "/v1/completions", h_completions},
    {"GET", "/v1/models", h_models},
    {"OPTIONS", "/v1/chat/completions", h_preflight},
    {"OPTIONS", "/v1/completions", h_preflight},
    {"OPTIONS", "/v1/models", h_preflight},
};
const size_t gateway_nroutes = sizeof gateway_routes / sizeof gateway_routes[0];
