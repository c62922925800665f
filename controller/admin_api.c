/* admin_api: see admin_api.h.
 *
 * Objects are built as JSON by the statement that reads them (json_build_object), so a route is
 * one query and its reply cannot disagree with the row. Request bodies are checked against field
 * tables (name, type, range, shape) that also say which fields a create requires; an update takes
 * the same fields, each optional, and leaves what it does not name unchanged. */
#include "admin_api.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "audit.h"
#include "auth.h"
#include "billing_api.h"
#include "idempotency.h"
#include "jsonx.h"
#include "log.h"
#include "replica.h"

#define ADMIN_PAGE_MAX 200 /* rows per page: bounds one reply and one query */
#define ADMIN_PAGE_DEFAULT 50
#define SUSPEND_REASON_MAX 200
#define MODEL_NAME_MAX 100 /* catalog names: what customers type as "model" */
#define GPU_TYPE_NAME_MAX 63
#define PRICE_MAX INT64_C(1000000000000) /* 1 000 000 USD per unit: a typo must not stick */

/* ---- shared pieces ---- */

/* An admin caller, or NULL after answering 401/403/503. */
static PGconn *admin_db(struct httpd_req *req, struct auth_ctx *a)
{
    PGconn *c = auth_db(req, a);
    if (c && strcmp(a->role, "admin") != 0) {
        ctl_db_done(req, c);
        httpd_error(req, 403, "admin_only", NULL, "only the operator may do this");
        return NULL;
    }
    return c;
}

/* 1 when s is a positive decimal id as we print them. */
static int is_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18 || s[0] == '0') return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i])) return 0;
    return 1;
}

/* Catalog names: 1-100 of [A-Za-z0-9._-], starting with a letter or digit. */
static int is_model_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > MODEL_NAME_MAX || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i])) return 0;
    return 1;
}

/* GPU type names: 1-63 of [a-z0-9-], starting with a letter or digit ("h100-80gb"). */
static int is_gpu_type_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > GPU_TYPE_NAME_MAX ||
        !(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-') return 0;
    return 1;
}

static int is_sha256(const char *s)
{
    if (strlen(s) != 64) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s) && !(*s >= 'a' && *s <= 'f')) return 0;
    return 1;
}

/* Adds "<what>_display" beside every "<what>_micros"-like money field the replies carry. */
static void add_displays(json_t *o)
{
    static const struct {
        const char *micros, *display;
    } money[] = {{"balance_micros", "balance_display"}, {"micros_per_gpu_hour", "price_display"}};
    for (size_t i = 0; i < sizeof money / sizeof money[0]; i++) {
        json_t *v = json_object_get(o, money[i].micros);
        char d[48];
        if (!json_is_integer(v)) continue;
        billing_display((int64_t)json_integer_value(v), d, sizeof d);
        json_object_set_new(o, money[i].display, json_string(d));
    }
}

/* Row i, column col of r (JSON text) as an object with its displays; NULL if unparsable. */
static json_t *row_object(PGresult *r, int i, int col)
{
    json_error_t je;
    json_t *o = json_loads(PQgetvalue(r, i, col), 0, &je);
    if (o) add_displays(o);
    return o;
}

/* Replies with the one JSON object of r (column 0), or 500. Clears r. */
static void reply_row(struct httpd_req *req, PGresult *r, unsigned status)
{
    json_t *o = row_object(r, 0, 0);
    PQclear(r);
    if (!o)
        httpd_error(req, 500, "internal_error", NULL, "could not read the reply");
    else
        httpd_reply_json(req, status, o);
}

/* A page: r's column 0 is the cursor (id), column 1 the object; r holds limit + 1 rows at most,
 * the extra one only saying that there is more. Clears r. */
static void reply_page(struct httpd_req *req, PGresult *r, int64_t limit)
{
    int n = PQntuples(r), more = n > limit;
    if (more) n = (int)limit;
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = row_object(r, i, 1);
        if (o) json_array_append_new(data, o);
    }
    json_t *page = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", more);
    if (more)
        json_object_set_new(page, "next_starting_after", json_string(PQgetvalue(r, n - 1, 0)));
    PQclear(r);
    httpd_reply_json(req, 200, page);
}

/* Query parameters limit (1..ADMIN_PAGE_MAX) and starting_after (an id, newest first) as text for
 * the statement ("limit + 1": is there a next page?). 0, or -1 after answering 400. */
static int page_params(struct httpd_req *req, char lim[24], char aft[24], int64_t *limit)
{
    int64_t after;
    if ((*limit = httpd_query_int(req, "limit", ADMIN_PAGE_DEFAULT, ADMIN_PAGE_MAX)) < 0 ||
        (after = httpd_query_int(req, "starting_after", INT64_MAX, INT64_MAX)) < 0)
        return -1;
    snprintf(lim, 24, "%lld", (long long)*limit + 1);
    snprintf(aft, 24, "%lld", (long long)after);
    return 0;
}

