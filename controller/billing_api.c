/* billing_api: see billing_api.h. Read routes serve what the tables hold; nothing here computes a
 * charge (metering.c does). */
#include "billing_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "ctl.h"
#include "jsonx.h"
#include "log.h"

#define LEDGER_PAGE_MAX 200 /* entries per page: bounds one reply and one query */
#define USAGE_ROWS_MAX 5000 /* rows of a usage report */

void billing_display(int64_t micros, char *out, size_t n)
{
    uint64_t a = micros < 0 ? (uint64_t)(-(micros + 1)) + 1 : (uint64_t)micros;
    snprintf(out, n, "%s%" PRIu64 ".%06" PRIu64 " USD", micros < 0 ? "-" : "", a / 1000000,
             a % 1000000);
}

enum db_status billing_balance(PGconn *c, const char *account_id, int64_t *out)
{
    const char *p[] = {account_id};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT COALESCE(sum(amount_micros), 0) FROM ledger_entries WHERE account_id = $1::bigint",
        1, p, &r, NULL);
    if (st < 0) return st;
    *out = db_int(r, 0, 0);
    PQclear(r);
    return DB_ROWS;
}

enum db_status billing_credit(PGconn *c, int64_t account_id, int64_t amount_micros,
                              const char *idempotency_key, const char *memo)
{
    char acct[24], amt[24];
    snprintf(acct, sizeof acct, "%lld", (long long)account_id);
    snprintf(amt, sizeof amt, "%lld", (long long)amount_micros);
    const char *p[] = {acct, amt, idempotency_key, memo ? memo : ""};
    return db_cmd(c,
                  "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key, "
                  "memo) VALUES ($1::bigint, $2::bigint, 'credit', $3, $4) "
                  "ON CONFLICT (idempotency_key) DO NOTHING",
                  4, p);
}

static json_t *money(json_t *o, const char *key, int64_t micros)
{
    char k[64], d[48];
    snprintf(k, sizeof k, "%s_micros", key);
    json_object_set_new(o, k, json_integer(micros));
    billing_display(micros, d, sizeof d);
    snprintf(k, sizeof k, "%s_display", key);
    json_object_set_new(o, k, json_string(d));
    return o;
}

static void h_balance(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    int64_t bal = 0;
    enum db_status st = billing_balance(c, a.account_id_str, &bal);
    /* This month's usage charges and the monthly spend cap, as the cap's checks read them. */
    const char *p[] = {a.account_id_str};
    PGresult *r = NULL;
    if (st >= 0)
        st = db_exec(c, "SELECT account_month_spend($1::bigint), account_spend_cap($1::bigint)", 1,
                     p, &r, NULL);
    ctl_db_done(req, c);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the balance");
        return;
    }
    json_t *o = json_pack("{s:s, s:s}", "object", "balance", "account_id", a.account_id_str);
    money(o, "balance", bal);
    money(o, "month_spend", db_int(r, 0, 0));
    if (PQgetisnull(r, 0, 1)) {
        json_object_set_new(o, "monthly_spend_cap_micros", json_null());
        json_object_set_new(o, "monthly_spend_cap_display", json_null());
    } else {
        money(o, "monthly_spend_cap", db_int(r, 0, 1));
    }
    PQclear(r);
    httpd_reply_json(req, 200, o);
}

