/* api: see api.h. The endpoint rows are read and written only here and in replica.c (replicas). */
#include "api.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "auth.h"
#include "billing_api.h"
#include "idempotency.h"
#include "ctl.h"
#include "jsonx.h"
#include "labels.h"
#include "log.h"
#include "presets.h"
#include "replica.h"
#include "util.h"

int api_is_uuid(const char *s)
{
    static const int dash_at[] = {8, 13, 18, 23};
    if (strlen(s) != 36) return 0;
    for (int i = 0, k = 0; i < 36; i++) {
        if (k < 4 && i == dash_at[k]) {
            if (s[i] != '-') return 0;
            k++;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

static void h_healthz(struct httpd_req *req)
{
    PGconn *c = ctl_db(req);
    if (!c) return;
    enum db_status st = db_cmd(c, "SELECT 1", 0, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "database check failed");
        return;
    }
    json_t *o = json_pack("{s:s}", "status", "ok");
    httpd_reply_json(req, 200, o);
}

/* Answers {"object":"list","data":[row(r, i)...]} and clears r. */
static void reply_list(struct httpd_req *req, PGresult *r, json_t *(*row)(PGresult *r, int i))
{
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(data, row(r, i));
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

/* Column 0 of row i: a JSON object the statement built (new reference; null if unparsable). */
static json_t *json_row(PGresult *r, int i)
{
    json_error_t je;
    json_t *o = json_loads(PQgetvalue(r, i, 0), 0, &je);
    return o ? o : json_null();
}

/* ---- catalog ---- */

/* The models no one retired (retired ones stay deployable nowhere, running where they run). */
static void h_catalog(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    PGresult *r;
    enum db_status st =
        db_exec(c,
                "SELECT " API_MODEL_JSON("m") " FROM models m "
                                              "WHERE m.retired_at IS NULL ORDER BY m.name",
                0, NULL, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not read the catalog");
        return;
    }
    reply_list(req, r, json_row);
}

/* ---- endpoints ---- */

/* A replica (r) on its host (h, may be NULL) as the API shows it. */
#define REPLICA_JSON                                                                               \
    "json_build_object('id', r.id, 'ordinal', r.ordinal, 'state', r.state, 'reason', r.reason, "   \
    "  'epoch', r.epoch, 'host', h.name, 'devices', r.devices, 'ready_at', r.ready_at)"

/* An endpoint as the API shows it, built by the statement (one JSON text per row) so that the
 * controller passes it on without parsing: a listing is one query and a memcpy per endpoint.
 * status is derived here from the replicas on every read, never stored, so it cannot disagree
 * with them. Use as "SELECT e.id, " ENDPOINT_JSON " " ENDPOINT_FROM "WHERE ...". */
#define ENDPOINT_JSON                                                                              \
    "json_build_object('id', e.id, 'object', 'endpoint', 'name', e.name, 'model', m.name, "        \
    "  'device_kind', e.device_kind, 'gpus_per_replica', e.gpus_per_replica, "                     \
    "  'replicas', e.replicas, 'billing_mode', e.billing_mode, "                                   \
    "  'status', CASE WHEN e.state IN ('deleted', 'stopped') THEN e.state "                        \
    "    WHEN rs.ready = e.replicas THEN 'ready' "                                                 \
    "    WHEN rs.failed > 0 THEN CASE WHEN rs.ready > 0 THEN 'degraded' ELSE 'failed' END "        \
    "    ELSE 'deploying' END, "                                                                   \
    "  'status_reason', e.state_reason, 'replicas_ready', rs.ready, "                              \
    "  'created_at', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), " \
    "  'replica_states', rs.list, 'pool', e.pool, 'gpu_type', e.gpu_type, "                        \
    "  'host_selector', e.host_selector)"
/* The replica summary is aggregated in the same statement (one lateral subquery per endpoint). */
#define ENDPOINT_FROM                                                                              \
    "FROM endpoints e JOIN models m ON m.id = e.model_id CROSS JOIN LATERAL ("                     \
    "  SELECT COALESCE(json_agg(" REPLICA_JSON " ORDER BY r.ordinal), '[]') AS list, "             \
    "    count(*) FILTER (WHERE r.state = 'ready') AS ready, "                                     \
    "    count(*) FILTER (WHERE r.state = 'failed') AS failed "                                    \
    "  FROM replicas r LEFT JOIN hosts h ON h.id = r.host_id "                                     \
    "  WHERE r.endpoint_id = e.id AND (r.state <> 'stopped' OR e.state = 'deleted')) rs "

/* One endpoint of an account into *out (new reference); DB_NONE when it is not there. */
static enum db_status endpoint_load(PGconn *c, const char *acct, const char *id, json_t **out)
{
    PGresult *r;
    const char *p[] = {id, acct};
    enum db_status st = db_exec(c,
                                "SELECT e.id, " ENDPOINT_JSON " " ENDPOINT_FROM
                                "WHERE e.id = $1::uuid AND e.account_id = $2::bigint",
                                2, p, &r, NULL);
    if (st == DB_ROWS) {
        json_error_t je;
        if (!(*out = json_loads(PQgetvalue(r, 0, 1), 0, &je))) st = DB_HARD;
    }
    if (st >= 0) PQclear(r);
    return st;
}

/* Replies with one endpoint of the caller's account, or 404. */
static void reply_endpoint(struct httpd_req *req, PGconn *c, const char *acct, const char *id,
                           unsigned status)
{
    json_t *o = NULL;
    enum db_status st = endpoint_load(c, acct, id, &o);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not read the endpoint");
        return;
    }
    if (st == DB_NONE) {
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
        return;
    }
    httpd_reply_json(req, status, o);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || !islower((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-') return 0;
    return s[n - 1] != '-';
}

static int valid_pool(const char *s)
{
    return *s && jsonx_printable(s);
}

/* The body's optional "host_selector" (labels.h) as JSON text into *out (malloc'd; NULL when
 * absent). 0, or -1 after answering 400. */
static int get_selector(struct httpd_req *req, json_t *body, char **out)
{
    json_t *v = json_object_get(body, "host_selector");
    struct jsonx_err je = {0};
    *out = NULL;
    if (!v) return 0;
    if (labels_check(v, "host_selector", &je) != 0) {
        httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
        return -1;
    }
    if (!(*out = jsonx_dump(v))) {
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        return -1;
    }
    return 0;
}

struct create_ep {
    const char *acct, *name, *model, *kind, *billing, *pool, *gpu_type;
    char *selector; /* host_selector as JSON text (malloc'd), NULL: none */
    int64_t gpus, replicas;
    char type_buf[96];
    char id[40];
    int conflict;
    struct idem im;
    json_t *reply; /* the 201's body, also stored under the Idempotency-Key */
};

static enum db_status create_ep_txn(PGconn *c, void *arg)
{
    struct create_ep *ce = arg;
    json_decref(ce->reply);
    ce->reply = NULL;
    /* First: a concurrent duplicate waits here, then replays (idempotency.h). */
    enum db_status st = idem_claim(c, &ce->im);
    if (st != DB_ROWS) return st;
    char g[24], n[24], ss[6];
    snprintf(g, sizeof g, "%lld", (long long)ce->gpus);
    snprintf(n, sizeof n, "%lld", (long long)ce->replicas);
    const char *p[] = {ce->acct, ce->name,    ce->model, ce->kind,     g,
                       n,        ce->billing, ce->pool,  ce->gpu_type, ce->selector};
    PGresult *r;
    st = db_exec(c,
                 "INSERT INTO endpoints (account_id, name, model_id, device_kind, "
                 "  gpus_per_replica, replicas, billing_mode, pool, gpu_type, host_selector) "
                 "SELECT $1::bigint, $2, m.id, $4, $5::int, $6::int, $7, $8, $9, "
                 "  COALESCE($10::jsonb, '{}') "
                 "FROM models m WHERE m.name = $3 AND m.retired_at IS NULL RETURNING id",
                 10, p, &r, ss);
    if (st < 0) {
        if (!strcmp(ss, "23505")) ce->conflict = 1;
        return st;
    }
    snprintf(ce->id, sizeof ce->id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *p2[] = {ce->id, ce->acct, n};
    st = db_cmd(c,
                "INSERT INTO replicas (endpoint_id, account_id, ordinal, reason) "
                "SELECT $1::uuid, $2::bigint, g, 'waiting for the scheduler' "
                "FROM generate_series(0, $3::int - 1) g",
                3, p2);
    if (st < 0) return st;
    if ((st = endpoint_load(c, ce->acct, ce->id, &ce->reply)) != DB_ROWS)
        return st < 0 ? st : DB_HARD;
    return idem_store(c, &ce->im, 201, ce->reply);
}

/* Deploy-time quotas (the account's row in quotas, else the defaults): devices of running
 * endpoints plus add_devices within max_devices, endpoints plus add_endpoints within
 * max_endpoints. 0, or -1 after answering 403 quota_exceeded (or 503; 402 when the monthly
 * spend cap is reached). */
static int check_quota(struct httpd_req *req, PGconn *c, const char *acct, int64_t add_devices,
                       int add_endpoints)
{
    if (billing_spend_cap_check(req, c, acct) != 0) return -1; /* 402 at the monthly cap */
    const char *p[] = {acct};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT q.max_devices, q.max_endpoints, "
        "  (SELECT COALESCE(sum(gpus_per_replica * replicas), 0) FROM endpoints "
        "   WHERE account_id = $1::bigint AND state = 'active'), "
        "  (SELECT count(*) FROM endpoints WHERE account_id = $1::bigint AND state <> 'deleted') "
        "FROM (SELECT max_devices, max_endpoints FROM quotas "
        "      WHERE account_id = $1::bigint OR account_id IS NULL "
        "      ORDER BY account_id NULLS LAST LIMIT 1) q",
        1, p, &r, NULL);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read quotas");
        return -1;
    }
    int rc = 0;
    if (st == DB_ROWS && !PQgetisnull(r, 0, 0) && db_int(r, 0, 2) + add_devices > db_int(r, 0, 0)) {
        httpd_error(req, 403, "quota_exceeded", "replicas",
                    "this needs %lld devices and %lld are in use; your quota is %lld",
                    (long long)add_devices, (long long)db_int(r, 0, 2), (long long)db_int(r, 0, 0));
        rc = -1;
    } else if (st == DB_ROWS && !PQgetisnull(r, 0, 1) &&
               db_int(r, 0, 3) + add_endpoints > db_int(r, 0, 1)) {
        httpd_error(req, 403, "quota_exceeded", NULL,
                    "you have %lld endpoints; your quota is %lld: delete one first",
                    (long long)db_int(r, 0, 3), (long long)db_int(r, 0, 1));
        rc = -1;
    }
    PQclear(r);
    return rc;
}

static const char *const create_fields[] = {
    "name",         "model", "gpus_per_replica", "replicas",      "device_kind",
    "billing_mode", "pool",  "gpu_type",         "host_selector", NULL};

static void h_create_endpoint(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a); /* who asks comes first: no key, no parsing */
    if (!c) return;
    struct jsonx_err je = {0};
    struct create_ep ce = {0};
    json_t *body = httpd_body_object(req);
    if (!body) goto out_db;
    ce.replicas = 1;
    ce.billing = "time";
    int64_t gpus = 0;
    enum jsonx_rc rc;
    if (httpd_reject_unknown(req, body, create_fields) != 0) goto out;
    /* A retry is answered before anything that may have changed since (balance, quota, name). */
    char scope[40];
    snprintf(scope, sizeof scope, "account:%s", a.account_id_str);
    if (idem_begin(req, &ce.im, scope, a.account_id, req->body.data, req->body.len) != 0 ||
        idem_replay(req, c, &ce.im) != 0)
        goto out;
    if ((rc = jsonx_get_string(body, "name", 1, &ce.name, 63, &je)) != JSONX_OK ||
        (rc = jsonx_get_string(body, "model", 1, &ce.model, 200, &je)) != JSONX_OK ||
        (rc = jsonx_get_int(body, "gpus_per_replica", 0, 1, 8, &gpus, &je)) == JSONX_BAD ||
        (rc = jsonx_get_int(body, "replicas", 0, 1, 16, &ce.replicas, &je)) == JSONX_BAD ||
        (rc = jsonx_get_string(body, "device_kind", 0, &ce.kind, 8, &je)) == JSONX_BAD ||
        (rc = jsonx_get_string(body, "billing_mode", 0, &ce.billing, 8, &je)) == JSONX_BAD ||
        (rc = jsonx_get_string(body, "pool", 0, &ce.pool, 63, &je)) == JSONX_BAD ||
        (rc = jsonx_get_string(body, "gpu_type", 0, &ce.gpu_type, 95, &je)) == JSONX_BAD) {
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    je.param, "%s", je.message);
        goto out;
    }
    if (!valid_name(ce.name)) {
        httpd_error(req, 400, "invalid_parameter", "name",
                    "field 'name' must be 1-63 characters of a-z, 0-9 and '-', starting with a "
                    "letter and not ending with '-'");
        goto out;
    }
    if (get_selector(req, body, &ce.selector) != 0) goto out;
    if (ce.pool && !valid_pool(ce.pool)) {
        httpd_error(req, 400, "invalid_parameter", "pool",
                    "field 'pool' must be 1-63 printable characters");
        goto out;
    }
    if (strcmp(ce.billing, "time") && strcmp(ce.billing, "value")) {
        httpd_error(req, 400, "invalid_parameter", "billing_mode",
                    "field 'billing_mode' must be \"time\" or \"value\"");
        goto out;
    }
    /* Per-token billing leaves idle GPUs unpaid: only the operator runs such endpoints. */
    if (!strcmp(ce.billing, "value") && strcmp(a.role, "admin") != 0) {
        httpd_error(req, 403, "admin_only", "billing_mode",
                    "only the operator may create endpoints billed by value");
        goto out;
    }
    if (ce.kind && strcmp(ce.kind, "gpu") && strcmp(ce.kind, "cpu")) {
        httpd_error(req, 400, "invalid_parameter", "device_kind",
                    "field 'device_kind' must be \"gpu\" or \"cpu\"");
        goto out;
    }
    ce.acct = a.account_id_str;
    int64_t balance = 0;
    if (billing_balance(c, ce.acct, &balance) < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the balance");
        goto out;
    }
    if (balance <= 0) {
        httpd_error(req, 402, "insufficient_balance", NULL,
                    "your balance is used up; add credit before deploying");
        goto out;
    }
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT min_devices, device_kinds[1], "
                                "  ($2::text IS NULL OR $2 = ANY (device_kinds)) "
                                "FROM models WHERE name = $1 AND retired_at IS NULL",
                                2, (const char *[]){ce.model, ce.kind}, &r, NULL);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not read the catalog");
        goto out;
    }
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 400, "model_not_found", "model",
                    "model '%s' is not in the catalog (see GET /v1/catalog)", ce.model);
        goto out;
    }
    int64_t min_dev = db_int(r, 0, 0);
    char kind[8];
    snprintf(kind, sizeof kind, "%s", ce.kind ? ce.kind : PQgetvalue(r, 0, 1));
    int kind_ok = PQgetvalue(r, 0, 2)[0] == 't';
    PQclear(r);
    if (!kind_ok) {
        httpd_error(req, 400, "invalid_parameter", "device_kind",
                    "model '%s' cannot run on device kind '%s'", ce.model, ce.kind);
        goto out;
    }
    ce.kind = kind;
    if (ce.gpu_type && strcmp(kind, "gpu")) {
        httpd_error(req, 400, "invalid_parameter", "gpu_type",
                    "field 'gpu_type' needs device_kind \"gpu\"");
        goto out;
    }
    /* GPU type and width from the model's size when not given (presets.h). */
    if (!strcmp(kind, "gpu") && presets_apply(req, c, ce.model, ce.pool, &ce.gpu_type, ce.type_buf,
                                              sizeof ce.type_buf, &gpus) != 0)
        goto out;
    ce.gpus = gpus ? gpus : min_dev;
    if (ce.gpus < min_dev) {
        httpd_error(req, 400, "invalid_parameter", "gpus_per_replica",
                    "model '%s' needs at least %lld devices per replica", ce.model,
                    (long long)min_dev);
        goto out;
    }
    if (check_quota(req, c, ce.acct, ce.gpus * ce.replicas, 1) != 0) goto out;
    st = db_txn_run(c, create_ep_txn, &ce);
    if (ce.im.replay) {
        idem_answer(req, &ce.im);
        goto out;
    }
    if (st < 0) {
        if (ce.conflict)
            httpd_error(req, 409, "name_taken", "name", "an endpoint named '%s' already exists",
                        ce.name);
        else
            httpd_error(req, 500, "internal_error", NULL, "could not create the endpoint");
        goto out;
    }
    api_endpoints_changed();
    audit_set_object(c, a.audit_id, ce.id);
    log_info("endpoint %s (%s) created: model %s, %lld x %lld %s", ce.id, ce.name, ce.model,
             (long long)ce.replicas, (long long)ce.gpus, ce.kind);
    httpd_reply_json(req, 201, json_incref(ce.reply));