static void bad_field(struct httpd_req *req, enum jsonx_rc rc, const struct jsonx_err *je)
{
    httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                je->param, "%s", je->message);
}

/* ---- body fields as tables ---- */

enum ftype { F_STR, F_INT, F_KINDS, F_REQS };

struct field {
    const char *name;
    enum ftype type;
    int required;                /* on create */
    int64_t min, max;            /* F_INT: range; F_STR: max is the length limit */
    int (*valid)(const char *s); /* F_STR: shape check, NULL for any printable text */
    const char *shape;           /* said when valid() fails */
};

#define MAX_FIELDS 12

/* The parsed values as statement parameters (NULL: not given). */
struct fvals {
    const char *p[MAX_FIELDS];
    char num[MAX_FIELDS][48];
    char *owned[MAX_FIELDS]; /* malloc'd texts (F_REQS), freed by fvals_free */
};

static void fvals_free(struct fvals *v)
{
    for (int i = 0; i < MAX_FIELDS; i++)
        free(v->owned[i]);
}

/* device_kinds: a non-empty array of distinct "gpu" / "cpu", as a text[] literal. */
static int parse_kinds(json_t *a, char out[48])
{
    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > 2) return -1;
    size_t i;
    json_t *k;
    strcpy(out, "{");
    json_array_foreach(a, i, k)
    {
        const char *s = json_string_value(k);
        if (!s || (strcmp(s, "gpu") && strcmp(s, "cpu")) || strstr(out, s)) return -1;
        strcat(out, i ? "," : "");
        strcat(out, s);
    }
    strcat(out, "}");
    return 0;
}

/* gpu_requirements: {"<gpu type>": {"min": 1..8, "recommended": min..8}, ...}; the types' existence
 * is checked by the statement. 0, or -1 with a message in why. */
static int parse_reqs(json_t *o, char *why, size_t n)
{
    if (!json_is_object(o) || json_object_size(o) > 32) {
        snprintf(why, n, "field 'gpu_requirements' must be an object of at most 32 GPU types");
        return -1;
    }
    const char *type;
    json_t *v;
    json_object_foreach(o, type, v)
    {
        static const char *const known[] = {"min", "recommended", NULL};
        struct jsonx_err je = {0};
        int64_t min = 0, rec = 0;
        int ok = is_gpu_type_name(type) && json_is_object(v);
        const char *key;
        json_t *x;
        if (ok) json_object_foreach(v, key, x)
            {
                int k = 0;
                while (known[k] && strcmp(known[k], key))
                    k++;
                ok = ok && known[k];
            }
        ok = ok && jsonx_get_int(v, "min", 1, 1, 8, &min, &je) == JSONX_OK &&
             jsonx_get_int(v, "recommended", 0, 1, 8, &rec, &je) != JSONX_BAD &&
             (!rec || rec >= min);
        if (!ok) {
            snprintf(why, n,
                     "field 'gpu_requirements' maps GPU type names to {\"min\": 1-8, "
                     "\"recommended\": min-8}; '%.64s' is not that",
                     type);
            return -1;
        }
    }
    return 0;
}

/* Reads every field of the table from body into v (create: required ones must be there).
 * 0, or -1 after answering 400. */
static int read_fields(struct httpd_req *req, json_t *body, const struct field *f, size_t nf,
                       int create, struct fvals *v)
{
    memset(v, 0, sizeof *v);
    for (size_t i = 0; i < nf; i++) {
        struct jsonx_err je = {0};
        enum jsonx_rc rc = JSONX_OK;
        json_t *raw = json_object_get(body, f[i].name);
        int req_here = create && f[i].required;
        if (f[i].type == F_STR) {
            const char *s = NULL;
            rc = jsonx_get_string(body, f[i].name, req_here, &s, (size_t)f[i].max, &je);
            if (rc == JSONX_OK && (f[i].valid ? !f[i].valid(s) : (!*s || !jsonx_printable(s)))) {
                httpd_error(req, 400, "invalid_parameter", f[i].name, "field '%s' must be %s",
                            f[i].name, f[i].shape ? f[i].shape : "non-empty printable text");
                return -1;
            }
            v->p[i] = rc == JSONX_OK ? s : NULL;
        } else if (f[i].type == F_INT) {
            int64_t n = 0;
            rc = jsonx_get_int(body, f[i].name, req_here, f[i].min, f[i].max, &n, &je);
            snprintf(v->num[i], sizeof v->num[i], "%lld", (long long)n);
            v->p[i] = rc == JSONX_OK ? v->num[i] : NULL;
        } else if (!raw || json_is_null(raw)) {
            rc = req_here ? JSONX_MISSING : JSONX_OK;
            snprintf(je.param, sizeof je.param, "%s", f[i].name);
            snprintf(je.message, sizeof je.message, "missing field '%s'", f[i].name);
        } else if (f[i].type == F_KINDS) {
            if (parse_kinds(raw, v->num[i]) != 0) {
                httpd_error(req, 400, "invalid_parameter", f[i].name,
                            "field '%s' must be a non-empty array of distinct \"gpu\" / \"cpu\"",
                            f[i].name);
                return -1;
            }
            v->p[i] = v->num[i];
        } else {
            char why[200];
            if (parse_reqs(raw, why, sizeof why) != 0) {
                httpd_error(req, 400, "invalid_parameter", f[i].name, "%s", why);
                return -1;
            }
            v->p[i] = v->owned[i] = jsonx_dump(raw);
        }
        if (rc != JSONX_OK && (rc == JSONX_BAD || req_here)) {
            bad_field(req, rc, &je);
            return -1;
        }
    }
    return 0;
}