static void h_ledger(struct httpd_req *req)
{
    int64_t limit = httpd_query_int(req, "limit", 50, LEDGER_PAGE_MAX);
    if (limit < 0) return;
    int64_t after = httpd_query_int(req, "starting_after", INT64_MAX, INT64_MAX);
    if (after < 0) return;
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    char lim[24], aft[24];
    snprintf(lim, sizeof lim, "%lld", (long long)limit + 1); /* one more: is there a next page? */
    snprintf(aft, sizeof aft, "%lld", (long long)after);
    const char *p[] = {a.account_id_str, aft, lim};
    PGresult *r;
    /* Newest first; the cursor is the last id of the previous page. */
    enum db_status st = db_exec(
        c,
        "SELECT id, amount_micros, kind, memo, endpoint_id, "
        "  to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
        "  to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), quantity, "
        "  unit FROM ledger_entries WHERE account_id = $1::bigint AND id < $2::bigint "
        "ORDER BY id DESC LIMIT $3::int",
        3, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the ledger");
        return;
    }
    int n = PQntuples(r), more = n > limit;
    if (more) n = (int)limit;
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        json_t *e =
            json_pack("{s:s, s:s, s:s, s:s}", "id", PQgetvalue(r, i, 0), "object", "ledger_entry",
                      "kind", PQgetvalue(r, i, 2), "at", PQgetvalue(r, i, 5));
        money(e, "amount", db_int(r, i, 1));
        json_object_set_new(e, "memo", json_string(PQgetvalue(r, i, 3)));
        json_object_set_new(e, "endpoint_id",
                            PQgetisnull(r, i, 4) ? json_null() : json_string(PQgetvalue(r, i, 4)));
        json_object_set_new(e, "period_start",
                            PQgetisnull(r, i, 6) ? json_null() : json_string(PQgetvalue(r, i, 6)));
        json_object_set_new(e, "quantity",
                            PQgetisnull(r, i, 7) ? json_null() : json_integer(db_int(r, i, 7)));
        json_object_set_new(e, "unit",
                            PQgetisnull(r, i, 8) ? json_null() : json_string(PQgetvalue(r, i, 8)));
        json_array_append_new(data, e);
    }
    json_t *o = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", more);
    if (more) json_object_set_new(o, "next_starting_after", json_string(PQgetvalue(r, n - 1, 0)));
    PQclear(r);
    httpd_reply_json(req, 200, o);
}

static void h_usage(struct httpd_req *req)
{
    const char *gran = httpd_query(req, "granularity");
    if (!gran) gran = "hour";
    if (strcmp(gran, "minute") && strcmp(gran, "hour") && strcmp(gran, "day")) {
        httpd_error(req, 400, "invalid_parameter", "granularity",
                    "granularity must be minute, hour or day");
        return;
    }
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", USAGE_ROWS_MAX);
    const char *p[] = {a.account_id_str, gran, lim};
    PGresult *r;
    enum db_status st =
        db_exec(c,
                "SELECT to_char(date_trunc($2, l.period_start) AT TIME ZONE 'UTC', "
                "    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), l.endpoint_id, e.name, l.kind, "
                "  -sum(l.amount_micros)::bigint, sum(l.quantity)::bigint, min(l.unit) "
                "FROM ledger_entries l JOIN endpoints e ON e.id = l.endpoint_id "
                "WHERE l.account_id = $1::bigint AND l.kind IN ('usage_time', 'usage_value') "
                "GROUP BY date_trunc($2, l.period_start), l.endpoint_id, e.name, l.kind "
                "ORDER BY 1 DESC, 3, 4 LIMIT $3::int",
                3, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read usage");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *u =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s}", "object", "usage", "period_start",
                      PQgetvalue(r, i, 0), "endpoint_id", PQgetvalue(r, i, 1), "endpoint",
                      PQgetvalue(r, i, 2), "kind", PQgetvalue(r, i, 3), "quantity",
                      (json_int_t)db_int(r, i, 5), "unit", PQgetvalue(r, i, 6));
        json_array_append_new(data, money(u, "cost", db_int(r, i, 4)));
    }
    PQclear(r);
    httpd_reply_json(
        req, 200,
        json_pack("{s:s, s:s, s:o}", "object", "list", "granularity", gran, "data", data));
}

/* Checks the admin and the account id of /v1/admin/accounts/{id}/...; NULL after answering. */
static PGconn *admin_account(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return NULL;
    if (strcmp(a.role, "admin") != 0) {
        httpd_error(req, 403, "admin_only", NULL, "only the operator may do this");
    } else {
        char *end;
        long long id = strtoll(req->params[0], &end, 10);
        const char *p[] = {req->params[0]};
        if (*end || id <= 0 ||
            db_cmd(c, "SELECT 1 FROM accounts WHERE id = $1::bigint", 1, p) != DB_ROWS)
            httpd_error(req, 404, "account_not_found", NULL, "account %s does not exist",
                        req->params[0]);
        else
            return c;
    }
    ctl_db_done(req, c);
    return NULL;
}

static const char *const credit_fields[] = {"amount_micros", "idempotency_key", "memo", NULL};