out:
    json_decref(body);
out_db:
    free(ce.selector);
    json_decref(ce.reply);
    idem_free(&ce.im);
    ctl_db_done(req, c);
}

/* ---- the listing cache ----
 *
 * A page of GET /v1/endpoints is kept for --list-cache-ms (250 ms by default; 0: off) per account
 * and query, so that clients polling their listing (the console, scripts waiting for "ready")
 * cost no database round trip most of the time. Every endpoint change made through this process's
 * API (create, delete, scale, stop, start, an account's suspension) empties it at once, so a
 * client reads its own writes; what the scheduler, the agents or another controller change shows
 * within the TTL. GET /v1/endpoints/{id} is never cached. Slots are overwritten by hash: memory
 * is bounded whatever the number of accounts. */
#define LIST_CACHE_SLOTS 256
#define LIST_CACHE_KEY_MAX 512

struct list_slot {
    char key[LIST_CACHE_KEY_MAX];
    char *body; /* malloc'd */
    size_t len;
    int64_t until_ms; /* monotonic */
    uint64_t gen;
};

static struct list_slot list_cache[LIST_CACHE_SLOTS];
static uint64_t list_gen = 1; /* slots of an older generation are stale */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;

void api_endpoints_changed(void)
{
    pthread_mutex_lock(&list_lock);
    list_gen++;
    pthread_mutex_unlock(&list_lock);
}

