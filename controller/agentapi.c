/* agentapi: see agentapi.h. Input from agents is validated like any client's: a malformed
 * report gets a 400 and a warning, never a crash, and never changes state half-way (each
 * heartbeat is one transaction). */
#include "agentapi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "ctl.h"
#include "jsonx.h"
#include "log.h"
#include "replica.h"
#include "util.h"

#define AGENT_MAX_DEVICES 64        /* per host: an 8-GPU box, or CPU slots for development */
#define AGENT_MAX_REPLICAS 128      /* reports per heartbeat */
#define AGENT_MAX_USAGE 1000        /* usage items per heartbeat; the agent sends at most 500 */
#define AGENT_MAX_LOGS 2000         /* log lines per heartbeat; the agent sends at most 1 000 */
#define AGENT_LOG_LINE_MAX 4096     /* bytes of one log line; the agent cuts lines at 2 048 */
#define AGENT_MAX_CACHED_MODELS 256 /* models named in one disk report */
/* Log lines kept per replica: what a customer scrolls back through in the console; older lines
 * are deleted as new ones arrive, so the table stays bounded by live replicas × this. */
#define LOGS_KEEP_PER_REPLICA 2000
/* Advisory lock class of log inserts (the second key is the endpoint): see schema 011. */
#define LOGS_LOCK_CLASS 7311100

/* ---- register ---- */

/* Who may register, in the order reg_txn checks them:
 *   - the host itself, re-registering under its name with its current host key (its inventory
 *     changed, or it lost the key's acceptance and tries it first);
 *   - the controller's static --agent-token (development and small fleets; anyone holding it can
 *     enroll any name), unless the name was revoked;
 *   - a one-time enrollment token, consumed in the same transaction; it may also bring a revoked
 *     name back, since an operator issued it on purpose.
 * Anything else is a 401; a revoked name with the static token or an old key is a 403. */
enum reg_outcome { REG_OK = 0, REG_UNAUTHORIZED, REG_REVOKED };

struct reg {
    const char *name, *address, *version;
    const char *token; /* the bearer credential, borrowed */
    int static_ok;     /* token is the controller's --agent-token */
    json_t *devices;
    char key[65];
    int64_t host_id;
    enum reg_outcome outcome;
};

/* Checks g->token against the host row of g->name and the enrollment tokens. On REG_OK,
 * *token_id is the enrollment token to mark used (0: none) and *pool the pool it names (NULL:
 * none; points into *tok_res, which the caller PQclear()s). */
static enum db_status reg_authorize(PGconn *c, struct reg *g, char *token_hash, int64_t *token_id,
                                    const char **pool, PGresult **tok_res)
{
    *token_id = 0;
    *pool = NULL;
    *tok_res = NULL;
    const char *ph[] = {g->name, token_hash};
    PGresult *r;
    /* FOR UPDATE: a revoke running now waits for us, or we see its result. */
    enum db_status st = db_exec(c,
                                "SELECT state = 'revoked', key_hash = $2 FROM hosts "
                                "WHERE name = $1 FOR UPDATE",
                                2, ph, &r, NULL);
    if (st < 0) return st;
    int exists = st == DB_ROWS, revoked = exists && PQgetvalue(r, 0, 0)[0] == 't',
        own_key = exists && PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (own_key && !revoked) return DB_ROWS;
    if (g->static_ok) {
        g->outcome = revoked ? REG_REVOKED : REG_OK;
        return DB_ROWS;
    }
    const char *pt[] = {token_hash};
    /* FOR UPDATE: of two registrations racing with one token, the second waits here and then
     * finds it used (READ COMMITTED re-checks the WHERE clause on the updated row). */
    st = db_exec(c,
                 "SELECT id, pool FROM enrollment_tokens WHERE token_hash = $1 "
                 "  AND used_at IS NULL AND expires_at > now() FOR UPDATE",
                 1, pt, &r, NULL);
    if (st < 0) return st;
    if (st == DB_NONE) {
        PQclear(r);
        /* A 401 also for a revoked name and its old key: that tells the caller nothing. */
        g->outcome = REG_UNAUTHORIZED;
        return DB_ROWS;
    }
    *token_id = db_int(r, 0, 0);
    if (!PQgetisnull(r, 0, 1)) *pool = PQgetvalue(r, 0, 1);
    *tok_res = r;
    return DB_ROWS;
}