static void h_credit(struct httpd_req *req)
{
    PGconn *c = admin_account(req);
    if (!c) return;
    json_t *body = NULL;
    long long acct = strtoll(req->params[0], NULL, 10);
    body = httpd_body_object(req);
    if (!body || httpd_reject_unknown(req, body, credit_fields) != 0) goto out;
    struct jsonx_err je = {0};
    int64_t amount;
    const char *key, *memo = "";
    enum jsonx_rc rc;
    /* A single credit is capped at 1 000 000 USD: a typo must not mint a fortune. */
    if ((rc = jsonx_get_int(body, "amount_micros", 1, 1, INT64_C(1000000000000), &amount, &je)) !=
            JSONX_OK ||
        (rc = jsonx_get_string(body, "idempotency_key", 1, &key, 100, &je)) != JSONX_OK ||
        (rc = jsonx_get_string(body, "memo", 0, &memo, 200, &je)) == JSONX_BAD) {
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    je.param, "%s", je.message);
        goto out;
    }
    /* The key is scoped to the account so two accounts cannot collide. */
    char scoped[160];
    snprintf(scoped, sizeof scoped, "credit:%lld:%s", acct, key);
    enum db_status st = billing_credit(c, acct, amount, scoped, memo);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not record the credit");
        goto out;
    }
    /* Same key: the stored entry decides. Same amount → the same answer again; another → 409. */
    const char *pk[] = {scoped};
    PGresult *r;
    if (db_exec(c, "SELECT id, amount_micros FROM ledger_entries WHERE idempotency_key = $1", 1, pk,
                &r, NULL) != DB_ROWS) {
        httpd_error(req, 500, "internal_error", NULL, "the credit vanished");
        goto out;
    }
    int64_t stored = db_int(r, 0, 1);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:b}", "object", "ledger_entry", "id", PQgetvalue(r, 0, 0),
                  "kind", "credit", "idempotency_key", key, "replayed", st == DB_NONE);
    PQclear(r);
    if (stored != amount) {
        json_decref(o);
        httpd_error(req, 409, "idempotency_key_reused", "idempotency_key",
                    "idempotency_key '%s' was used for another amount", key);
        goto out;
    }
    if (st == DB_ROWS)
        log_info("credited %lld micros to account %lld (%s)", (long long)amount, acct, key);
    httpd_reply_json(req, st == DB_ROWS ? 201 : 200, money(o, "amount", amount));
out:
    json_decref(body);
    ctl_db_done(req, c);
}

/* ---- monthly statements ---- */

/* "YYYY-MM" with a plausible month; 1 when valid. */
static int valid_month(const char *m)
{
    return strlen(m) == 7 && m[4] == '-' && m[0] >= '1' && m[0] <= '9' &&
           strspn(m, "0123456789-") == 7 &&
           ((m[5] == '0' && m[6] >= '1' && m[6] <= '9') ||
            (m[5] == '1' && m[6] >= '0' && m[6] <= '2'));
}

/* CSV field: quoted when it holds a comma, quote or newline (RFC 4180). */
static void csv_field(struct buf *b, const char *v)
{
    if (!strpbrk(v, ",\"\r\n")) {
        buf_append(b, v, strlen(v));
        return;
    }
    buf_append(b, "\"", 1);
    for (const char *c = v; *c; c++) {
        if (*c == '"') buf_append(b, "\"", 1);
        buf_append(b, c, 1);
    }
    buf_append(b, "\"", 1);
}

/* GET /v1/billing/statements/{YYYY-MM}[?format=csv]: the month's opening balance, one line per
 * (endpoint, kind, GPU type of time charges) with its quantity and cost, credits and adjustments,
 * and the closing balance; all from ledger_entries, so it can be recomputed at any time. Months are
 * UTC. */