/* The body of a create or update: an object with only the table's fields (update: not the first,
 * which names the object in the path). New reference, or NULL after answering 400. */
static json_t *read_body(struct httpd_req *req, const struct field *f, size_t nf, int create)
{
    const char *known[MAX_FIELDS + 1];
    size_t k = 0;
    for (size_t i = create ? 0 : 1; i < nf; i++)
        known[k++] = f[i].name;
    known[k] = NULL;
    json_t *body = httpd_body_object(req);
    if (body && httpd_reject_unknown(req, body, known) != 0) {
        json_decref(body);
        return NULL;
    }
    return body;
}

/* An Idempotency-Key'd create: runs make (inside a transaction that claims the key first and
 * stores the reply last) and answers 201 with its object, the stored reply of an earlier call,
 * 409 for a name that exists (make's unique violation), or 500. */
struct created {
    struct idem im;
    enum db_status (*make)(PGconn *c, struct created *cr);
    const struct fvals *v;
    const char *what;
    const char *reqs; /* gpu_requirements (JSON text) whose GPU types must exist, or NULL */
    int name_taken;
    char bad_type[80]; /* a gpu_requirements key that names no GPU type */
    json_t *reply;
};

/* DB_ROWS when every GPU type named in reqs (JSON text, may be NULL) exists; else DB_HARD with the
 * first stranger in cr->bad_type. */
static enum db_status check_gpu_types(PGconn *c, const char *reqs, struct created *cr)
{
    if (!reqs) return DB_ROWS;
    const char *p[] = {reqs};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT k FROM jsonb_object_keys($1::jsonb) k "
                                "WHERE NOT EXISTS (SELECT 1 FROM gpu_types g WHERE g.name = k) "
                                "LIMIT 1",
                                1, p, &r, NULL);
    if (st < 0) return st;
    if (st == DB_ROWS) snprintf(cr->bad_type, sizeof cr->bad_type, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return st == DB_ROWS ? DB_HARD : DB_ROWS;
}

static enum db_status created_txn(PGconn *c, void *arg)
{
    struct created *cr = arg;
    json_decref(cr->reply);
    cr->reply = NULL;
    cr->name_taken = 0;
    enum db_status st = idem_claim(c, &cr->im);
    if (st != DB_ROWS) return st;
    if ((st = check_gpu_types(c, cr->reqs, cr)) < 0) return st;
    if ((st = cr->make(c, cr)) != DB_ROWS) return st < 0 ? st : DB_HARD;
    return idem_store(c, &cr->im, 201, cr->reply);
}

static void create_object(struct httpd_req *req, struct created *cr)
{
    struct auth_ctx a;
    PGconn *c = admin_db(req, &a);
    if (!c) return;
    char scope[40];
    snprintf(scope, sizeof scope, "account:%s", a.account_id_str);
    if (idem_begin(req, &cr->im, scope, a.account_id, req->body.data, req->body.len) != 0 ||
        idem_replay(req, c, &cr->im) != 0)
        goto out;
    enum db_status st = db_txn_run(c, created_txn, cr);
    if (cr->im.replay)
        idem_answer(req, &cr->im);
    else if (cr->bad_type[0])
        httpd_error(req, 400, "invalid_parameter", "gpu_requirements",
                    "GPU type '%s' does not exist (see GET /v1/admin/gpu-types)", cr->bad_type);
    else if (st < 0 && cr->name_taken)
        httpd_error(req, 409, "name_taken", "name", "a %s of that name already exists", cr->what);
    else if (st < 0 || !cr->reply)
        httpd_error(req, 500, "internal_error", NULL, "could not create the %s", cr->what);
    else {
        audit_set_object(c, a.audit_id, json_string_value(json_object_get(cr->reply, "id")));
        log_info("%s %s created", cr->what, json_string_value(json_object_get(cr->reply, "id")));
        httpd_reply_json(req, 201, json_incref(cr->reply));
    }
out:
    json_decref(cr->reply);
    idem_free(&cr->im);
    ctl_db_done(req, c);
}

/* Runs sql (its first column: the object as JSON) into cr->reply; DB_NONE when no row. A unique
 * violation sets name_taken. */