static enum db_status reg_txn(PGconn *c, void *arg)
{
    struct reg *g = arg;
    g->outcome = REG_OK;
    char hash[65], token_hash[65];
    util_sha256_hex(g->key, strlen(g->key), hash);
    util_sha256_hex(g->token, strlen(g->token), token_hash);
    int64_t token_id;
    const char *pool;
    PGresult *tok_res;
    enum db_status st = reg_authorize(c, g, token_hash, &token_id, &pool, &tok_res);
    if (st < 0 || g->outcome != REG_OK) {
        PQclear(tok_res);
        return st < 0 ? st : DB_NONE; /* nothing was written: committing is harmless */
    }
    const char *p[] = {g->name, g->address, hash, g->version, pool};
    PGresult *r;
    st = db_exec(c,
                 "INSERT INTO hosts (name, address, key_hash, agent_version, pool) "
                 "VALUES ($1, $2, $3, $4, COALESCE($5, 'default')) "
                 "ON CONFLICT (name) DO UPDATE SET address = $2, "
                 "  key_hash = $3, agent_version = $4, state = 'ready', revoked_at = NULL, "
                 "  pool = COALESCE($5, hosts.pool), updated_at = now() "
                 "RETURNING id",
                 5, p, &r, NULL);
    PQclear(tok_res);
    if (st < 0) return st;
    g->host_id = db_int(r, 0, 0);
    PQclear(r);
    if (token_id) {
        char tid[24], hid[24];
        snprintf(tid, sizeof tid, "%lld", (long long)token_id);
        snprintf(hid, sizeof hid, "%lld", (long long)g->host_id);
        const char *pu[] = {tid, hid};
        st = db_cmd(c,
                    "UPDATE enrollment_tokens SET used_at = now(), used_by_host = $2::bigint "
                    "WHERE id = $1::bigint AND used_at IS NULL",
                    2, pu);
        if (st < 0) return st;
        if (st == DB_NONE) return DB_SOFT; /* cannot happen under the row lock; retry if it does */
    }
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)g->host_id);
    struct buf uuids = {0};
    buf_append(&uuids, "{", 1);
    size_t i;
    json_t *d;
    json_array_foreach(g->devices, i, d)
    {
        char idx[16], mem[24], numa[16], ecc[24], ret[16];
        snprintf(idx, sizeof idx, "%lld",
                 (long long)json_integer_value(json_object_get(d, "index")));
        snprintf(mem, sizeof mem, "%lld",
                 (long long)json_integer_value(json_object_get(d, "memory_mib")));
        /* Topology and health are optional (CPU slots, older agents): absent means unknown and
         * healthy. check_device() validated every present field. */
        json_t *jn = json_object_get(d, "numa_node"), *jh = json_object_get(d, "healthy");
        snprintf(numa, sizeof numa, "%lld", jn ? (long long)json_integer_value(jn) : -1LL);
        snprintf(ecc, sizeof ecc, "%lld",
                 (long long)json_integer_value(json_object_get(d, "ecc_errors")));
        snprintf(ret, sizeof ret, "%lld",
                 (long long)json_integer_value(json_object_get(d, "retired_pages")));
        const char *bus = json_string_value(json_object_get(d, "pci_bus_id"));
        json_t *peers = json_object_get(d, "nvlink_peers");
        char *peers_txt = peers ? jsonx_dump(peers) : NULL;
        const char *uuid = json_string_value(json_object_get(d, "uuid"));
        const char *pd[] = {hid,
                            idx,
                            uuid,
                            json_string_value(json_object_get(d, "kind")),
                            json_string_value(json_object_get(d, "model")),
                            mem,
                            numa,
                            bus ? bus : "",
                            peers_txt ? peers_txt : "[]",
                            !jh || json_is_true(jh) ? "t" : "f",
                            ecc,
                            ret};
        /* Inventory is written only when it changed. */
        st = db_cmd(c,
                    "INSERT INTO gpus (host_id, idx, uuid, kind, model, memory_mib, numa_node, "
                    "  pci_bus_id, nvlink_peers, healthy, ecc_errors, retired_pages) "
                    "VALUES ($1::bigint, $2::int, $3, $4, $5, $6::bigint, $7::int, $8, "
                    "  ARRAY(SELECT json_array_elements_text($9::json)), $10::boolean, "
                    "  $11::bigint, $12::int) "
                    "ON CONFLICT (uuid) DO UPDATE SET host_id = $1::bigint, idx = $2::int, "
                    "  kind = $4, model = $5, memory_mib = $6::bigint, numa_node = $7::int, "
                    "  pci_bus_id = $8, nvlink_peers = EXCLUDED.nvlink_peers, "
                    "  healthy = $10::boolean, ecc_errors = $11::bigint, retired_pages = $12::int "
                    "WHERE (gpus.host_id, gpus.idx, gpus.kind, gpus.model, gpus.memory_mib, "
                    "  gpus.numa_node, gpus.pci_bus_id, gpus.nvlink_peers, gpus.healthy, "
                    "  gpus.ecc_errors, gpus.retired_pages) IS DISTINCT FROM "
                    "  ($1::bigint, $2::int, $4, $5, $6::bigint, $7::int, $8, "
                    "   EXCLUDED.nvlink_peers, $10::boolean, $11::bigint, $12::int)",
                    12, pd);
        free(peers_txt);
        if (st < 0) {
            buf_free(&uuids);
            return st;
        }
        buf_printf(&uuids, "%s\"%s\"", i ? "," : "", uuid);
    }
    buf_append(&uuids, "}", 1);
    const char *pr[] = {hid, uuids.data};
    st = db_cmd(c, "DELETE FROM gpus WHERE host_id = $1::bigint AND NOT (uuid = ANY ($2::text[]))",
                2, pr);
    buf_free(&uuids);
    if (st < 0) return st;
    return db_cmd(c,
                  "INSERT INTO host_seen (host_id, seen_at) VALUES ($1::bigint, now()) "
                  "ON CONFLICT (host_id) DO UPDATE SET seen_at = now()",
                  1, pr);
}

