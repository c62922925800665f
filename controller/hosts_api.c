/* hosts_api: see hosts_api.h. Every route here is for admins only: a customer gets 403. Each
 * operation is one function on a connection (hosts_token_create, hosts_revoke, ...) that both the
 * REST route and the `orp-controller host` command line call, so the two cannot drift apart. */
#include "hosts_api.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "cfg.h"
#include "ctl.h"
#include "drain.h"
#include "idempotency.h"
#include "jsonx.h"
#include "labels.h"
#include "log.h"
#include "replica.h"
#include "util.h"

/* Enrollment tokens: an hour unless asked otherwise, a week at most. A token lets whoever holds it
 * join the fleet, so it should live about as long as installing a host takes; a week covers
 * shipping a preinstalled box. */
#define HOSTS_TOKEN_TTL_DEFAULT_S 3600
#define HOSTS_TOKEN_TTL_MAX_S (7 * 86400)
/* "orp_et_" + 48 hex digits: 192 random bits, like API keys; the prefix tells tokens apart. */
#define HOSTS_TOKEN_PREFIX "orp_et_"
#define HOSTS_TOKEN_HEX 48
#define HOSTS_POOL_MAX 63 /* endpoints name pools; the scheduler keeps 64 bytes per pool name */

/* One row per host, its devices aggregated: one query for the whole listing. */
#define HOSTS_QUERY                                                                                \
    "SELECT json_build_object('id', h.id::text, 'object', 'host', 'name', h.name, "                \
    "  'address', h.address, 'pool', h.pool, 'labels', h.labels, 'cordoned', h.cordoned, "         \
    "  'draining', h.draining, 'state', h.state, 'revoked_at', h.revoked_at, "                     \
    "  'agent_version', h.agent_version, 'last_seen_at', s.seen_at, "                              \
    "  'devices', (SELECT COALESCE(json_agg(json_build_object('index', g.idx, 'uuid', g.uuid, "    \
    "     'kind', g.kind, 'model', g.model, 'memory_mib', g.memory_mib, 'healthy', g.healthy, "    \
    "     'numa_node', g.numa_node, 'pci_bus_id', g.pci_bus_id, 'nvlink_peers', g.nvlink_peers, "  \
    "     'ecc_errors', g.ecc_errors, 'retired_pages', g.retired_pages, "                          \
    "     'utilization_percent', gs.utilization_percent, 'memory_used_mib', gs.memory_used_mib, "  \
    "     'temperature_c', gs.temperature_c, 'sampled_at', gs.sampled_at) "                        \
    "     ORDER BY g.kind, g.idx), '[]') FROM gpus g "                                             \
    "     LEFT JOIN gpu_samples gs ON gs.gpu_id = g.id WHERE g.host_id = h.id)) "                  \
    "FROM hosts h LEFT JOIN host_seen s ON s.host_id = h.id ORDER BY h.name"

/* A pooled connection for an admin, or NULL after answering 401, 403 or 503. */
static PGconn *admin_db(struct httpd_req *req, struct auth_ctx *a, const char *what)
{
    PGconn *c = auth_db(req, a);
    if (!c) return NULL;
    if (strcmp(a->role, "admin") != 0) {
        ctl_db_done(req, c);
        httpd_error(req, 403, "admin_only", NULL, "only the operator may %s", what);
        return NULL;
    }
    return c;
}

/* 1 when s is a host id as we print them (a positive decimal bigint). */
static int is_host_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18 || s[0] == '0') return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* A pool name, as endpoints name it: printable ASCII without spaces. */
static int is_pool_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > HOSTS_POOL_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~') return 0;
    return 1;
}

/* ---- enrollment tokens ---- */