static struct list_slot *list_slot_of(const char *key)
{
    uint32_t h = 2166136261u;
    for (const char *k = key; *k; k++)
        h = (h ^ (uint8_t)*k) * 16777619u;
    return &list_cache[h % LIST_CACHE_SLOTS];
}

/* A copy of the cached page for key (caller frees), or NULL. */
static char *list_cached(const char *key, size_t *len)
{
    struct list_slot *sl = list_slot_of(key);
    char *out = NULL;
    pthread_mutex_lock(&list_lock);
    if (sl->body && sl->gen == list_gen && sl->until_ms > util_now_ms() && !strcmp(sl->key, key) &&
        (out = malloc(sl->len)) != NULL) {
        memcpy(out, sl->body, sl->len);
        *len = sl->len;
    }
    pthread_mutex_unlock(&list_lock);
    return out;
}

/* Keeps body (copied) under key for ttl_ms, unless the cache was emptied since gen was read. */
static void list_remember(const char *key, uint64_t gen, const char *body, size_t len,
                          int64_t ttl_ms)
{
    char *copy = malloc(len);
    if (!copy) return;
    memcpy(copy, body, len);
    struct list_slot *sl = list_slot_of(key);
    pthread_mutex_lock(&list_lock);
    if (gen == list_gen) {
        free(sl->body);
        snprintf(sl->key, sizeof sl->key, "%s", key);
        sl->body = copy;
        sl->len = len;
        sl->until_ms = util_now_ms() + ttl_ms;
        sl->gen = gen;
        copy = NULL;
    }
    pthread_mutex_unlock(&list_lock);
    free(copy);
}