/* Checks one device object; 0 or -1 with a 400 sent. */
static int check_device(struct httpd_req *req, json_t *d, size_t i)
{
    struct jsonx_err je = {0};
    const char *s;
    int64_t n;
    char where[32];
    snprintf(where, sizeof where, "devices[%zu]", i);
    if (!json_is_object(d)) {
        httpd_error(req, 400, "invalid_parameter", where, "%s must be an object", where);
        return -1;
    }
    if (jsonx_get_int(d, "index", 1, 0, 1024, &n, &je) != JSONX_OK ||
        jsonx_get_string(d, "uuid", 1, &s, 90, &je) != JSONX_OK ||
        jsonx_get_string(d, "model", 1, &s, 200, &je) != JSONX_OK ||
        jsonx_get_int(d, "memory_mib", 1, 0, INT64_C(1) << 40, &n, &je) != JSONX_OK ||
        jsonx_get_string(d, "kind", 1, &s, 8, &je) != JSONX_OK) {
        httpd_error(req, 400, "invalid_parameter", where, "%s: %s", where, je.message);
        return -1;
    }
    if (strcmp(s, "gpu") && strcmp(s, "cpu")) {
        httpd_error(req, 400, "invalid_parameter", where, "%s: kind must be gpu or cpu", where);
        return -1;
    }
    json_t *h = json_object_get(d, "healthy");
    if (jsonx_get_int(d, "numa_node", 0, -1, 1023, &n, &je) == JSONX_BAD ||
        jsonx_get_string(d, "pci_bus_id", 0, &s, 32, &je) == JSONX_BAD ||
        jsonx_get_int(d, "ecc_errors", 0, 0, INT64_MAX, &n, &je) == JSONX_BAD ||
        jsonx_get_int(d, "retired_pages", 0, 0, INT32_MAX, &n, &je) == JSONX_BAD ||
        (h && !json_is_boolean(h) &&
         snprintf(je.message, sizeof je.message, "field 'healthy' must be a boolean") > 0)) {
        httpd_error(req, 400, "invalid_parameter", where, "%s: %s", where, je.message);
        return -1;
    }
    json_t *peers = json_object_get(d, "nvlink_peers"), *p;
    size_t k;
    if (peers && (!json_is_array(peers) || json_array_size(peers) > AGENT_MAX_DEVICES)) {
        httpd_error(req, 400, "invalid_parameter", where,
                    "%s: nvlink_peers must be an array of at most %d GPU UUIDs", where,
                    AGENT_MAX_DEVICES);
        return -1;
    }
    json_array_foreach(peers, k, p)
    {
        /* UUIDs end up in a text[] the scheduler splits on commas: none allowed. */
        const char *u = json_string_value(p);
        if (!u || !u[0] || strlen(u) > 90 || strchr(u, ',')) {
            httpd_error(req, 400, "invalid_parameter", where,
                        "%s: nvlink_peers[%zu] must be a GPU UUID", where, k);
            return -1;
        }
    }
    return 0;
}