enum db_status hosts_token_create(PGconn *c, int64_t ttl_s, const char *pool, int64_t key_id,
                                  char token[HOSTS_TOKEN_MAX + 1], json_t **out)
{
    char hex[HOSTS_TOKEN_HEX + 1], hash[65], ttl[24], kid[24], prefix[32];
    *out = NULL;
    if (util_random_hex(hex, HOSTS_TOKEN_HEX / 2) != 0) return DB_HARD;
    snprintf(token, HOSTS_TOKEN_MAX + 1, "%s%s", HOSTS_TOKEN_PREFIX, hex);
    util_sha256_hex(token, strlen(token), hash);
    snprintf(prefix, sizeof prefix, "%.13s", token); /* "orp_et_" and 6 hex digits */
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_s);
    snprintf(kid, sizeof kid, "%lld", (long long)key_id);
    const char *p[] = {hash, prefix, pool, ttl, key_id > 0 ? kid : NULL};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "INSERT INTO enrollment_tokens (token_hash, prefix, pool, expires_at, created_by) "
        "VALUES ($1, $2, $3, now() + $4::bigint * interval '1 second', "
        "  (SELECT user_id FROM api_keys WHERE id = $5::bigint)) "
        "RETURNING json_build_object('object', 'enrollment_token', 'id', id::text, "
        "  'prefix', prefix, 'pool', pool, 'created_at', created_at, 'expires_at', expires_at)",
        5, p, &r, NULL);
    if (st < 0) return st;
    json_error_t je;
    *out = json_loads(PQgetvalue(r, 0, 0), 0, &je);
    PQclear(r);
    if (!*out) return DB_HARD;
    /* The secret is shown once, here; only its hash is stored. */
    json_object_set_new(*out, "token", json_string(token));
    return DB_ROWS;
}

/* One token under an Idempotency-Key: the key is claimed first and the reply stored last, in the
 * token's own transaction. The stored reply has no secret (only its hash exists anywhere), so a
 * replay shows the token without it. */
struct new_token {
    int64_t ttl, key_id;
    const char *pool;
    struct idem im;
    char token[HOSTS_TOKEN_MAX + 1];
    json_t *tok; /* new reference, with the secret */
};

static enum db_status new_token_txn(PGconn *c, void *arg)
{
    struct new_token *nt = arg;
    json_decref(nt->tok);
    nt->tok = NULL;
    enum db_status st = idem_claim(c, &nt->im);
    if (st != DB_ROWS) return st;
    if ((st = hosts_token_create(c, nt->ttl, nt->pool, nt->key_id, nt->token, &nt->tok)) < 0)
        return st;
    json_t *stored = json_deep_copy(nt->tok);
    json_object_del(stored, "token");
    st = idem_store(c, &nt->im, 201, stored);
    json_decref(stored);
    return st;
}

static void h_create_token(struct httpd_req *req)
{
    static const char *const known[] = {"ttl_s", "pool", NULL};
    struct auth_ctx a;
    struct jsonx_err je = {0};
    struct new_token nt = {.ttl = HOSTS_TOKEN_TTL_DEFAULT_S};
    json_t *body = NULL;
    /* No body at all means every default. */
    if (req->body.len > 0 && !(body = httpd_body_object(req))) return;
    if (body && httpd_reject_unknown(req, body, known) != 0) goto out;
    if (body &&
        (jsonx_get_int(body, "ttl_s", 0, 1, HOSTS_TOKEN_TTL_MAX_S, &nt.ttl, &je) == JSONX_BAD ||
         jsonx_get_string(body, "pool", 0, &nt.pool, HOSTS_POOL_MAX, &je) == JSONX_BAD)) {
        httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
        goto out;
    }
    if (nt.pool && !is_pool_name(nt.pool)) {
        httpd_error(req, 400, "invalid_parameter", "pool",
                    "field 'pool' must be 1 to %d printable characters without spaces",
                    HOSTS_POOL_MAX);
        goto out;
    }
    PGconn *c = admin_db(req, &a, "create enrollment tokens");
    if (!c) goto out;
    char scope[40];
    snprintf(scope, sizeof scope, "account:%s", a.account_id_str);
    nt.key_id = a.key_id;
    if (idem_begin(req, &nt.im, scope, a.account_id, req->body.data, req->body.len) == 0 &&
        idem_replay(req, c, &nt.im) == 0) {
        enum db_status st = db_txn_run(c, new_token_txn, &nt);
        if (nt.im.replay) {
            idem_answer(req, &nt.im);
        } else if (st < 0 || !nt.tok) {
            httpd_error(req, 500, "internal_error", NULL, "could not create the token");
        } else {
            log_info("enrollment token %s created (pool %s, valid %lld s)",
                     json_string_value(json_object_get(nt.tok, "prefix")),
                     nt.pool ? nt.pool : "default", (long long)nt.ttl);
            httpd_reply_json(req, 201, json_incref(nt.tok));
        }
    }
    ctl_db_done(req, c);
out:
    json_decref(nt.tok);
    idem_free(&nt.im);
    memset(nt.token, 0, sizeof nt.token);
    json_decref(body);
}