static enum db_status one_object(PGconn *c, const char *sql, int n, const char *const *p,
                                 struct created *cr)
{
    PGresult *r;
    char ss[6] = "";
    enum db_status st = db_exec(c, sql, n, p, &r, ss);
    if (st < 0) {
        cr->name_taken = !strcmp(ss, "23505");
        return st;
    }
    if (st == DB_ROWS) cr->reply = row_object(r, 0, 0);
    PQclear(r);
    return st == DB_ROWS && !cr->reply ? DB_HARD : st;
}

/* ---- accounts ---- */

#define ACCOUNT_JSON                                                                               \
    "json_build_object('id', a.id::text, 'object', 'account', 'name', a.name, "                    \
    "  'created_at', a.created_at, 'suspended', a.suspended_at IS NOT NULL, "                      \
    "  'suspended_at', a.suspended_at, 'suspend_reason', a.suspend_reason, "                       \
    "  'operator', EXISTS (SELECT 1 FROM users u WHERE u.account_id = a.id AND u.role = "          \
    "'admin'), "                                                                                   \
    "  'balance_micros', (SELECT COALESCE(sum(l.amount_micros), 0) FROM ledger_entries l "         \
    "                     WHERE l.account_id = a.id), "                                            \
    "  'users', (SELECT count(*) FROM users u WHERE u.account_id = a.id), "                        \
    "  'endpoints', (SELECT count(*) FROM endpoints e WHERE e.account_id = a.id "                  \
    "                AND e.state <> 'deleted'))"

/* An admin listing: sql's $1 is the cursor, $2 the page size + 1, $3 (when nparams is 3) extra;
 * its rows are (id, object) newest first; with paged 0 the whole table is one page. */
static void admin_list(struct httpd_req *req, const char *sql, int nparams, const char *extra,
                       int paged, const char *what)
{
    char lim[24] = "1000000", aft[24] = "9223372036854775807";
    int64_t limit = INT64_MAX;
    if (paged && page_params(req, lim, aft, &limit) != 0) return;
    struct auth_ctx a;
    PGconn *c = admin_db(req, &a);
    if (!c) return;
    const char *p[] = {aft, lim, extra};
    PGresult *r;
    enum db_status st = db_exec(c, sql, nparams, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0)
        httpd_error(req, 503, "database_unavailable", NULL, "could not list %s", what);
    else
        reply_page(req, r, limit);
}

static void h_list_accounts(struct httpd_req *req)
{
    const char *susp = httpd_query(req, "suspended");
    if (susp && strcmp(susp, "true") && strcmp(susp, "false")) {
        httpd_error(req, 400, "invalid_parameter", "suspended",
                    "query parameter 'suspended' must be true or false");
        return;
    }
    admin_list(req,
               "SELECT a.id, " ACCOUNT_JSON " FROM accounts a "
               "WHERE a.id < $1::bigint AND ($3::boolean IS NULL "
               "  OR (a.suspended_at IS NOT NULL) = $3::boolean) "
               "ORDER BY a.id DESC LIMIT $2::int",
               3, susp, 1, "accounts");
}

/* For /v1/admin/accounts/{id}...: an admin, and an id that can exist. NULL after answering. */
static PGconn *account_route(struct httpd_req *req, struct auth_ctx *a)
{
    PGconn *c = admin_db(req, a);
    if (c && !is_id(req->params[0])) {
        ctl_db_done(req, c);
        httpd_error(req, 404, "account_not_found", NULL, "account %s does not exist",
                    req->params[0]);
        return NULL;
    }
    return c;
}

static void reply_account(struct httpd_req *req, PGconn *c, const char *id)
{
    const char *p[] = {id};
    PGresult *r;
    enum db_status st = db_exec(
        c, "SELECT " ACCOUNT_JSON " FROM accounts a WHERE a.id = $1::bigint", 1, p, &r, NULL);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the account");
    } else if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 404, "account_not_found", NULL, "account %s does not exist", id);
    } else {
        reply_row(req, r, 200);
    }
}

static void h_get_account(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = account_route(req, &a);
    if (!c) return;
    reply_account(req, c, req->params[0]);
    ctl_db_done(req, c);
}

struct suspend {
    const char *id, *reason; /* reason NULL: unsuspend */
    int found, is_operator, stopped;
};

/* Suspends (or unsuspends) the account; suspending stops its running endpoints with the reason,
 * exactly as running out of credit does (credit.c): they stay stopped until their owner starts
 * them again after the account is back. */