#define ENDPOINTS_PAGE_MAX 200 /* endpoints per page: bounds one reply and one query */

/* GET /v1/endpoints[?limit=&starting_after=<id>&state=active|stopped|deleted&model=&name=]:
 * oldest first; without a state, every endpoint but the deleted ones. One query. */
static void h_list_endpoints(struct httpd_req *req)
{
    static const char *const states[] = {"active", "stopped", "deleted"};
    int64_t limit = httpd_query_int(req, "limit", ENDPOINTS_PAGE_MAX, ENDPOINTS_PAGE_MAX);
    if (limit < 0) return;
    const char *after = httpd_query(req, "starting_after"), *state = httpd_query(req, "state");
    const char *model = httpd_query(req, "model"), *name = httpd_query(req, "name");
    int state_ok = !state;
    for (size_t i = 0; i < sizeof states / sizeof states[0] && !state_ok; i++)
        state_ok = !strcmp(state, states[i]);
    if (after && !api_is_uuid(after)) {
        httpd_error(req, 400, "invalid_parameter", "starting_after",
                    "query parameter 'starting_after' must be an endpoint id");
        return;
    }
    if (!state_ok) {
        httpd_error(req, 400, "invalid_parameter", "state",
                    "query parameter 'state' must be active, stopped or deleted");
        return;
    }
    if ((model && strlen(model) > 200) || (name && strlen(name) > 63)) {
        httpd_error(req, 400, "invalid_parameter", model && strlen(model) > 200 ? "model" : "name",
                    "query parameter too long");
        return;
    }
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    struct ctl_listener *l = req->app;
    int64_t ttl = l && l->ctl ? l->ctl->cfg.list_cache_ms : 0;
    char key[LIST_CACHE_KEY_MAX];
    size_t cached_len = 0;
    char *cached = NULL;
    pthread_mutex_lock(&list_lock);
    uint64_t gen = list_gen; /* read before the query: a change meanwhile keeps this page out */
    pthread_mutex_unlock(&list_lock);
    int keyed = snprintf(key, sizeof key, "%s\x1f%lld\x1f%s\x1f%s\x1f%s\x1f%s", a.account_id_str,
                         (long long)limit, after ? after : "", state ? state : "",
                         model ? model : "", name ? name : "") < (int)sizeof key;
    if (ttl > 0 && keyed && (cached = list_cached(key, &cached_len)) != NULL) {
        ctl_db_done(req, c);
        httpd_reply_raw(req, 200, "application/json", cached, cached_len);
        free(cached);
        return;
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%lld", (long long)limit + 1); /* one more: is there a next page? */
    const char *p[] = {a.account_id_str, state, model, name, after, lim};
    PGresult *r;
    enum db_status st = db_exec_prepared(
        c, "api_list_endpoints",
        "SELECT e.id, " ENDPOINT_JSON " " ENDPOINT_FROM "WHERE e.account_id = $1::bigint "
        "  AND (e.state = $2 OR ($2::text IS NULL AND e.state <> 'deleted')) "
        "  AND ($3::text IS NULL OR m.name = $3) AND ($4::text IS NULL OR e.name = $4) "
        "  AND ($5::uuid IS NULL OR (e.created_at, e.id) > (SELECT x.created_at, x.id "
        "       FROM endpoints x WHERE x.id = $5::uuid AND x.account_id = $1::bigint)) "
        "ORDER BY e.created_at, e.id LIMIT $6::int",
        6, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not list endpoints");
        return;
    }
    /* The page is assembled from the statement's JSON texts: no parsing, no re-serializing. */
    int n = PQntuples(r), more = n > limit;
    if (more) n = (int)limit;
    struct buf b = {0};
    int ok = buf_printf(&b, "{\"object\":\"list\",\"data\":[") == 0;
    for (int i = 0; i < n && ok; i++)
        ok = (!i || buf_append(&b, ",", 1) == 0) &&
             buf_append(&b, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1)) == 0;
    ok = ok && buf_printf(&b, "],\"has_more\":%s", more ? "true" : "false") == 0;
    if (more) /* the cursor is an endpoint id, a uuid: nothing to escape */
        ok = ok && buf_printf(&b, ",\"next_starting_after\":\"%s\"", PQgetvalue(r, n - 1, 0)) == 0;
    ok = ok && buf_append(&b, "}", 1) == 0;
    PQclear(r);
    if (ok && ttl > 0 && keyed) list_remember(key, gen, b.data, b.len, ttl);
    if (ok)
        httpd_reply_raw(req, 200, "application/json", b.data, b.len);
    else
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
    buf_free(&b);
}