static void h_register(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const char *tok = auth_bearer(req);
    /* Enrollment tokens and host keys are at most this long; longer is garbage. */
    if (!tok || !tok[0] || strlen(tok) > 256) {
        httpd_error(req, 401, "invalid_agent_token", NULL, "invalid or missing agent token");
        return;
    }
    struct jsonx_err je = {0};
    json_t *body = httpd_body_object(req);
    if (!body) return;
    struct reg g = {0};
    g.version = "";
    g.token = tok;
    g.static_ok = l->ctl->cfg.agent_token && l->ctl->cfg.agent_token[0] &&
                  util_ct_streq(tok, l->ctl->cfg.agent_token);
    if (jsonx_get_string(body, "name", 1, &g.name, 120, &je) != JSONX_OK ||
        jsonx_get_string(body, "address", 1, &g.address, 120, &je) != JSONX_OK ||
        jsonx_get_string(body, "agent_version", 0, &g.version, 60, &je) == JSONX_BAD) {
        httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
        goto out;
    }
    g.devices = json_object_get(body, "devices");
    if (!json_is_array(g.devices) || json_array_size(g.devices) > AGENT_MAX_DEVICES) {
        httpd_error(req, 400, "invalid_parameter", "devices",
                    "field 'devices' must be an array of at most %d devices", AGENT_MAX_DEVICES);
        goto out;
    }
    size_t i;
    json_t *d;
    json_array_foreach(g.devices, i, d) if (check_device(req, d, i) != 0) goto out;
    if (util_random_hex(g.key, 32) != 0) {
        httpd_error(req, 500, "internal_error", NULL, "no randomness");
        goto out;
    }
    PGconn *c = ctl_db(req);
    if (!c) goto out;
    enum db_status st = db_txn_run(c, reg_txn, &g);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not register the host");
        goto out;
    }
    if (g.outcome == REG_UNAUTHORIZED) {
        httpd_error(req, 401, "invalid_agent_token", NULL,
                    "invalid, expired or already used enrollment token");
        goto out;
    }
    if (g.outcome == REG_REVOKED) {
        httpd_error(req, 403, "host_revoked", NULL,
                    "host '%s' was revoked; enroll it again with a new enrollment token", g.name);
        goto out;
    }
    log_info("host %s (id %lld, %s) registered with %zu device(s)", g.name, (long long)g.host_id,
             g.address, json_array_size(g.devices));
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)g.host_id);
    httpd_reply_json(req, 200,
                     json_pack("{s:s, s:s, s:I}", "host_id", hid, "host_key", g.key, "heartbeat_ms",
                               (json_int_t)l->ctl->cfg.heartbeat_ms));
out:
    json_decref(body);
}

/* ---- heartbeat ---- */

struct beat {
    int64_t host_id;
    json_t *replicas, *usage;
    json_t *logs;        /* the well-formed log lines, new reference */
    char disk_free[24];  /* "" when not reported */
    char *cached_models; /* JSON array text, NULL when not reported */
    char *log_ids;       /* text[] literal of the replicas they belong to */
    size_t logs_acked;
    json_t *desired; /* new reference, built inside the transaction */
    size_t usage_stored;
};

static const char *const report_states[] = {"downloading", "starting", "ready",
                                            "failed",      "stopped",  NULL};

static int check_reports(struct httpd_req *req, json_t *reps)
{
    size_t i;
    json_t *r;
    json_array_foreach(reps, i, r)
    {
        struct jsonx_err je = {0};
        const char *s;
        int64_t n;
        if (!json_is_object(r) || jsonx_get_string(r, "replica_id", 1, &s, 40, &je) != JSONX_OK ||
            (!api_is_uuid(s) &&
             snprintf(je.message, sizeof je.message, "replica_id is not a UUID") > 0) ||
            jsonx_get_int(r, "epoch", 1, 1, INT64_MAX, &n, &je) != JSONX_OK ||
            jsonx_get_int(r, "port", 0, 1, 65535, &n, &je) == JSONX_BAD ||
            jsonx_get_int(r, "restarts", 0, 0, INT32_MAX, &n, &je) == JSONX_BAD ||
            jsonx_get_string(r, "reason", 0, &s, 1000, &je) == JSONX_BAD ||
            jsonx_get_string(r, "state", 1, &s, 16, &je) != JSONX_OK) {
            httpd_error(req, 400, "invalid_parameter", "replicas", "replicas[%zu] is malformed%s%s",
                        i, je.message[0] ? ": " : "", je.message);
            return -1;
        }
        int ok = 0;
        for (const char *const *k = report_states; *k; k++)
            ok |= !strcmp(*k, s);
        if (!ok) {
            httpd_error(
                req, 400, "invalid_parameter", "replicas",
                "replicas[%zu].state '%s' is not one of downloading, starting, ready, failed, "
                "stopped",
                i, s);
            return -1;
        }
    }
    return 0;
}

/* 1 when a usage item is well-formed. A bad item is skipped (and counted as acknowledged, since
 * resending cannot fix it) rather than failing the whole heartbeat, which would block every good
 * line behind it. */