static enum db_status suspend_txn(PGconn *c, void *arg)
{
    struct suspend *s = arg;
    s->found = s->is_operator = s->stopped = 0;
    const char *p[] = {s->id, s->reason};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT EXISTS (SELECT 1 FROM users u WHERE u.account_id = a.id AND u.role = 'admin') "
        "FROM accounts a WHERE a.id = $1::bigint FOR UPDATE",
        1, p, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    s->found = 1;
    s->is_operator = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (s->is_operator) return DB_NONE;
    if (!s->reason)
        return db_cmd(c,
                      "UPDATE accounts SET suspended_at = NULL, suspend_reason = '' "
                      "WHERE id = $1::bigint",
                      1, p);
    if ((st = db_cmd(c,
                     "UPDATE accounts SET suspended_at = COALESCE(suspended_at, now()), "
                     "  suspend_reason = $2 WHERE id = $1::bigint",
                     2, p)) < 0)
        return st;
    st = db_exec(c,
                 "UPDATE endpoints SET state = 'stopped', "
                 "  state_reason = 'account suspended' || CASE WHEN $2 = '' THEN '' "
                 "    ELSE ': ' || $2 END "
                 "WHERE account_id = $1::bigint AND state = 'active' "
                 "RETURNING id, name, account_id",
                 2, p, &r, NULL);
    if (st < 0) return st;
    st = replica_stop_endpoints(c, r, "account suspended", &s->stopped);
    return st < 0 ? st : DB_ROWS;
}

static void set_suspended(struct httpd_req *req, int suspend)
{
    struct auth_ctx a;
    PGconn *c = account_route(req, &a);
    if (!c) return;
    json_t *body = NULL;
    struct suspend s = {req->params[0], NULL, 0, 0, 0};
    if (suspend) {
        static const char *const known[] = {"reason", NULL};
        struct jsonx_err je = {0};
        enum jsonx_rc rc;
        s.reason = "";
        /* No body at all: no reason given. */
        if (req->body.len > 0 &&
            (!(body = httpd_body_object(req)) || httpd_reject_unknown(req, body, known) != 0))
            goto out;
        if (body && (rc = jsonx_get_string(body, "reason", 0, &s.reason, SUSPEND_REASON_MAX,
                                           &je)) == JSONX_BAD) {
            bad_field(req, rc, &je);
            goto out;
        }
        if (!s.reason) s.reason = "";
        if (!jsonx_printable(s.reason)) {
            httpd_error(req, 400, "invalid_parameter", "reason",
                        "field 'reason' must be printable text");
            goto out;
        }
    }
    enum db_status st = db_txn_run(c, suspend_txn, &s);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not change the account");
    } else if (!s.found) {
        httpd_error(req, 404, "account_not_found", NULL, "account %s does not exist", s.id);
    } else if (s.is_operator) {
        httpd_error(req, 409, "operator_account", NULL,
                    "account %s is the operator's: it cannot be suspended", s.id);
    } else {
        /* Its keys may be in this process's caches: the next request must be refused, and its
         * listing show the stopped endpoints. */
        auth_cache_forget();
        api_endpoints_changed();
        if (suspend)
            log_warn("account %s suspended (%s); %d endpoint(s) stopped", s.id, s.reason,
                     s.stopped);
        else
            log_info("account %s unsuspended", s.id);
        reply_account(req, c, s.id);
    }
out:
    json_decref(body);
    ctl_db_done(req, c);
}

static void h_suspend(struct httpd_req *req)
{
    set_suspended(req, 1);
}

static void h_unsuspend(struct httpd_req *req)
{
    set_suspended(req, 0);
}

/* ---- the catalog ---- */

static const struct field model_fields[] = {
    {"name", F_STR, 1, 0, MODEL_NAME_MAX, is_model_name,
     "1-100 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"},
    {"family", F_STR, 1, 0, 50, NULL, NULL},
    {"source", F_STR, 1, 0, 1000, NULL, NULL},
    {"context_length", F_INT, 1, 1, 10000000, NULL, NULL},
    {"parameter_count", F_INT, 0, 1, INT64_C(100000000000000), NULL, NULL},
    {"sha256", F_STR, 0, 0, 64, is_sha256, "64 lower-case hex digits"},
    {"min_devices", F_INT, 0, 1, 8, NULL, NULL},
    {"device_kinds", F_KINDS, 0, 0, 0, NULL, NULL},
    {"gpu_requirements", F_REQS, 0, 0, 0, NULL, NULL},
    {"input_price_micros_per_mtok", F_INT, 0, 0, PRICE_MAX, NULL, NULL},
    {"output_price_micros_per_mtok", F_INT, 0, 0, PRICE_MAX, NULL, NULL},
};
#define N_MODEL_FIELDS (sizeof model_fields / sizeof model_fields[0])
#define REQS_FIELD 8 /* gpu_requirements' index above */

static enum db_status make_model(PGconn *c, struct created *cr)
{
    return one_object(c,
                      "INSERT INTO models (name, family, source, context_length, parameter_count, "
                      "  sha256, min_devices, device_kinds, gpu_requirements, "
                      "  input_price_micros_per_mtok, output_price_micros_per_mtok) "
                      "VALUES ($1, $2, $3, $4::int, $5::bigint, $6, COALESCE($7::int, 1), "
                      "  COALESCE($8::text[], '{gpu}'), COALESCE($9::jsonb, '{}'), "
                      "  COALESCE($10::bigint, 0), COALESCE($11::bigint, 0)) "
                      "RETURNING " API_MODEL_JSON("models"),
                      (int)N_MODEL_FIELDS, cr->v->p, cr);
}