/* For routes on /v1/endpoints/{id}: the caller authenticated, and an id that cannot exist answered
 * 404 before any query. NULL after answering. */
static PGconn *endpoint_route(struct httpd_req *req, struct auth_ctx *a)
{
    PGconn *c = auth_db(req, a);
    if (c && !api_is_uuid(req->params[0])) {
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist",
                    req->params[0]);
        ctl_db_done(req, c);
        return NULL;
    }
    return c;
}

static void h_get_endpoint(struct httpd_req *req)
{
    const char *id = req->params[0];
    struct auth_ctx a;
    PGconn *c = endpoint_route(req, &a);
    if (!c) return;
    reply_endpoint(req, c, a.account_id_str, id, 200);
    ctl_db_done(req, c);
}

/* GET /v1/endpoints/{id}/replicas[?include_stopped=true]: the replicas with state, reason, host and
 * devices; stopped ones (history of earlier placements) only when asked. */
static void h_list_replicas(struct httpd_req *req)
{
    const char *all = httpd_query(req, "include_stopped");
    if (all && strcmp(all, "true") && strcmp(all, "false")) {
        httpd_error(req, 400, "invalid_parameter", "include_stopped",
                    "query parameter 'include_stopped' must be true or false");
        return;
    }
    struct auth_ctx a;
    PGconn *c = endpoint_route(req, &a);
    if (!c) return;
    const char *p[] = {req->params[0], a.account_id_str, all && !strcmp(all, "true") ? "t" : "f"};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT (SELECT COALESCE(json_agg(" REPLICA_JSON " ORDER BY r.ordinal, r.created_at), "
        "  '[]') FROM replicas r LEFT JOIN hosts h ON h.id = r.host_id "
        "  WHERE r.endpoint_id = e.id AND (r.state <> 'stopped' OR $3::boolean)) "
        "FROM endpoints e WHERE e.id = $1::uuid AND e.account_id = $2::bigint",
        3, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not read the replicas");
    } else if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist",
                    req->params[0]);
    } else {
        json_t *data = json_row(r, 0);
        PQclear(r);
        httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
}