static int usage_item_ok(json_t *u, size_t i)
{
    struct jsonx_err je = {0};
    const char *s;
    int64_t n;
    if (!json_is_object(u) || jsonx_get_string(u, "request_id", 1, &s, 64, &je) != JSONX_OK ||
        jsonx_get_string(u, "replica_id", 1, &s, 40, &je) != JSONX_OK || !api_is_uuid(s) ||
        jsonx_get_int(u, "epoch", 1, 0, INT64_MAX, &n, &je) != JSONX_OK ||
        jsonx_get_int(u, "prompt_tokens", 1, 0, INT32_MAX, &n, &je) != JSONX_OK ||
        jsonx_get_int(u, "completion_tokens", 1, 0, INT32_MAX, &n, &je) != JSONX_OK ||
        jsonx_get_int(u, "at_ms", 1, 0, INT64_MAX, &n, &je) != JSONX_OK ||
        jsonx_get_string(u, "finish_reason", 0, &s, 32, &je) == JSONX_BAD) {
        log_warn("usage[%zu] from the agent is malformed and was dropped: %s", i,
                 je.message[0] ? je.message : "bad replica_id");
        return 0;
    }
    return 1;
}

static enum db_status apply_reports(PGconn *c, struct beat *b)
{
    size_t i;
    json_t *r;
    struct buf ids = {0};
    buf_append(&ids, "{", 1);
    json_array_foreach(b->replicas, i, r)
    {
        const char *id = json_string_value(json_object_get(r, "replica_id"));
        const char *state = json_string_value(json_object_get(r, "state"));
        const char *reason = json_string_value(json_object_get(r, "reason"));
        int64_t epoch = json_integer_value(json_object_get(r, "epoch"));
        json_t *port = json_object_get(r, "port"), *rs = json_object_get(r, "restarts");
        buf_printf(&ids, "%s\"%s\"", i ? "," : "", id);
        /* 'stopped' from the agent is reconciled by replica_reap_stopping below. */
        if (!strcmp(state, "stopped")) continue;
        enum db_status st = replica_transition(
            c, id, epoch, b->host_id, state,
            reason ? reason : (!strcmp(state, "ready") ? "" : NULL),
            port ? (int)json_integer_value(port) : 0, rs ? (int)json_integer_value(rs) : -1);
        if (st < 0) {
            buf_free(&ids);
            return st;
        }
    }
    buf_append(&ids, "}", 1);
    /* Stopped replicas are absent from the agent's list (or reported as stopped): a stopping
     * replica the agent no longer runs has released its devices. */
    struct buf running = {0};
    buf_append(&running, "{", 1);
    int n = 0;
    json_array_foreach(b->replicas, i, r)
    {
        if (!strcmp(json_string_value(json_object_get(r, "state")), "stopped")) continue;
        buf_printf(&running, "%s\"%s\"", n++ ? "," : "",
                   json_string_value(json_object_get(r, "replica_id")));
    }
    buf_append(&running, "}", 1);
    enum db_status st = replica_reap_stopping(c, b->host_id, running.data);
    buf_free(&running);
    buf_free(&ids);
    return st;
}

static enum db_status store_usage(PGconn *c, struct beat *b)
{
    size_t i;
    json_t *u;
    json_array_foreach(b->usage, i, u)
    {
        if (!usage_item_ok(u, i)) continue;
        char ep[24], pt[16], ct[16], at[24];
        snprintf(ep, sizeof ep, "%lld", (long long)json_integer_value(json_object_get(u, "epoch")));
        snprintf(pt, sizeof pt, "%lld",
                 (long long)json_integer_value(json_object_get(u, "prompt_tokens")));
        snprintf(ct, sizeof ct, "%lld",
                 (long long)json_integer_value(json_object_get(u, "completion_tokens")));
        snprintf(at, sizeof at, "%lld", (long long)json_integer_value(json_object_get(u, "at_ms")));
        const char *fr = json_string_value(json_object_get(u, "finish_reason"));
        const char *p[] = {json_string_value(json_object_get(u, "request_id")),
                           json_string_value(json_object_get(u, "replica_id")),
                           ep,
                           pt,
                           ct,
                           fr ? fr : "",
                           at};
        /* ON CONFLICT: the agent resends until acknowledged; a request is stored once. */
        enum db_status st = db_cmd(
            c,
            "INSERT INTO usage_events (request_id, account_id, endpoint_id, replica_id, epoch, "
            "  prompt_tokens, completion_tokens, finish_reason, at) "
            "SELECT $1, r.account_id, r.endpoint_id, r.id, $3::bigint, $4::int, $5::int, $6, "
            "  to_timestamp($7::bigint / 1000.0) "
            "FROM replicas r WHERE r.id = $2::uuid AND $3::bigint <= r.epoch "
            "ON CONFLICT (request_id) DO NOTHING",
            7, p);
        if (st < 0) return st;
    }
    b->usage_stored = json_array_size(b->usage);
    return DB_ROWS;
}

