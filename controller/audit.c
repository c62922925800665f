/* audit: see audit.h. Rows are appended and never changed, except that the object id of a row
 * whose call created the object is filled in once (it is not known before the handler runs). */
#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "jsonx.h"
#include "log.h"

#define AUDIT_PAGE_MAX 200 /* entries per page: bounds one reply and one query */

static int64_t insert(struct httpd_req *req, PGconn *c, int64_t account_id, int64_t user_id,
                      int64_t key_id, const char *object_id)
{
    char acct[24], user[24], key[24], addr[64];
    snprintf(acct, sizeof acct, "%lld", (long long)account_id);
    snprintf(user, sizeof user, "%lld", (long long)user_id);
    snprintf(key, sizeof key, "%lld", (long long)key_id);
    auth_client_address(req, addr, sizeof addr);
    const char *route = req->route ? req->route->pattern : req->url;
    /* The object of /v1/things/{} is its first path parameter; catch-all routes have none. */
    if (!object_id && req->nparams > 0 && req->route && route[strlen(route) - 1] != '*')
        object_id = req->params[0];
    const char *p[] = {account_id ? acct : NULL,
                       user_id ? user : NULL,
                       key_id ? key : NULL,
                       req->method,
                       route,
                       req->url,
                       object_id,
                       addr,
                       req->id};
    PGresult *r;
    if (db_exec(c,
                "INSERT INTO audit_log (account_id, user_id, key_id, method, route, path, "
                "  object_id, address, request_id) "
                "VALUES ($1::bigint, $2::bigint, $3::bigint, $4, $5, $6, $7, $8, $9) RETURNING id",
                9, p, &r, NULL) != DB_ROWS) {
        log_error("could not write the audit row of %s %s", req->method, req->url);
        return 0;
    }
    int64_t id = db_int(r, 0, 0);
    PQclear(r);
    return id;
}

int audit_record(struct httpd_req *req, PGconn *c, struct auth_ctx *a)
{
    a->audit_id = insert(req, c, a->account_id, a->user_id, a->key_id, NULL);
    return a->audit_id ? 0 : -1;
}

int64_t audit_record_anonymous(struct httpd_req *req, PGconn *c, int64_t account_id,
                               int64_t user_id, const char *object_id)
{
    return insert(req, c, account_id, user_id, 0, object_id);
}

void audit_set_object(PGconn *c, int64_t audit_id, const char *object_id)
{
    if (!audit_id) return;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)audit_id);
    const char *p[] = {id, object_id};
    if (db_cmd(c, "UPDATE audit_log SET object_id = $2 WHERE id = $1::bigint AND object_id IS NULL",
               2, p) < 0)
        log_error("could not set the object of audit row %s", id);
}

static void h_audit_log(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    int64_t limit, after, only;
    if ((limit = httpd_query_int(req, "limit", 50, AUDIT_PAGE_MAX)) < 0 ||
        (after = httpd_query_int(req, "starting_after", INT64_MAX, INT64_MAX)) < 0 ||
        (only = httpd_query_int(req, "account_id", 0, INT64_MAX)) < 0)
        goto out;
    int admin = !strcmp(a.role, "admin");
    if (only && !admin && only != a.account_id) {
        httpd_error(req, 403, "admin_only", "account_id",
                    "only the operator may read another account's audit log");
        goto out;
    }
    char lim[24], aft[24], acct[24];
    snprintf(lim, sizeof lim, "%lld", (long long)limit + 1); /* one more: is there a next page? */
    snprintf(aft, sizeof aft, "%lld", (long long)after);
    snprintf(acct, sizeof acct, "%lld", (long long)(admin ? only : a.account_id));
    /* NULL account: an admin reading every account's entries (and the anonymous ones). */
    const char *p[] = {admin && !only ? NULL : acct, aft, lim};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
        "  account_id, user_id, key_id, method, route, path, object_id, address, request_id "
        "FROM audit_log WHERE ($1::bigint IS NULL OR account_id = $1::bigint) "
        "  AND id < $2::bigint ORDER BY id DESC LIMIT $3::int",
        3, p, &r, NULL);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the audit log");
        goto out;
    }
    int n = PQntuples(r), more = n > limit;
    if (more) n = (int)limit;
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        json_t *e = json_pack("{s:s, s:s, s:s}", "id", PQgetvalue(r, i, 0), "object", "audit_entry",
                              "at", PQgetvalue(r, i, 1));
        static const char *const cols[] = {"account_id", "user_id", "key_id",
                                           "method",     "route",   "path",
                                           "object_id",  "address", "request_id"};
        for (int k = 0; k < 9; k++)
            json_object_set_new(e, cols[k],
                                PQgetisnull(r, i, k + 2) ? json_null()
                                                         : json_string(PQgetvalue(r, i, k + 2)));
        json_array_append_new(data, e);
    }
    json_t *o = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", more);
    if (more) json_object_set_new(o, "next_starting_after", json_string(PQgetvalue(r, n - 1, 0)));
    PQclear(r);
    httpd_reply_json(req, 200, o);
out:
    ctl_db_done(req, c);
}

const struct httpd_route audit_routes[] = {
    {"GET", "/v1/audit-log", h_audit_log},
};
const size_t audit_nroutes = sizeof audit_routes / sizeof audit_routes[0];