struct delete_ep {
    const char *id, *acct;
    int found;
};

static enum db_status delete_ep_txn(PGconn *c, void *arg)
{
    struct delete_ep *de = arg;
    const char *p[] = {de->id, de->acct};
    enum db_status st = db_cmd(c,
                               "UPDATE endpoints SET state = 'deleted', deleted_at = now() "
                               "WHERE id = $1::uuid AND account_id = $2::bigint "
                               "AND state <> 'deleted'",
                               2, p);
    if (st != DB_ROWS) return st;
    de->found = 1;
    return replica_stop_endpoint(c, de->id);
}

static void h_delete_endpoint(struct httpd_req *req)
{
    const char *id = req->params[0];
    struct auth_ctx a;
    PGconn *c = endpoint_route(req, &a);
    if (!c) return;
    struct delete_ep de = {id, a.account_id_str, 0};
    enum db_status st = db_txn_run(c, delete_ep_txn, &de);
    if (st < 0)
        httpd_error(req, 500, "internal_error", NULL, "could not delete the endpoint");
    else if (!de.found)
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
    else {
        api_endpoints_changed();
        log_info("endpoint %s deleted", id);
        reply_endpoint(req, c, a.account_id_str, id, 200);
    }
    ctl_db_done(req, c);
}

/* ---- stop and start ---- */

struct toggle_ep {
    const char *id, *acct, *to;
    int found;
};