static enum db_status load_desired(PGconn *c, struct beat *b)
{
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)b->host_id);
    const char *p[] = {hid};
    PGresult *r;
    enum db_status st =
        db_exec(c,
                "SELECT r.id, r.epoch, m.name, m.source, e.name, array_to_json(r.devices), "
                "  e.device_kind, r.secret, e.gpus_per_replica, m.manifest::text "
                "FROM replicas r JOIN endpoints e ON e.id = r.endpoint_id "
                "JOIN models m ON m.id = e.model_id "
                "WHERE r.host_id = $1::bigint AND r.state IN ('assigned', 'downloading', "
                "'starting', 'ready', 'failed') "
                "ORDER BY r.created_at",
                1, p, &r, NULL);
    if (st < 0) return st;
    json_decref(b->desired);
    b->desired = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_error_t je;
        json_t *devs = json_loads(PQgetvalue(r, i, 5), 0, &je);
        const char *source = PQgetvalue(r, i, 3);
        json_t *d =
            json_pack("{s:s, s:I, s:s, s:s, s:s, s:o, s:s, s:s, s:I}", "replica_id",
                      PQgetvalue(r, i, 0), "epoch", (json_int_t)db_int(r, i, 1), "model",
                      PQgetvalue(r, i, 2), "source", source, "served_name", PQgetvalue(r, i, 4),
                      "devices", devs ? devs : json_array(), "device_kind", PQgetvalue(r, i, 6),
                      "secret", PQgetvalue(r, i, 7), "tp", (json_int_t)db_int(r, i, 8));
        if (!d) continue;
        /* model_path, for agents that predate the weights cache: a local directory only. */
        if (source[0] == '/')
            json_object_set_new(d, "model_path", json_string(source));
        else if (!strncmp(source, "file:///", 8))
            json_object_set_new(d, "model_path", json_string(source + 7));
        if (!PQgetisnull(r, i, 9)) {
            json_t *m = json_loads(PQgetvalue(r, i, 9), 0, &je);
            if (m) json_object_set_new(d, "manifest", m);
        }
        json_array_append_new(b->desired, d);
    }
    PQclear(r);
    return DB_ROWS;
}

static enum db_status beat_txn(PGconn *c, void *arg)
{
    struct beat *b = arg;
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)b->host_id);
    const char *p[] = {hid};
    const char *ps[] = {hid, b->disk_free[0] ? b->disk_free : NULL, b->cached_models};
    enum db_status st =
        db_cmd(c,
               "INSERT INTO host_seen (host_id, seen_at, disk_free_bytes, cached_models) "
               "VALUES ($1::bigint, now(), $2::bigint, "
               "  ARRAY(SELECT json_array_elements_text($3::json))) "
               "ON CONFLICT (host_id) DO UPDATE SET seen_at = now(), "
               "  disk_free_bytes = COALESCE($2::bigint, host_seen.disk_free_bytes), "
               "  cached_models = CASE WHEN $3::json IS NULL THEN host_seen.cached_models "
               "    ELSE ARRAY(SELECT json_array_elements_text($3::json)) END",
               3, ps);
    if (st < 0) return st;
    /* A host that was declared lost and comes back is usable again; its old replicas were
     * already placed elsewhere with new epochs, so its stale reports match nothing. */
    st = db_cmd(c,
                "UPDATE hosts SET state = 'ready', updated_at = now() "
                "WHERE id = $1::bigint AND state = 'lost'",
                1, p);
    if (st < 0) return st;
    if ((st = apply_reports(c, b)) < 0) return st;
    if ((st = store_usage(c, b)) < 0) return st;
    return load_desired(c, b);
}

/* Keeps the well-formed lines of logs (borrowed) in b->logs and their replica ids in b->log_ids.
 * A malformed line is dropped with a warning and counted as acknowledged: resending cannot fix it,
 * and refusing the heartbeat over it would block every good line behind it. */