/* ---- revoke ---- */

struct revoke {
    const char *id;
    json_t *host; /* new reference */
};

static enum db_status revoke_txn(PGconn *c, void *arg)
{
    struct revoke *rv = arg;
    const char *p[] = {rv->id};
    PGresult *r;
    /* The key hash becomes a word no SHA-256 hex digest equals: the host's key matches nothing,
     * and neither heartbeats nor re-registering with it get in. */
    enum db_status st =
        db_exec(c,
                "UPDATE hosts SET state = 'revoked', revoked_at = COALESCE(revoked_at, now()), "
                "  key_hash = 'revoked', draining = false, updated_at = now() "
                "WHERE id = $1::bigint "
                "RETURNING json_build_object('object', 'host', 'id', id::text, 'name', name, "
                "  'state', state, 'revoked_at', revoked_at), name",
                1, p, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    json_error_t je;
    json_decref(rv->host);
    rv->host = json_loads(PQgetvalue(r, 0, 0), 0, &je);
    char why[200];
    snprintf(why, sizeof why, "host %s was revoked", PQgetvalue(r, 0, 1));
    PQclear(r);
    if (!rv->host) return DB_HARD;
    st = replica_requeue_host(c, strtoll(rv->id, NULL, 10), why);
    return st < 0 ? st : DB_ROWS;
}

enum db_status hosts_revoke(PGconn *c, const char *id, json_t **host)
{
    struct revoke rv = {id, NULL};
    enum db_status st = db_txn_run(c, revoke_txn, &rv);
    *host = NULL;
    if (st == DB_ROWS) {
        *host = rv.host;
        log_warn("host %s (%s) revoked: its key no longer works, its replicas are placed again", id,
                 json_string_value(json_object_get(rv.host, "name")));
    } else {
        json_decref(rv.host);
    }
    return st;
}

/* For /v1/admin/hosts/{id}/...: an admin caller and an id that can exist (404 otherwise, before
 * any query). A connection, or NULL after answering. */
static PGconn *host_route(struct httpd_req *req, const char *what)
{
    struct auth_ctx a;
    PGconn *c = admin_db(req, &a, what);
    if (c && !is_host_id(req->params[0])) {
        ctl_db_done(req, c);
        httpd_error(req, 404, "not_found", NULL, "host %s does not exist", req->params[0]);
        return NULL;
    }
    return c;
}

static void h_revoke_host(struct httpd_req *req)
{
    const char *id = req->params[0];
    PGconn *c = host_route(req, "revoke hosts");
    if (!c) return;
    json_t *host;
    enum db_status st = hosts_revoke(c, id, &host);
    ctl_db_done(req, c);
    if (st < 0)
        httpd_error(req, 500, "internal_error", NULL, "could not revoke the host");
    else if (st == DB_NONE)
        httpd_error(req, 404, "not_found", NULL, "host %s does not exist", id);
    else
        httpd_reply_json(req, 200, host);
}

/* ---- cordon, uncordon, drain ---- */

/* What each scheduling action writes: cordoned (no new placement), draining (drain.c moves the
 * replicas away). Uncordon also ends a drain: the operator changed their mind. */
static const struct {
    const char *action;
    const char *cordoned, *draining; /* "t" / "f"; draining NULL: unchanged */
} host_actions[] = {
    {"cordon", "t", NULL},
    {"uncordon", "f", "f"},
    {"drain", "t", "t"},
};

/* Runs sql, an UPDATE of one host RETURNING its JSON, into *host (new reference). DB_NONE when no
 * row matched (no such host, or a revoked one). */
static enum db_status host_update(PGconn *c, const char *sql, int n, const char *const *p,
                                  json_t **host)
{
    *host = NULL;
    PGresult *r;
    enum db_status st = db_exec(c, sql, n, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    json_error_t je;
    *host = json_loads(PQgetvalue(r, 0, 0), 0, &je);
    PQclear(r);
    return *host ? DB_ROWS : DB_HARD;
}

enum db_status hosts_set_schedulable(PGconn *c, const char *id, const char *action, json_t **host)
{
    *host = NULL;
    size_t k = 0;
    while (k < sizeof host_actions / sizeof host_actions[0] &&
           strcmp(host_actions[k].action, action))
        k++;
    if (k == sizeof host_actions / sizeof host_actions[0]) return DB_HARD;
    const char *p[] = {id, host_actions[k].cordoned, host_actions[k].draining};
    /* A revoked host is not found: it schedules nothing either way. */
    enum db_status st = host_update(
        c,
        "UPDATE hosts SET cordoned = $2::boolean, draining = COALESCE($3::boolean, draining), "
        "  updated_at = now() WHERE id = $1::bigint AND state <> 'revoked' "
        "RETURNING json_build_object('object', 'host', 'id', id::text, 'name', name, "
        "  'state', state, 'cordoned', cordoned, 'draining', draining)",
        3, p, host);
    if (st != DB_ROWS) return st;
    log_info("host %s: %s", id, action);
    return DB_ROWS;
}

static void h_host_action(struct httpd_req *req, const char *action)
{
    const char *id = req->params[0];
    PGconn *c = host_route(req, "cordon, uncordon or drain hosts");
    if (!c) return;
    json_t *host;
    enum db_status st = hosts_set_schedulable(c, id, action, &host);
    ctl_db_done(req, c);
    if (st < 0)
        httpd_error(req, 500, "internal_error", NULL, "could not %s the host", action);
    else if (st == DB_NONE)
        httpd_error(req, 404, "not_found", NULL, "host %s does not exist or was revoked", id);
    else
        httpd_reply_json(req, 200, host);
}

static void h_cordon(struct httpd_req *req)
{
    h_host_action(req, "cordon");
}

static void h_uncordon(struct httpd_req *req)
{
    h_host_action(req, "uncordon");
}

static void h_drain(struct httpd_req *req)
{
    h_host_action(req, "drain");
}

/* ---- labels ---- */

/* Replaces the labels of host id (a JSON object labels_check accepted). DB_ROWS with *host (new
 * reference), DB_NONE when there is no such host or it was revoked. */
static enum db_status set_labels(PGconn *c, const char *id, const char *labels, json_t **host)
{
    const char *p[] = {id, labels};
    enum db_status st = host_update(c,
                                    "UPDATE hosts SET labels = $2::jsonb, updated_at = now() "
                                    "WHERE id = $1::bigint AND state <> 'revoked' "
                                    "RETURNING json_build_object('object', 'host', 'id', id::text, "
                                    "  'name', name, 'state', state, 'labels', labels)",
                                    2, p, host);
    if (st != DB_ROWS) return st;
    log_info("host %s: labels %s", id, labels);
    return DB_ROWS;
}

/* PUT /v1/admin/hosts/{id}/labels {"labels": {...}}: replaces the host's labels (an agent started
 * with --labels replaces them again when it registers). */
static void h_put_labels(struct httpd_req *req)
{
    static const char *const known[] = {"labels", NULL};
    const char *id = req->params[0];
    PGconn *c = host_route(req, "set host labels");
    if (!c) return;
    json_t *body = httpd_body_object(req), *host = NULL;
    struct jsonx_err je = {0};
    char *txt = NULL;
    if (!body || httpd_reject_unknown(req, body, known) != 0) goto out;
    json_t *labels = json_object_get(body, "labels");
    if (!labels) {
        httpd_error(req, 400, "missing_parameter", "labels", "field 'labels' is required");
        goto out;
    }
    if (labels_check(labels, "labels", &je) != 0) {
        httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
        goto out;
    }
    enum db_status st = (txt = jsonx_dump(labels)) ? set_labels(c, id, txt, &host) : DB_HARD;
    if (st < 0)
        httpd_error(req, 500, "internal_error", NULL, "could not set the host's labels");
    else if (st == DB_NONE)
        httpd_error(req, 404, "not_found", NULL, "host %s does not exist or was revoked", id);
    else
        httpd_reply_json(req, 200, host);
out:
    free(txt);
    json_decref(body);
    ctl_db_done(req, c);
}

/* ---- listing ---- */

static void h_list_hosts(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = admin_db(req, &a, "list hosts");
    if (!c) return;
    PGresult *r;
    enum db_status st = db_exec(c, HOSTS_QUERY, 0, NULL, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not list hosts");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_error_t je;
        json_t *h = json_loads(PQgetvalue(r, i, 0), 0, &je);
        if (h) json_array_append_new(data, h);
    }
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route hosts_routes[] = {
    {"GET", "/v1/admin/hosts", h_list_hosts},
    {"DELETE", "/v1/admin/hosts/{}", h_revoke_host},
    {"POST", "/v1/admin/enrollment-tokens", h_create_token},
    {"POST", "/v1/admin/hosts/{}/cordon", h_cordon},
    {"POST", "/v1/admin/hosts/{}/uncordon", h_uncordon},
    {"POST", "/v1/admin/hosts/{}/drain", h_drain},
    {"PUT", "/v1/admin/hosts/{}/labels", h_put_labels},
};
const size_t hosts_nroutes = sizeof hosts_routes / sizeof hosts_routes[0];

/* ---- command line ---- */

struct cli_opts {
    const char *database_url;
    int64_t ttl_s;
    const char *pool;
};

static const struct cfg_opt cli_opts[] = {
    {"database-url", CFG_STRING, "postgresql:///openrunpod", "PostgreSQL connection string",
     offsetof(struct cli_opts, database_url)},
    {"ttl-s", CFG_INT, "3600", "token create: seconds the token is valid (at most 604800)",
     offsetof(struct cli_opts, ttl_s)},
    {"pool", CFG_STRING, NULL, "token create: the pool the enrolled host joins [default: default]",
     offsetof(struct cli_opts, pool)},
};
#define CLI_NOPTS (sizeof cli_opts / sizeof cli_opts[0])

static const char cli_usage[] =
    "usage: orp-controller host list [--database-url URL]\n"
    "       orp-controller host token create [--ttl-s N] [--pool P] [--database-url URL]\n"
    "       orp-controller host revoke|cordon|uncordon|drain ID [--database-url URL]\n"
    "       orp-controller host drain-step [--database-url URL]\n"
    "       orp-controller host labels ID k=v,k2=v2 [--database-url URL] (\"\": none)\n";

/* Prints a JSON object on one line; steals o. */
static void print_json(json_t *o)
{
    char *txt = jsonx_dump(o);
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(o);
}

int hosts_cli(int argc, char **argv)
{
    const char *sub = argc >= 3 ? argv[2] : "";
    /* The words before the options: "list", "token create", "revoke ID". */
    int first = 3;
    const char *id = NULL, *labels = NULL;
    if (!strcmp(sub, "token") && argc >= 4 && !strcmp(argv[3], "create")) {
        first = 4;
    } else if (!strcmp(sub, "labels") && argc >= 5 && argv[3][0] != '-') {
        id = argv[3];
        labels = argv[4];
        first = 5;
    } else if ((!strcmp(sub, "revoke") || !strcmp(sub, "cordon") || !strcmp(sub, "uncordon") ||
                !strcmp(sub, "drain")) &&
               argc >= 4 && argv[3][0] != '-') {
        id = argv[3];
        first = 4;
    } else if (strcmp(sub, "list") != 0 && strcmp(sub, "drain-step") != 0) {
        fputs(cli_usage, stderr);
        return 2;
    }
    struct cli_opts o;
    char err[256];
    int rc = cfg_parse(cli_opts, CLI_NOPTS, &o, "ORP", argc, argv, first, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, cli_usage, cli_opts, CLI_NOPTS, "ORP");
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "orp-controller: %s\n", err);
        return 2;
    }
    if (!strcmp(sub, "token") && (o.ttl_s < 1 || o.ttl_s > HOSTS_TOKEN_TTL_MAX_S)) {
        fprintf(stderr, "orp-controller: --ttl-s must be between 1 and %d\n",
                HOSTS_TOKEN_TTL_MAX_S);
        return 2;
    }
    if (o.pool && !is_pool_name(o.pool)) {
        fprintf(stderr, "orp-controller: --pool must be 1 to %d printable characters\n",
                HOSTS_POOL_MAX);
        return 2;
    }
    if (id && !is_host_id(id)) {
        fprintf(stderr, "orp-controller: '%s' is not a host id (see host list)\n", id);
        return 2;
    }
    char *labels_json = NULL; /* labels as the PUT route takes them */
    if (labels) {
        struct jsonx_err je = {0};
        json_t *l = labels_parse(labels, &je);
        labels_json = l ? jsonx_dump(l) : NULL;
        json_decref(l);
        if (!labels_json) {
            fprintf(stderr, "orp-controller: %s\n", je.message[0] ? je.message : "out of memory");
            return 2;
        }
    }
    log_init("controller", "warn");
    PGconn *c = PQconnectdb(o.database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "orp-controller: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        free(labels_json);
        return 1;
    }
    enum db_status st;
    if (!strcmp(sub, "token")) {
        char token[HOSTS_TOKEN_MAX + 1];
        json_t *tok = NULL;
        st = hosts_token_create(c, o.ttl_s, o.pool, 0, token, &tok);
        if (st >= 0) {
            /* The token alone on stdout, so a script can capture it; its details on stderr. */
            char *txt = jsonx_dump(tok);
            fprintf(stderr, "%s\n", txt ? txt : "");
            free(txt);
            printf("%s\n", token);
        }
        json_decref(tok);
    } else if (!strcmp(sub, "revoke")) {
        json_t *host = NULL;
        st = hosts_revoke(c, id, &host);
        if (st == DB_NONE) fprintf(stderr, "orp-controller: host %s does not exist\n", id);
        if (st == DB_ROWS) print_json(host);
    } else if (labels_json) {
        json_t *host = NULL;
        st = set_labels(c, id, labels_json, &host);
        if (st == DB_NONE) fprintf(stderr, "orp-controller: host %s does not exist\n", id);
        if (st == DB_ROWS) print_json(host);
    } else if (id) {
        json_t *host = NULL;
        st = hosts_set_schedulable(c, id, sub, &host);
        if (st == DB_NONE) fprintf(stderr, "orp-controller: host %s does not exist\n", id);
        if (st == DB_ROWS) print_json(host);
    } else if (!strcmp(sub, "drain-step")) {
        /* One pass of what the leader does each interval: for tests and for operators who want
         * to watch a drain step by step. */
        int n = drain_pass(c);
        if (n >= 0) printf("%d\n", n);
        st = n < 0 ? DB_HARD : DB_ROWS;
    } else {
        PGresult *r;
        st = db_exec(c, HOSTS_QUERY, 0, NULL, &r, NULL);
        if (st >= 0) {
            for (int i = 0; i < PQntuples(r); i++)
                printf("%s\n", PQgetvalue(r, i, 0));
            PQclear(r);
            st = DB_ROWS;
        }
    }
    PQfinish(c);
    free(labels_json);
    return st == DB_ROWS ? 0 : 1;
}