static enum db_status toggle_txn(PGconn *c, void *arg)
{
    struct toggle_ep *t = arg;
    const char *p[] = {t->id, t->acct, t->to};
    PGresult *r;
    /* Only a real change counts: stopping a stopped endpoint changes nothing. */
    enum db_status st = db_exec(c,
                                "UPDATE endpoints SET state = $3, "
                                "  state_reason = CASE WHEN $3 = 'stopped' THEN 'stopped by its "
                                "owner' ELSE '' END "
                                "WHERE id = $1::uuid AND account_id = $2::bigint "
                                "  AND state IN ('active', 'stopped') AND state <> $3 "
                                "RETURNING replicas",
                                3, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    char n[16];
    snprintf(n, sizeof n, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    t->found = 1;
    if (!strcmp(t->to, "stopped")) return replica_stop_endpoint(c, t->id);
    /* Started again: fresh replicas, placed like new ones (the old ones are stopped or still
     * stopping; their devices free up as they finish). */
    const char *p2[] = {t->id, t->acct, n};
    return db_cmd(c,
                  "INSERT INTO replicas (endpoint_id, account_id, ordinal, reason) "
                  "SELECT $1::uuid, $2::bigint, g, 'waiting for the scheduler' "
                  "FROM generate_series(0, $3::int - 1) g",
                  3, p2);
}

static void toggle_endpoint(struct httpd_req *req, const char *to)
{
    struct auth_ctx a;
    PGconn *c = endpoint_route(req, &a);
    if (!c) return;
    const char *id = req->params[0];
    if (!strcmp(to, "active")) {
        int64_t balance = 0;
        const char *p[] = {id, a.account_id_str};
        PGresult *r;
        if (billing_balance(c, a.account_id_str, &balance) < 0 ||
            db_exec(c,
                    "SELECT gpus_per_replica * replicas FROM endpoints WHERE id = $1::uuid "
                    "AND account_id = $2::bigint AND state = 'stopped'",
                    2, p, &r, NULL) < 0) {
            httpd_error(req, 503, "database_unavailable", NULL, "try again");
            goto out;
        }
        int64_t devices = PQntuples(r) ? db_int(r, 0, 0) : 0;
        PQclear(r);
        if (balance <= 0) {
            httpd_error(req, 402, "insufficient_balance", NULL,
                        "your balance is used up; add credit before starting");
            goto out;
        }
        if (devices && check_quota(req, c, a.account_id_str, devices, 0) != 0) goto out;
    }
    struct toggle_ep t = {id, a.account_id_str, to, 0};
    enum db_status st = db_txn_run(c, toggle_txn, &t);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not change the endpoint");
        goto out;
    }
    if (t.found) {
        api_endpoints_changed();
        log_info("endpoint %s %s by its owner", id, to);
    }
    /* Already in that state (or deleted): the endpoint as it is, or 404 when not there. */
    reply_endpoint(req, c, a.account_id_str, id, 200);
out:
    ctl_db_done(req, c);
}

static void h_stop_endpoint(struct httpd_req *req)
{
    toggle_endpoint(req, "stopped");
}

static void h_start_endpoint(struct httpd_req *req)
{
    toggle_endpoint(req, "active");
}

/* ---- scale ---- */

struct scale_ep {
    const char *id, *acct;
    int64_t want;   /* 0: unchanged */
    char *selector; /* host_selector as JSON text (malloc'd); NULL: unchanged */
    int found, active;
};

/* Sets the replica count and the host selector. An active endpoint gets new pending replicas, or
 * loses its highest-numbered ones (pending ones stop at once, running ones go through stopping); a
 * stopped endpoint only records the count for its next start. A new selector applies to replicas
 * placed from now on (pending ones included); running replicas stay where they are. */
static enum db_status scale_txn(PGconn *c, void *arg)
{
    struct scale_ep *sc = arg;
    char want[24];
    snprintf(want, sizeof want, "%lld", (long long)sc->want);
    const char *p[] = {sc->id, sc->acct, sc->want ? want : NULL, sc->selector};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "UPDATE endpoints SET replicas = COALESCE($3::int, replicas), "
                                "  host_selector = COALESCE($4::jsonb, host_selector) "
                                "WHERE id = $1::uuid AND account_id = $2::bigint "
                                "  AND state <> 'deleted' RETURNING state",
                                4, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    sc->found = 1;
    sc->active = !strcmp(PQgetvalue(r, 0, 0), "active");
    PQclear(r);
    if (!sc->active || !sc->want) return DB_ROWS;
    /* Live replicas, highest ordinal first; a drain's extra replacement is not counted twice. */
    st = db_exec(c,
                 "SELECT id, ordinal, state FROM replicas WHERE endpoint_id = $1::uuid "
                 "  AND state NOT IN ('stopping', 'stopped') "
                 "ORDER BY ordinal DESC, created_at DESC FOR UPDATE",
                 1, p, &r, NULL);
    if (st < 0) return st;
    int live = PQntuples(r), top = live ? (int)db_int(r, 0, 1) : -1;
    for (int i = 0; i < live - sc->want && st >= 0; i++) {
        const char *to = !strcmp(PQgetvalue(r, i, 2), "pending") ? "stopped" : "stopping";
        st = replica_transition(c, PQgetvalue(r, i, 0), 0, 0, to, "scaled down", 0, -1);
    }
    PQclear(r);
    if (st < 0 || live >= sc->want) return st < 0 ? st : DB_ROWS;
    char from[24], n[24];
    snprintf(from, sizeof from, "%d", top + 1);
    snprintf(n, sizeof n, "%lld", (long long)(sc->want - live));
    const char *p2[] = {sc->id, sc->acct, from, n};
    return db_cmd(c,
                  "INSERT INTO replicas (endpoint_id, account_id, ordinal, reason) "
                  "SELECT $1::uuid, $2::bigint, $3::int + g, 'waiting for the scheduler' "
                  "FROM generate_series(0, $4::int - 1) g",
                  4, p2);
}

static const char *const scale_fields[] = {"replicas", "host_selector", NULL};

/* PATCH /v1/endpoints/{id} {"replicas": N, "host_selector": {...}}: scale, or choose hosts. */
static void h_patch_endpoint(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = endpoint_route(req, &a);
    if (!c) return;
    struct scale_ep sc = {req->params[0], a.account_id_str, 0, NULL, 0, 0};
    json_t *body = httpd_body_object(req);
    if (!body || httpd_reject_unknown(req, body, scale_fields) != 0) goto out;
    struct jsonx_err je = {0};
    enum jsonx_rc rc = jsonx_get_int(body, "replicas", 0, 1, 16, &sc.want, &je);
    if (rc == JSONX_BAD) {
        httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
        goto out;
    }
    if (get_selector(req, body, &sc.selector) != 0) goto out;
    if (!sc.want && !sc.selector) {
        httpd_error(req, 400, "missing_parameter", "replicas",
                    "give 'replicas', 'host_selector' or both");
        goto out;
    }
    /* Growing needs quota for the added devices. */
    const char *p[] = {sc.id, sc.acct};
    PGresult *r;
    if (db_exec(c,
                "SELECT gpus_per_replica, replicas FROM endpoints WHERE id = $1::uuid "
                "AND account_id = $2::bigint AND state = 'active'",
                2, p, &r, NULL) < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "try again");
        goto out;
    }
    int64_t add = PQntuples(r) && sc.want ? (sc.want - db_int(r, 0, 1)) * db_int(r, 0, 0) : 0;
    PQclear(r);
    if (add > 0 && check_quota(req, c, sc.acct, add, 0) != 0) goto out;
    enum db_status st = db_txn_run(c, scale_txn, &sc);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not scale the endpoint");
        goto out;
    }
    if (!sc.found) {
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", sc.id);
        goto out;
    }
    api_endpoints_changed();
    if (sc.want) log_info("endpoint %s scaled to %lld replica(s)", sc.id, (long long)sc.want);
    if (sc.selector) log_info("endpoint %s: host selector %s", sc.id, sc.selector);
    reply_endpoint(req, c, a.account_id_str, sc.id, 200);