static int pick_logs(struct beat *b, json_t *logs)
{
    b->logs = json_array();
    struct buf ids = {0};
    buf_append(&ids, "{", 1);
    size_t i, n = 0;
    json_t *u;
    json_array_foreach(logs, i, u)
    {
        struct jsonx_err je = {0};
        const char *rid = NULL, *stream = NULL, *line;
        int64_t v;
        if (!json_is_object(u) || jsonx_get_string(u, "replica_id", 1, &rid, 40, &je) != JSONX_OK ||
            !api_is_uuid(rid) || jsonx_get_int(u, "epoch", 1, 1, INT64_MAX, &v, &je) != JSONX_OK ||
            jsonx_get_string(u, "stream", 1, &stream, 8, &je) != JSONX_OK ||
            (strcmp(stream, "stdout") && strcmp(stream, "stderr")) ||
            jsonx_get_int(u, "pos", 1, 0, INT64_MAX, &v, &je) != JSONX_OK ||
            jsonx_get_int(u, "at_ms", 1, 0, INT64_C(253402300799999), &v, &je) != JSONX_OK ||
            jsonx_get_string(u, "line", 1, &line, AGENT_LOG_LINE_MAX, &je) != JSONX_OK ||
            /* PostgreSQL text cannot hold a NUL: one such line would fail every retry. */
            strlen(line) != json_string_length(json_object_get(u, "line"))) {
            log_warn("logs[%zu] from the agent is malformed and was dropped: %s", i,
                     je.message[0] ? je.message : "bad replica_id or stream");
            continue;
        }
        json_array_append(b->logs, u);
        if (!strstr(ids.data, rid)) buf_printf(&ids, "%s\"%s\"", n++ ? "," : "", rid);
    }
    buf_append(&ids, "}", 1);
    b->log_ids = ids.data;
    return 0;
}

/* Takes the optional "disk" report {"free_bytes": N, "cached_models": ["name", …]} into b. A
 * malformed one is ignored with a warning: the scheduler then keeps what it knew. */
static void pick_disk(struct beat *b, json_t *disk)
{
    struct jsonx_err je = {0};
    int64_t free_bytes = -1;
    json_t *cached = json_object_get(disk, "cached_models"), *v;
    size_t i;
    int ok = json_is_object(disk) &&
             jsonx_get_int(disk, "free_bytes", 1, -1, INT64_MAX, &free_bytes, &je) == JSONX_OK &&
             json_is_array(cached) && json_array_size(cached) <= AGENT_MAX_CACHED_MODELS;
    if (ok) json_array_foreach(cached, i, v)
        {
            const char *n = json_string_value(v);
            ok &= n && n[0] && strlen(n) <= 200;
        }
    if (!ok) {
        log_warn("host %lld: the disk report is malformed and was ignored: %s",
                 (long long)b->host_id, je.message[0] ? je.message : "bad cached_models");
        return;
    }
    if (free_bytes >= 0) snprintf(b->disk_free, sizeof b->disk_free, "%lld", (long long)free_bytes);
    b->cached_models = jsonx_dump(cached);
}

/* Stores b->logs once each (a resent line is known by its position) and prunes every replica it
 * touched to its last LOGS_KEEP_PER_REPLICA lines. A line is taken for the replica's current
 * placement only from the host it is placed on; lines of its earlier epochs from anyone who ran
 * them. */
static enum db_status logs_txn(PGconn *c, void *arg)
{
    struct beat *b = arg;
    char hid[24], keep[24];
    snprintf(hid, sizeof hid, "%lld", (long long)b->host_id);
    snprintf(keep, sizeof keep, "%d", LOGS_KEEP_PER_REPLICA - 1);
    char cls[16];
    snprintf(cls, sizeof cls, "%d", LOGS_LOCK_CLASS);
    const char *pl[] = {b->log_ids, cls};
    /* One endpoint's lines get their ids (event ids) in commit order: see schema 011. */
    enum db_status st =
        db_cmd(c,
               "SELECT pg_advisory_xact_lock($2::int, hashtext(e.endpoint_id::text)) FROM ("
               "  SELECT DISTINCT endpoint_id FROM replicas WHERE id = ANY ($1::uuid[]) "
               "  ORDER BY endpoint_id) e",
               2, pl);
    if (st < 0) return st;
    char *txt = jsonx_dump(b->logs);
    if (!txt) return DB_HARD;
    const char *pi[] = {txt, hid};
    st = db_cmd(c,
                "INSERT INTO replica_logs (replica_id, endpoint_id, account_id, epoch, stream, "
                "  pos, at, line) "
                "SELECT r.id, r.endpoint_id, r.account_id, x.epoch, x.stream, x.pos, "
                "  to_timestamp(x.at_ms / 1000.0), x.line "
                "FROM json_to_recordset($1::json) AS x(replica_id uuid, epoch bigint, "
                "  stream text, pos bigint, at_ms bigint, line text) "
                "JOIN replicas r ON r.id = x.replica_id "
                "WHERE x.epoch < r.epoch OR (x.epoch = r.epoch AND r.host_id = $2::bigint) "
                "ORDER BY x.at_ms, x.replica_id, x.stream, x.pos "
                "ON CONFLICT (replica_id, epoch, stream, pos) DO NOTHING",
                2, pi);
    free(txt);
    if (st < 0) return st;
    const char *pp[] = {b->log_ids, keep};
    st = db_cmd(c,
                "DELETE FROM replica_logs l USING ("
                "  SELECT k.id, (SELECT x.id FROM replica_logs x WHERE x.replica_id = k.id "
                "                ORDER BY x.id DESC OFFSET $2::int LIMIT 1) AS oldest "
                "  FROM unnest($1::uuid[]) AS k(id)) k "
                "WHERE l.replica_id = k.id AND l.id < k.oldest",
                2, pp);
    return st < 0 ? st : DB_ROWS;
}