static void h_statement(struct httpd_req *req)
{
    const char *month = req->params[0];
    const char *format = httpd_query(req, "format");
    if (!valid_month(month)) {
        httpd_error(req, 404, "statement_not_found", NULL, "no statement for '%s' (use YYYY-MM)",
                    month);
        return;
    }
    if (format && strcmp(format, "json") && strcmp(format, "csv")) {
        httpd_error(req, 400, "invalid_parameter", "format", "format must be json or csv");
        return;
    }
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    char start[32];
    snprintf(start, sizeof start, "%.7s-01 00:00:00+00", month); /* month is YYYY-MM */
    const char *p[] = {a.account_id_str, start};
    PGresult *open_r = NULL, *r = NULL;
    enum db_status st = db_exec(c,
                                "SELECT COALESCE(sum(amount_micros), 0) FROM ledger_entries "
                                "WHERE account_id = $1::bigint AND at < $2::timestamptz",
                                2, p, &open_r, NULL);
    if (st >= 0)
        st = db_exec(c,
                     "SELECT COALESCE(e.name, ''), COALESCE(l.endpoint_id::text, ''), l.kind, "
                     "  COALESCE(min(l.unit), ''), COALESCE(sum(l.quantity), 0)::bigint, "
                     "  sum(l.amount_micros)::bigint, count(*), COALESCE(l.gpu_type, '') "
                     "FROM ledger_entries l LEFT JOIN endpoints e ON e.id = l.endpoint_id "
                     "WHERE l.account_id = $1::bigint AND l.at >= $2::timestamptz "
                     "  AND l.at < $2::timestamptz + interval '1 month' "
                     "GROUP BY 1, 2, 3, 8 ORDER BY 3, 1, 8",
                     2, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        PQclear(open_r);
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the ledger");
        return;
    }
    int64_t opening = db_int(open_r, 0, 0), closing = opening;
    PQclear(open_r);
    for (int i = 0; i < PQntuples(r); i++)
        closing += db_int(r, i, 5);
    if (format && !strcmp(format, "csv")) {
        struct buf b = {0};
        char d[48];
        buf_printf(&b, "month,endpoint,endpoint_id,kind,unit,quantity,entries,amount_micros,"
                       "amount,gpu_type\r\n");
        billing_display(opening, d, sizeof d);
        buf_printf(&b, "%s,,,opening_balance,,,,%lld,%s,\r\n", month, (long long)opening, d);
        for (int i = 0; i < PQntuples(r); i++) {
            buf_printf(&b, "%s,", month);
            csv_field(&b, PQgetvalue(r, i, 0));
            buf_printf(&b, ",%s,%s,%s,%s,%s,", PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                       PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 6));
            billing_display(db_int(r, i, 5), d, sizeof d);
            buf_printf(&b, "%s,%s,", PQgetvalue(r, i, 5), d);
            csv_field(&b, PQgetvalue(r, i, 7));
            buf_append(&b, "\r\n", 2);
        }
        billing_display(closing, d, sizeof d);
        buf_printf(&b, "%s,,,closing_balance,,,,%lld,%s,\r\n", month, (long long)closing, d);
        PQclear(r);
        snprintf(req->extra_headers, sizeof req->extra_headers,
                 "Content-Disposition: attachment; filename=\"statement-%.7s.csv\"", month);
        httpd_reply_raw(req, 200, "text/csv; charset=utf-8", b.data, b.len);
        buf_free(&b);
        return;
    }
    json_t *lines = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *l = json_pack("{s:s, s:s, s:I, s:I}", "kind", PQgetvalue(r, i, 2), "unit",
                              PQgetvalue(r, i, 3), "quantity", (json_int_t)db_int(r, i, 4),
                              "entries", (json_int_t)db_int(r, i, 6));
        json_object_set_new(
            l, "endpoint", PQgetvalue(r, i, 0)[0] ? json_string(PQgetvalue(r, i, 0)) : json_null());
        json_object_set_new(l, "endpoint_id",
                            PQgetvalue(r, i, 1)[0] ? json_string(PQgetvalue(r, i, 1))
                                                   : json_null());
        json_object_set_new(
            l, "gpu_type", PQgetvalue(r, i, 7)[0] ? json_string(PQgetvalue(r, i, 7)) : json_null());
        json_array_append_new(lines, money(l, "amount", db_int(r, i, 5)));
    }
    PQclear(r);
    json_t *o = json_pack("{s:s, s:s, s:s, s:o}", "object", "statement", "account_id",
                          a.account_id_str, "month", month, "lines", lines);
    money(o, "opening_balance", opening);
    money(o, "closing_balance", closing);
    httpd_reply_json(req, 200, o);
}

/* ---- quotas (admin) ---- */

static const struct {
    const char *name;
    int64_t min, max;
} quota_fields[] = {
    {"max_devices", 0, 100000},
    {"max_endpoints", 0, 100000},
    {"requests_per_min", 1, 100000000},
    {"requests_burst", 1, 1000000},
    {"monthly_spend_cap_micros", 0, INT64_C(1000000000000000)},
    {"tokens_per_min", 1, 1000000000},
};
#define NQUOTA (sizeof quota_fields / sizeof quota_fields[0])

