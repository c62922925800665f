/* console_api: see console_api.h. */
#include "console_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "ctl.h"
#include "db.h"

/* GET /v1/quotas: the account's quotas (its own row, else the defaults; null = no limit) and its
 * use of the two that a deploy checks, counted as check_quota in api.c counts them. */
static void h_quotas(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    PGresult *r;
    const char *p[] = {a.account_id_str};
    enum db_status st = db_exec(
        c,
        "SELECT q.max_devices, q.max_endpoints, q.requests_per_min, q.requests_burst, "
        "  q.monthly_spend_cap_micros, q.account_id IS NULL, "
        "  (SELECT COALESCE(sum(gpus_per_replica * replicas), 0) FROM endpoints "
        "   WHERE account_id = $1::bigint AND state = 'active'), "
        "  (SELECT count(*) FROM endpoints WHERE account_id = $1::bigint AND state <> 'deleted'), "
        "  q.tokens_per_min "
        "FROM quotas q WHERE q.account_id = $1::bigint OR q.account_id IS NULL "
        "ORDER BY q.account_id NULLS LAST LIMIT 1",
        1, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read quotas");
        return;
    }
    json_t *o = json_pack("{s:s}", "object", "quotas");
    static const char *const names[] = {"max_devices", "max_endpoints", "requests_per_min",
                                        "requests_burst", "monthly_spend_cap_micros"};
    for (int k = 0; k < 5; k++)
        json_object_set_new(o, names[k],
                            st == DB_NONE || PQgetisnull(r, 0, k) ? json_null()
                                                                  : json_integer(db_int(r, 0, k)));
    json_object_set_new(o, "defaults",
                        json_boolean(st == DB_NONE || PQgetvalue(r, 0, 5)[0] == 't'));
    json_object_set_new(o, "devices_in_use", json_integer(st == DB_ROWS ? db_int(r, 0, 6) : 0));
    json_object_set_new(o, "endpoints_in_use", json_integer(st == DB_ROWS ? db_int(r, 0, 7) : 0));
    json_object_set_new(o, "tokens_per_min",
                        st == DB_NONE || PQgetisnull(r, 0, 8) ? json_null()
                                                              : json_integer(db_int(r, 0, 8)));
    PQclear(r);
    httpd_reply_json(req, 200, o);
}

/* Windows of the stats series: how many periods back from the current one, per granularity. */
static const struct {
    const char *granularity, *step;
    int periods;
} windows[] = {
    {"minute", "1 minute", 60}, /* the last hour */
    {"hour", "1 hour", 48},     /* two days */
    {"day", "1 day", 30},       /* a month */
};

/* New reference: column col of row i as a JSON number, or null when it is NULL (no request of
 * the period had that time). */
static json_t *real_or_null(const PGresult *r, int i, int col)
{
    return PQgetisnull(r, i, col) ? json_null() : json_real(strtod(PQgetvalue(r, i, col), NULL));
}

/* GET /v1/endpoints/{id}/stats?granularity=minute|hour|day */
static void h_stats(struct httpd_req *req)
{
    const char *gran = httpd_query(req, "granularity");
    size_t w = 0;
    while (w < sizeof windows / sizeof windows[0] && gran && strcmp(gran, windows[w].granularity))
        w++;
    if (gran && w == sizeof windows / sizeof windows[0]) {
        httpd_error(req, 400, "invalid_parameter", "granularity",
                    "granularity must be minute, hour or day");
        return;
    }
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *id = req->params[0];
    if (!api_is_uuid(id)) {
        ctl_db_done(req, c);
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
        return;
    }
    char n[16];
    snprintf(n, sizeof n, "%d", windows[w].periods - 1);
    const char *p[] = {id, a.account_id_str, windows[w].granularity, windows[w].step, n};
    PGresult *r;
    /* One row per period of the window, oldest first; the endpoint must be the caller's (a
     * deleted one still has its history). The window's events are read once and counted per
     * period; periods without any get zeros. It wants an index on usage_events (endpoint_id, at)
     * (docs/benchmarks.md: without one, every call scans all accounts' events). */
    enum db_status st = db_exec(
        c,
        "WITH ep AS (SELECT id FROM endpoints WHERE id = $1::uuid AND account_id = $2::bigint), "
        "periods AS (SELECT generate_series(date_trunc($3, now()) - $5::int * $4::interval, "
        "    date_trunc($3, now()), $4::interval) AS p), "
        "ev AS (SELECT date_trunc($3, u.at) AS p, count(*) AS n, sum(u.prompt_tokens) AS pt, "
        "    sum(u.completion_tokens) AS ct, avg(u.ttft_ms) AS tm, "
        "    percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY u.ttft_ms) AS tq, "
        "    sum(u.completion_tokens) FILTER (WHERE u.duration_ms > 0) * 1000.0 "
        "      / NULLIF(sum(u.duration_ms) FILTER (WHERE u.duration_ms > 0), 0) AS tps "
        "  FROM usage_events u JOIN ep ON u.endpoint_id = ep.id "
        "  WHERE u.at >= date_trunc($3, now()) - $5::int * $4::interval GROUP BY 1) "
        "SELECT to_char(periods.p AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "  COALESCE(ev.n, 0), COALESCE(ev.pt, 0), COALESCE(ev.ct, 0), "
        "  round(ev.tm::numeric, 3), round(ev.tq[1]::numeric, 3), round(ev.tq[2]::numeric, 3), "
        "  round(ev.tps::numeric, 3) "
        "FROM ep CROSS JOIN periods LEFT JOIN ev ON ev.p = periods.p ORDER BY periods.p",
        5, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the endpoint's stats");
        return;
    }
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *row = json_pack("{s:s, s:I, s:I, s:I, s:o, s:o, s:o, s:o}", "period_start",
                                PQgetvalue(r, i, 0), "requests", (json_int_t)db_int(r, i, 1),
                                "prompt_tokens", (json_int_t)db_int(r, i, 2), "completion_tokens",
                                (json_int_t)db_int(r, i, 3), "ttft_ms_mean", real_or_null(r, i, 4),
                                "ttft_ms_p50", real_or_null(r, i, 5), "ttft_ms_p95",
                                real_or_null(r, i, 6), "tokens_per_second", real_or_null(r, i, 7));
        json_array_append_new(data, row);
    }
    PQclear(r);
    httpd_reply_json(req, 200,
                     json_pack("{s:s, s:s, s:s, s:o}", "object", "list", "endpoint_id", id,
                               "granularity", windows[w].granularity, "data", data));
}

const struct httpd_route console_routes[] = {
    {"GET", "/v1/quotas", h_quotas},
    {"GET", "/v1/endpoints/{}/stats", h_stats},
};
const size_t console_nroutes = sizeof console_routes / sizeof console_routes[0];