static void h_heartbeat(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const char *key = auth_bearer(req);
    if (!key || strlen(key) != 64) {
        httpd_error(req, 401, "invalid_host_key", NULL, "invalid or missing host key");
        return;
    }
    json_t *body = httpd_body_object(req);
    if (!body) return;
    struct beat b = {0};
    b.replicas = json_object_get(body, "replicas");
    b.usage = json_object_get(body, "usage");
    if (!b.replicas)
        b.replicas = json_array(); /* new reference; see the decref below */
    else
        json_incref(b.replicas);
    if (!b.usage)
        b.usage = json_array();
    else
        json_incref(b.usage);
    if (!json_is_array(b.replicas) || json_array_size(b.replicas) > AGENT_MAX_REPLICAS) {
        httpd_error(req, 400, "invalid_parameter", "replicas",
                    "field 'replicas' must be an array of at most %d reports", AGENT_MAX_REPLICAS);
        goto out;
    }
    if (!json_is_array(b.usage) || json_array_size(b.usage) > AGENT_MAX_USAGE) {
        httpd_error(req, 400, "invalid_parameter", "usage",
                    "field 'usage' must be an array of at most %d items", AGENT_MAX_USAGE);
        goto out;
    }
    json_t *logs = json_object_get(body, "logs");
    if (logs && (!json_is_array(logs) || json_array_size(logs) > AGENT_MAX_LOGS)) {
        httpd_error(req, 400, "invalid_parameter", "logs",
                    "field 'logs' must be an array of at most %d lines", AGENT_MAX_LOGS);
        goto out;
    }
    if (check_reports(req, b.replicas) != 0) goto out;
    if (logs) pick_logs(&b, logs);
    PGconn *c = ctl_db(req);
    if (!c) goto out;
    char hash[65];
    util_sha256_hex(key, strlen(key), hash);
    const char *p[] = {hash};
    PGresult *r;
    enum db_status st = db_exec(
        c, "SELECT id FROM hosts WHERE key_hash = $1 AND state <> 'revoked'", 1, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        ctl_db_done(req, c);
        if (st < 0)
            httpd_error(req, 503, "database_unavailable", NULL, "try again");
        else
            httpd_error(req, 401, "invalid_host_key", NULL, "unknown host key: register again");
        goto out;
    }
    b.host_id = db_int(r, 0, 0);
    PQclear(r);
    json_t *disk = json_object_get(body, "disk");
    if (disk) pick_disk(&b, disk);
    st = db_txn_run(c, beat_txn, &b);
    /* Logs in a transaction of their own, after the heartbeat's: a problem storing them must not
     * cost the heartbeat, and the heartbeat's locks are not held while they are written. */
    if (st >= 0 && logs) {
        if (json_array_size(b.logs) == 0 || db_txn_run(c, logs_txn, &b) >= 0)
            b.logs_acked = json_array_size(logs);
        else
            log_warn("host %lld: could not store %zu log lines; the agent sends them again",
                     (long long)b.host_id, json_array_size(b.logs));
    }
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not record the heartbeat");
        goto out;
    }
    httpd_reply_json(req, 200,
                     json_pack("{s:o, s:I, s:I, s:I}", "desired", b.desired, "usage_acked",
                               (json_int_t)b.usage_stored, "logs_acked", (json_int_t)b.logs_acked,
                               "heartbeat_ms", (json_int_t)l->ctl->cfg.heartbeat_ms));
    b.desired = NULL;
out:
    json_decref(b.desired);
    json_decref(b.replicas);
    json_decref(b.usage);
    json_decref(b.logs);
    free(b.log_ids);
    free(b.cached_models);
    json_decref(body);
}

const struct httpd_route agentapi_routes[] = {
    {"POST", "/agent/v1/register", h_register},
    {"POST", "/agent/v1/heartbeat", h_heartbeat},
};
const size_t agentapi_nroutes = sizeof agentapi_routes / sizeof agentapi_routes[0];