static void reply_quotas(struct httpd_req *req, PGconn *c)
{
    const char *p[] = {req->params[0]};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT max_devices, max_endpoints, requests_per_min, "
                                "  requests_burst, monthly_spend_cap_micros, tokens_per_min, "
                                "  account_id IS NOT NULL FROM quotas "
                                "WHERE account_id = $1::bigint OR account_id IS NULL "
                                "ORDER BY account_id NULLS LAST LIMIT 1",
                                1, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        httpd_error(req, 503, "database_unavailable", NULL, "could not read quotas");
        return;
    }
    json_t *o = json_pack("{s:s, s:s, s:b}", "object", "quotas", "account_id", req->params[0],
                          "defaults", PQgetvalue(r, 0, (int)NQUOTA)[0] != 't');
    for (size_t i = 0; i < NQUOTA; i++)
        json_object_set_new(o, quota_fields[i].name,
                            PQgetisnull(r, 0, (int)i) ? json_null()
                                                      : json_integer(db_int(r, 0, (int)i)));
    PQclear(r);
    httpd_reply_json(req, 200, o);
}

static void h_get_quotas(struct httpd_req *req)
{
    PGconn *c = admin_account(req);
    if (!c) return;
    reply_quotas(req, c);
    ctl_db_done(req, c);
}

/* PUT replaces the account's quotas whole; a missing or null field means "no limit" (except
 * requests_burst, default 1). */
static void h_put_quotas(struct httpd_req *req)
{
    PGconn *c = admin_account(req);
    if (!c) return;
    json_t *body = httpd_body_object(req);
    const char *names[NQUOTA + 1];
    for (size_t i = 0; i < NQUOTA; i++)
        names[i] = quota_fields[i].name;
    names[NQUOTA] = NULL;
    if (!body || httpd_reject_unknown(req, body, names) != 0) goto out;
    char vals[NQUOTA][24];
    const char *prm[NQUOTA + 1];
    prm[0] = req->params[0];
    for (size_t i = 0; i < NQUOTA; i++) {
        struct jsonx_err je = {0};
        int64_t v;
        enum jsonx_rc rc = jsonx_get_int(body, quota_fields[i].name, 0, quota_fields[i].min,
                                         quota_fields[i].max, &v, &je);
        if (rc == JSONX_BAD) {
            httpd_error(req, 400, "invalid_parameter", je.param, "%s", je.message);
            goto out;
        }
        if (rc == JSONX_MISSING && !strcmp(quota_fields[i].name, "requests_burst")) {
            v = 1;
            rc = JSONX_OK;
        }
        snprintf(vals[i], sizeof vals[i], "%lld", (long long)v);
        prm[i + 1] = rc == JSONX_OK ? vals[i] : NULL;
    }
    if (db_cmd(c,
               "INSERT INTO quotas (account_id, max_devices, max_endpoints, requests_per_min, "
               "  requests_burst, monthly_spend_cap_micros, tokens_per_min) "
               "VALUES ($1::bigint, $2::int, $3::int, $4::int, $5::int, $6::bigint, $7::int) "
               "ON CONFLICT (COALESCE(account_id, 0)) DO UPDATE SET max_devices = $2::int, "
               "  max_endpoints = $3::int, requests_per_min = $4::int, requests_burst = $5::int, "
               "  monthly_spend_cap_micros = $6::bigint, tokens_per_min = $7::int, "
               "  updated_at = now()",
               (int)NQUOTA + 1, prm) < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not store quotas");
        goto out;
    }
    log_info("quotas of account %s set", req->params[0]);
    reply_quotas(req, c);
out:
    json_decref(body);
    ctl_db_done(req, c);
}

/* ---- the monthly spend cap ---- */

int billing_spend_cap_check(struct httpd_req *req, PGconn *c, const char *account_id)
{
    const char *p[] = {account_id};
    PGresult *r;
    enum db_status st = db_exec(
        c, "SELECT account_spend_cap($1::bigint), account_month_spend($1::bigint)", 1, p, &r, NULL);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the spend cap");
        return -1;
    }
    int rc = 0;
    if (!PQgetisnull(r, 0, 0) && db_int(r, 0, 1) >= db_int(r, 0, 0)) {
        char cap[40], spent[40];
        billing_display(db_int(r, 0, 0), cap, sizeof cap);
        billing_display(db_int(r, 0, 1), spent, sizeof spent);
        httpd_error(req, 402, "spend_cap_reached", NULL,
                    "your monthly spend cap of %s is reached (%s charged this month); the operator "
                    "can raise it, or wait for the next month (UTC)",
                    cap, spent);
        rc = -1;
    }
    PQclear(r);
    return rc;
}