out:
    free(sc.selector);
    json_decref(body);
    ctl_db_done(req, c);
}

/* ---- the console's static files ---- */

static const struct {
    const char *ext, *type;
} mime[] = {{".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
            {".css", "text/css; charset=utf-8"},   {".svg", "image/svg+xml"},
            {".json", "application/json"},         {".png", "image/png"}};

static void h_static(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const char *rel = req->params[0];
    if (!*rel) rel = "index.html";
    /* Only plain names under web/: no "..", no hidden files, no absolute paths. */
    if (strstr(rel, "..") || rel[0] == '/' || rel[0] == '.' || strstr(rel, "/.")) {
        httpd_error(req, 404, "not_found", NULL, "no such file");
        return;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", l->ctl->cfg.web_dir, rel);
    size_t len;
    char *data = util_read_file(path, &len);
    if (!data) {
        httpd_error(req, 404, "not_found", NULL, "no such file: /%s", rel);
        return;
    }
    const char *type = "application/octet-stream";
    const char *dot = strrchr(rel, '.');
    for (size_t i = 0; dot && i < sizeof mime / sizeof mime[0]; i++)
        if (!strcmp(dot, mime[i].ext)) type = mime[i].type;
    httpd_reply_raw(req, 200, type, data, len);
    free(data);
}

const struct httpd_route api_routes[] = {
    {"GET", "/healthz", h_healthz},
    {"GET", "/v1/catalog", h_catalog},
    {"POST", "/v1/endpoints", h_create_endpoint},
    {"GET", "/v1/endpoints", h_list_endpoints},
    {"GET", "/v1/endpoints/{}", h_get_endpoint},
    {"DELETE", "/v1/endpoints/{}", h_delete_endpoint},
    {"PATCH", "/v1/endpoints/{}", h_patch_endpoint},
    {"POST", "/v1/endpoints/{}/stop", h_stop_endpoint},
    {"POST", "/v1/endpoints/{}/start", h_start_endpoint},
    {"GET", "/v1/endpoints/{}/replicas", h_list_replicas},
    {"GET", "/*", h_static},
};
const size_t api_nroutes = sizeof api_routes / sizeof api_routes[0];