static void h_create_model(struct httpd_req *req)
{
    struct fvals v;
    json_t *body = read_body(req, model_fields, N_MODEL_FIELDS, 1);
    if (!body) return;
    if (read_fields(req, body, model_fields, N_MODEL_FIELDS, 1, &v) == 0) {
        struct created cr = {.make = make_model, .v = &v, .what = "model", .reqs = v.p[REQS_FIELD]};
        create_object(req, &cr);
    }
    fvals_free(&v);
    json_decref(body);
}

static enum db_status update_model(PGconn *c, struct created *cr)
{
    return one_object(c,
                      "UPDATE models SET family = COALESCE($2, family), "
                      "  source = COALESCE($3, source), "
                      "  context_length = COALESCE($4::int, context_length), "
                      "  parameter_count = COALESCE($5::bigint, parameter_count), "
                      "  sha256 = COALESCE($6, sha256), "
                      "  min_devices = COALESCE($7::int, min_devices), "
                      "  device_kinds = COALESCE($8::text[], device_kinds), "
                      "  gpu_requirements = COALESCE($9::jsonb, gpu_requirements), "
                      "  input_price_micros_per_mtok = "
                      "    COALESCE($10::bigint, input_price_micros_per_mtok), "
                      "  output_price_micros_per_mtok = "
                      "    COALESCE($11::bigint, output_price_micros_per_mtok), "
                      "  updated_at = now() "
                      "WHERE name = $1 RETURNING " API_MODEL_JSON("models"),
                      (int)N_MODEL_FIELDS, cr->v->p, cr);
}

static enum db_status update_txn(PGconn *c, void *arg)
{
    struct created *cr = arg;
    json_decref(cr->reply);
    cr->reply = NULL;
    enum db_status st = check_gpu_types(c, cr->reqs, cr);
    return st < 0 ? st : cr->make(c, cr);
}

/* PATCH-like updates of a named object (catalog model, GPU type): 200 with it, or 404. */
static void update_object(struct httpd_req *req, const struct field *f, size_t nf,
                          int (*valid_name)(const char *), struct created *cr)
{
    struct auth_ctx a;
    struct fvals v;
    memset(&v, 0, sizeof v);
    PGconn *c = admin_db(req, &a);
    if (!c) return;
    json_t *body = NULL;
    if (!valid_name(req->params[0])) {
        httpd_error(req, 404, "not_found", NULL, "%s %s does not exist", cr->what, req->params[0]);
        goto out;
    }
    /* A route without fields (retire) takes no body. */
    if ((nf > 1 || req->body.len > 0) &&
        (!(body = read_body(req, f, nf, 0)) || read_fields(req, body, f, nf, 0, &v) != 0))
        goto out;
    v.p[0] = req->params[0];
    cr->v = &v;
    if (f == model_fields && nf > REQS_FIELD) cr->reqs = v.p[REQS_FIELD];
    enum db_status st = db_txn_run(c, update_txn, cr);
    if (cr->bad_type[0])
        httpd_error(req, 400, "invalid_parameter", "gpu_requirements",
                    "GPU type '%s' does not exist (see GET /v1/admin/gpu-types)", cr->bad_type);
    else if (st < 0)
        httpd_error(req, 500, "internal_error", NULL, "could not update the %s", cr->what);
    else if (st == DB_NONE || !cr->reply)
        httpd_error(req, 404, "not_found", NULL, "%s %s does not exist", cr->what, req->params[0]);
    else {
        log_info("%s %s updated", cr->what, req->params[0]);
        httpd_reply_json(req, 200, json_incref(cr->reply));
    }
out:
    json_decref(cr->reply);
    fvals_free(&v);
    json_decref(body);
    ctl_db_done(req, c);
}

static void h_update_model(struct httpd_req *req)
{
    struct created cr = {.make = update_model, .what = "model"};
    update_object(req, model_fields, N_MODEL_FIELDS, is_model_name, &cr);
}

static enum db_status retire_model(PGconn *c, struct created *cr)
{
    return one_object(c,
                      "UPDATE models SET retired_at = COALESCE(retired_at, now()), "
                      "  updated_at = now() WHERE name = $1 RETURNING " API_MODEL_JSON("models"),
                      1, cr->v->p, cr);
}

/* Retiring hides the model from customers and refuses new deployments of it; endpoints already
 * running it keep running (and can be scaled, stopped and started). */
static void h_retire_model(struct httpd_req *req)
{
    struct created cr = {.make = retire_model, .what = "model"};
    update_object(req, model_fields, 1, is_model_name, &cr);
}

static void h_admin_catalog(struct httpd_req *req)
{
    admin_list(req,
               "SELECT m.id, " API_MODEL_JSON(
                   "m") " FROM models m WHERE m.id < $1::bigint "
                        "ORDER BY m.retired_at IS NOT NULL, m.name LIMIT $2::int",
               2, NULL, 0, "the catalog");
}