/* ---- shared endpoints (admin) ----
 *
 * PUT /v1/admin/endpoints/{id}/shared {"shared": true|false}: the operator offers one of its own
 * value-billed endpoints to every account (callers name it as `model` and pay per token), or
 * withdraws it. Shared names are unique among live shared endpoints. */
static const char *const share_fields[] = {"shared", NULL};

static void h_share(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    json_t *body = NULL;
    PGresult *r = NULL;
    if (strcmp(a.role, "admin") != 0) {
        httpd_error(req, 403, "admin_only", NULL, "only the operator may share endpoints");
        goto out;
    }
    if (!api_is_uuid(req->params[0])) {
        httpd_error(req, 404, "not_found", NULL, "endpoint %s does not exist", req->params[0]);
        goto out;
    }
    body = httpd_body_object(req);
    if (!body || httpd_reject_unknown(req, body, share_fields) != 0) goto out;
    struct jsonx_err je = {0};
    int shared;
    enum jsonx_rc rc = jsonx_get_bool(body, "shared", 1, &shared, &je);
    if (rc != JSONX_OK) {
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    "shared", "%s", je.message);
        goto out;
    }
    const char *p[] = {req->params[0], a.account_id_str, shared ? "t" : "f"};
    char ss[6];
    enum db_status st = db_exec(c,
                                "UPDATE endpoints SET shared = $3::boolean WHERE id = $1::uuid "
                                "AND account_id = $2::bigint AND state <> 'deleted' "
                                "AND (billing_mode = 'value' OR NOT $3::boolean) "
                                "RETURNING id, name, shared",
                                3, p, &r, ss);
    if (st == DB_NONE) {
        PQclear(r);
        r = NULL;
        st = db_exec(c,
                     "SELECT billing_mode FROM endpoints WHERE id = $1::uuid "
                     "AND account_id = $2::bigint AND state <> 'deleted'",
                     2, p, &r, NULL);
        if (st == DB_ROWS)
            httpd_error(req, 409, "not_value_billed", "shared",
                        "only a value-billed endpoint can be shared (its callers pay per token)");
        else if (st == DB_NONE)
            httpd_error(req, 404, "not_found", NULL, "endpoint %s does not exist", req->params[0]);
        else
            httpd_error(req, 503, "database_unavailable", NULL, "could not share the endpoint");
        goto out;
    }
    if (st < 0) {
        if (!strcmp(ss, "23505"))
            httpd_error(req, 409, "name_taken", "shared",
                        "another shared endpoint has this name already");
        else
            httpd_error(req, 503, "database_unavailable", NULL, "could not share the endpoint");
        goto out;
    }
    log_info("endpoint %s %s", req->params[0], shared ? "shared" : "no longer shared");
    httpd_reply_json(req, 200,
                     json_pack("{s:s, s:s, s:s, s:b}", "object", "endpoint_sharing", "endpoint_id",
                               PQgetvalue(r, 0, 0), "name", PQgetvalue(r, 0, 1), "shared",
                               !strcmp(PQgetvalue(r, 0, 2), "t")));
out:
    PQclear(r);
    json_decref(body);
    ctl_db_done(req, c);
}

const struct httpd_route billing_routes[] = {
    {"GET", "/v1/billing/balance", h_balance},
    {"GET", "/v1/billing/ledger", h_ledger},
    {"GET", "/v1/billing/usage", h_usage},
    {"GET", "/v1/billing/statements/{}", h_statement},
    {"POST", "/v1/admin/accounts/{}/credits", h_credit},
    {"GET", "/v1/admin/accounts/{}/quotas", h_get_quotas},
    {"PUT", "/v1/admin/accounts/{}/quotas", h_put_quotas},
    {"PUT", "/v1/admin/endpoints/{}/shared", h_share},
};
const size_t billing_nroutes = sizeof billing_routes / sizeof billing_routes[0];
