/* metering: see metering.h. Each kind is one SQL statement: locking, splitting into periods,
 * pricing, writing the entries and marking what was billed happen together, so there is no
 * window in which something is billed but not marked, or marked but not billed. */
#include "metering.h"

#include <stdio.h>

#include "log.h"

/* Both statements end the same way: `priced` holds one row per (account, endpoint, period) with
 * its idempotency key; `ins` writes them; a row whose key exists already is a late arrival (a
 * ready interval or usage event committed after its period was billed, e.g. by a transaction that
 * began before the period ended) and is written under the key suffixed ':late:<this pass's
 * period>', so it is billed once, in the period it arrived in, and never dropped. Concurrent
 * passes cannot both see the same rows: they are locked and marked by the first. */
#define METERING_TAIL                                                                              \
    "ins AS (INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key, "       \
    "          endpoint_id, period_start, quantity, unit, memo, gpu_type) "                        \
    "        SELECT account_id, amount, kind, key, endpoint_id, period_start, quantity, unit, "    \
    "          memo, gpu_type FROM priced ON CONFLICT (idempotency_key) DO NOTHING "               \
    "        RETURNING idempotency_key), "                                                         \
    "late AS (INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key, "      \
    "           endpoint_id, period_start, quantity, unit, memo, gpu_type) "                       \
    "         SELECT account_id, amount, kind, "                                                   \
    "           key || ':late:' || extract(epoch FROM date_bin($1::interval, now(), "              \
    "             timestamptz 'epoch'))::bigint, endpoint_id, period_start, quantity, unit, "      \
    "           memo || ' (late)', gpu_type FROM priced "                                          \
    "         WHERE key NOT IN (SELECT idempotency_key FROM ins) "                                 \
    "         ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1) "                              \
    "SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM late)"

/* Ready time of closed periods. iv: the unbilled part of each interval up to the current period's
 * start (locked); moved: marks it billed; pieces: that part split by period; time-billed
 * endpoints only are charged (the ready time of value-billed endpoints is marked, not charged).
 * An interval is one GPU type's devices of a replica (schema/016): a period is priced per
 * (endpoint, type) at device_price_at(), the type's price version in force at the period's start
 * or else the device kind's; a typed charge's key ends ':t<type id>'. */
static const char *const TIME_SQL =
    "WITH cur AS (SELECT date_bin($1::interval, now(), timestamptz 'epoch') AS t), "
    "iv AS (SELECT i.id, i.account_id, i.endpoint_id, i.device_kind, i.gpu_type_id, i.devices, "
    "         i.billed_until AS from_t, least(coalesce(i.ended_at, cur.t), cur.t) AS upto, "
    "         e.billing_mode "
    "       FROM ready_intervals i JOIN endpoints e ON e.id = i.endpoint_id, cur "
    "       WHERE i.billed_until < least(coalesce(i.ended_at, cur.t), cur.t) "
    "       FOR UPDATE OF i), "
    "moved AS (UPDATE ready_intervals r SET billed_until = iv.upto FROM iv WHERE r.id = iv.id "
    "          RETURNING r.id), "
    "pieces AS (SELECT iv.account_id, iv.endpoint_id, iv.device_kind, iv.gpu_type_id, "
    "             gs AS period_start, "
    "             iv.devices * extract(epoch FROM least(iv.upto, gs + $1::interval) "
    "                                         - greatest(iv.from_t, gs)) * 1000 AS ms "
    "           FROM iv, generate_series(date_bin($1::interval, iv.from_t, timestamptz 'epoch'), "
    "                                    iv.upto, $1::interval) gs "
    "           WHERE gs < iv.upto AND iv.billing_mode = 'time'), "
    "sums AS (SELECT account_id, endpoint_id, device_kind, gpu_type_id, period_start, "
    "           round(sum(ms))::bigint AS device_ms FROM pieces GROUP BY 1, 2, 3, 4, 5), "
    "priced AS (SELECT s.account_id, "
    "    -ceil(s.device_ms::numeric * p.micros / 3600000)::bigint AS amount, "
    "    'usage_time' AS kind, "
    "    'time:' || s.endpoint_id || ':' || extract(epoch FROM s.period_start)::bigint || "
    "      COALESCE(':t' || s.gpu_type_id, '') AS key, "
    "    s.endpoint_id, s.period_start, s.device_ms AS quantity, 'device_ms' AS unit, "
    "    COALESCE(g.name, s.device_kind) || ' at ' || p.micros || ' micros/device-hour' AS memo, "
    "    g.name AS gpu_type "
    "  FROM sums s LEFT JOIN gpu_types g ON g.id = s.gpu_type_id CROSS JOIN LATERAL "
    "    (SELECT device_price_at(s.device_kind, s.gpu_type_id, s.period_start) AS micros) p "
    "  WHERE s.device_ms > 0 AND p.micros IS NOT NULL), " METERING_TAIL;