/* ---- GPU types and their prices ---- */

#define GPU_TYPE_JSON                                                                              \
    "json_build_object('id', g.name, 'object', 'gpu_type', 'device_kind', g.device_kind, "         \
    "  'model_match', g.model_match, 'memory_mib', g.memory_mib, "                                 \
    "  'micros_per_gpu_hour', p.micros_per_gpu_hour, 'price_effective_at', p.effective_at, "       \
    "  'price_history', (SELECT json_agg(json_build_object('micros_per_gpu_hour', "                \
    "       x.micros_per_gpu_hour, 'effective_at', x.effective_at) ORDER BY x.effective_at DESC, " \
    "       x.id DESC) FROM (SELECT * FROM gpu_type_prices y WHERE y.gpu_type_id = g.id "          \
    "       ORDER BY y.effective_at DESC, y.id DESC LIMIT " PRICE_HISTORY_LIMIT ") x), "           \
    "  'created_at', g.created_at, 'updated_at', g.updated_at) "                                   \
    "FROM gpu_types g CROSS JOIN LATERAL (SELECT micros_per_gpu_hour, effective_at "               \
    "  FROM gpu_type_prices WHERE gpu_type_id = g.id "                                             \
    "  ORDER BY effective_at DESC, id DESC LIMIT 1) p "
#define PRICE_HISTORY_LIMIT "20" /* versions of a GPU type's price shown in its reply */

static const struct field gpu_type_fields[] = {
    {"name", F_STR, 1, 0, GPU_TYPE_NAME_MAX, is_gpu_type_name,
     "1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"},
    {"micros_per_gpu_hour", F_INT, 1, 0, PRICE_MAX, NULL, NULL},
    {"model_match", F_STR, 0, 0, 200, NULL, NULL},
    {"memory_mib", F_INT, 0, 0, INT64_C(100000000), NULL, NULL},
    {"device_kind", F_STR, 0, 0, 8, NULL, NULL}, /* create only (see gpu_type_update_fields) */
};
#define N_GPU_TYPE_FIELDS (sizeof gpu_type_fields / sizeof gpu_type_fields[0])
/* An update may change everything but the name and the device kind (what placement and billing
 * of existing endpoints rest on). */
#define N_GPU_TYPE_UPDATE_FIELDS (N_GPU_TYPE_FIELDS - 1)

static enum db_status read_gpu_type(PGconn *c, const char *name, struct created *cr)
{
    const char *p[] = {name};
    return one_object(c, "SELECT " GPU_TYPE_JSON "WHERE g.name = $1", 1, p, cr);
}

static enum db_status make_gpu_type(PGconn *c, struct created *cr)
{
    const char *const *v = cr->v->p;
    const char *p[] = {v[0], v[2], v[3], v[4], v[1]};
    PGresult *r;
    char ss[6] = "";
    enum db_status st = db_exec(c,
                                "WITH t AS (INSERT INTO gpu_types (name, model_match, memory_mib, "
                                "  device_kind) VALUES ($1, COALESCE($2, ''), "
                                "  COALESCE($3::bigint, 0), COALESCE($4, 'gpu')) RETURNING id) "
                                "INSERT INTO gpu_type_prices (gpu_type_id, micros_per_gpu_hour) "
                                "SELECT id, $5::bigint FROM t",
                                5, p, &r, ss);
    if (st < 0) {
        cr->name_taken = !strcmp(ss, "23505");
        return st;
    }
    PQclear(r);
    return read_gpu_type(c, v[0], cr);
}

static void h_create_gpu_type(struct httpd_req *req)
{
    struct fvals v;
    json_t *body = read_body(req, gpu_type_fields, N_GPU_TYPE_FIELDS, 1);
    if (!body) return;
    if (read_fields(req, body, gpu_type_fields, N_GPU_TYPE_FIELDS, 1, &v) == 0) {
        const char *kind = v.p[N_GPU_TYPE_FIELDS - 1];
        if (kind && strcmp(kind, "gpu") && strcmp(kind, "cpu")) {
            httpd_error(req, 400, "invalid_parameter", "device_kind",
                        "field 'device_kind' must be \"gpu\" or \"cpu\"");
        } else {
            struct created cr = {.make = make_gpu_type, .v = &v, .what = "GPU type"};
            create_object(req, &cr);
        }
    }
    fvals_free(&v);
    json_decref(body);
}

/* A price change is a new version (gpu_type_prices is append-only); the same price again adds
 * nothing. */