/* Usage events of closed periods (by arrival). Events of time-billed endpoints are marked as
 * covered by time billing; those of value-billed endpoints are charged at the model's prices.
 * A shared endpoint has many payers (each caller's account, schema/010): its key carries the
 * account, value:<endpoint>:a<account>:<period>, so each is charged once. */
static const char *const USAGE_TIME_SQL =
    "UPDATE usage_events u SET billed_in = 'time' FROM endpoints e "
    "WHERE e.id = u.endpoint_id AND e.billing_mode = 'time' AND u.billed_in IS NULL "
    "  AND u.created_at < date_bin($1::interval, now(), timestamptz 'epoch')";

static const char *const VALUE_SQL =
    "WITH marked AS ("
    "  UPDATE usage_events u SET billed_in = 'value:' || u.endpoint_id || "
    "    CASE WHEN e.shared THEN ':a' || u.account_id ELSE '' END || ':' || "
    "    extract(epoch FROM date_bin($1::interval, u.created_at, timestamptz 'epoch'))::bigint "
    "  FROM endpoints e "
    "  WHERE e.id = u.endpoint_id AND e.billing_mode = 'value' AND u.billed_in IS NULL "
    "    AND u.created_at < date_bin($1::interval, now(), timestamptz 'epoch') "
    "  RETURNING u.account_id, u.endpoint_id, e.model_id, u.billed_in AS key, "
    "    date_bin($1::interval, u.created_at, timestamptz 'epoch') AS period_start, "
    "    u.prompt_tokens, u.completion_tokens), "
    "sums AS (SELECT account_id, endpoint_id, model_id, key, period_start, "
    "           sum(prompt_tokens) AS pt, sum(completion_tokens) AS ct FROM marked "
    "         GROUP BY 1, 2, 3, 4, 5), "
    "priced AS (SELECT s.account_id, "
    "    -ceil((s.pt * p.input_price_micros_per_mtok "
    "           + s.ct * p.output_price_micros_per_mtok) / 1000000.0)::bigint AS amount, "
    "    'usage_value' AS kind, s.key, s.endpoint_id, s.period_start, "
    "    (s.pt + s.ct)::bigint AS quantity, 'tokens' AS unit, "
    "    s.pt || ' in at ' || p.input_price_micros_per_mtok || ', ' || s.ct || ' out at ' || "
    "    p.output_price_micros_per_mtok || ' micros/Mtok' AS memo, NULL::text AS gpu_type "
    "  FROM sums s CROSS JOIN LATERAL (SELECT mp.input_price_micros_per_mtok, "
    "    mp.output_price_micros_per_mtok FROM model_prices mp "
    "    WHERE mp.model_id = s.model_id AND mp.effective_at <= s.period_start "
    "    ORDER BY mp.effective_at DESC LIMIT 1) p), " METERING_TAIL;

struct pass {
    char period[32];
    int written;
};

static enum db_status pass_txn(PGconn *c, void *arg)
{
    struct pass *p = arg;
    const char *prm[] = {p->period};
    PGresult *r;
    p->written = 0;
    enum db_status st = db_exec(c, TIME_SQL, 1, prm, &r, NULL);
    if (st < 0) return st;
    p->written += (int)db_int(r, 0, 0);
    PQclear(r);
    if ((st = db_cmd(c, USAGE_TIME_SQL, 1, prm)) < 0) return st;
    if ((st = db_exec(c, VALUE_SQL, 1, prm, &r, NULL)) < 0) return st;
    p->written += (int)db_int(r, 0, 0);
    PQclear(r);
    return DB_ROWS;
}

int metering_pass(PGconn *c, int64_t period_s)
{
    struct pass p;
    snprintf(p.period, sizeof p.period, "%lld seconds", (long long)period_s);
    if (db_txn_run(c, pass_txn, &p) < 0) return -1;
    if (p.written)
        log_info("metering wrote %d ledger entr%s", p.written, p.written == 1 ? "y" : "ies");
    return p.written;
}