static enum db_status update_gpu_type(PGconn *c, struct created *cr)
{
    const char *const *v = cr->v->p;
    const char *p[] = {v[0], v[2], v[3], v[1]};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "UPDATE gpu_types SET model_match = COALESCE($2, model_match), "
                                "  memory_mib = COALESCE($3::bigint, memory_mib), "
                                "  updated_at = now() WHERE name = $1 RETURNING id",
                                3, p, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    char id[24];
    snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *pp[] = {id, v[1]};
    if (v[1] && (st = db_cmd(c,
                             "INSERT INTO gpu_type_prices (gpu_type_id, micros_per_gpu_hour) "
                             "SELECT $1::bigint, $2::bigint WHERE $2::bigint IS DISTINCT FROM "
                             "  (SELECT micros_per_gpu_hour FROM gpu_type_prices "
                             "   WHERE gpu_type_id = $1::bigint "
                             "   ORDER BY effective_at DESC, id DESC LIMIT 1)",
                             2, pp)) < 0)
        return st;
    return read_gpu_type(c, v[0], cr);
}

static void h_update_gpu_type(struct httpd_req *req)
{
    struct created cr = {.make = update_gpu_type, .what = "GPU type"};
    update_object(req, gpu_type_fields, N_GPU_TYPE_UPDATE_FIELDS, is_gpu_type_name, &cr);
}

static void h_list_gpu_types(struct httpd_req *req)
{
    admin_list(
        req, "SELECT g.id, " GPU_TYPE_JSON "WHERE g.id < $1::bigint ORDER BY g.name LIMIT $2::int",
        2, NULL, 0, "GPU types");
}

/* ---- enrollment tokens ---- */

#define TOKEN_JSON                                                                                 \
    "json_build_object('id', t.id::text, 'object', 'enrollment_token', 'prefix', t.prefix, "       \
    "  'pool', t.pool, 'created_at', t.created_at, 'expires_at', t.expires_at, "                   \
    "  'used_at', t.used_at, 'used_by_host', t.used_by_host::text, 'revoked_at', t.revoked_at, "   \
    "  'state', CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked' "                                \
    "    WHEN t.used_at IS NOT NULL THEN 'used' WHEN t.expires_at <= now() THEN 'expired' "        \
    "    ELSE 'active' END)"

static void h_list_tokens(struct httpd_req *req)
{
    admin_list(req,
               "SELECT t.id, " TOKEN_JSON " FROM enrollment_tokens t "
               "WHERE t.id < $1::bigint ORDER BY t.id DESC LIMIT $2::int",
               2, NULL, 1, "enrollment tokens");
}

/* Revoking an unused token: it can no longer enroll anything (its expiry moves to now, which is
 * what registration checks). A used token enrolled its host already: revoke the host instead. */
static void h_revoke_token(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = admin_db(req, &a);
    if (!c) return;
    const char *id = req->params[0];
    PGresult *r = NULL;
    enum db_status st = DB_NONE;
    if (is_id(id)) {
        const char *p[] = {id};
        st = db_exec(c,
                     "WITH u AS (UPDATE enrollment_tokens SET "
                     "    revoked_at = COALESCE(revoked_at, now()), "
                     "    expires_at = least(expires_at, now()) "
                     "  WHERE id = $1::bigint AND used_at IS NULL RETURNING *) "
                     "SELECT " TOKEN_JSON ", false FROM u t "
                     "UNION ALL SELECT NULL, true FROM enrollment_tokens "
                     "  WHERE id = $1::bigint AND used_at IS NOT NULL",
                     1, p, &r, NULL);
    }
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not revoke the token");
    } else if (st == DB_NONE) {
        httpd_error(req, 404, "not_found", NULL, "enrollment token %s does not exist", id);
    } else if (PQgetvalue(r, 0, 1)[0] == 't') {
        httpd_error(req, 409, "enrollment_token_used", NULL,
                    "enrollment token %s was used already: revoke its host instead "
                    "(DELETE /v1/admin/hosts/{id})",
                    id);
    } else {
        log_info("enrollment token %s revoked", id);
        reply_row(req, r, 200);
        r = NULL;
    }
    PQclear(r);
}

const struct httpd_route admin_routes[] = {
    {"GET", "/v1/admin/accounts", h_list_accounts},
    {"GET", "/v1/admin/accounts/{}", h_get_account},
    {"POST", "/v1/admin/accounts/{}/suspend", h_suspend},
    {"POST", "/v1/admin/accounts/{}/unsuspend", h_unsuspend},
    {"GET", "/v1/admin/catalog", h_admin_catalog},
    {"POST", "/v1/admin/catalog", h_create_model},
    {"PATCH", "/v1/admin/catalog/{}", h_update_model},
    {"POST", "/v1/admin/catalog/{}/retire", h_retire_model},
    {"GET", "/v1/admin/gpu-types", h_list_gpu_types},
    {"POST", "/v1/admin/gpu-types", h_create_gpu_type},
    {"PATCH", "/v1/admin/gpu-types/{}", h_update_gpu_type},
    {"GET", "/v1/admin/enrollment-tokens", h_list_tokens},
    {"DELETE", "/v1/admin/enrollment-tokens/{}", h_revoke_token},
};
const size_t admin_nroutes = sizeof admin_routes / sizeof admin_routes[0];
