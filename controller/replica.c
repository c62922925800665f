/* replica: see replica.h. */
#include "replica.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* Legal predecessors of each state, as text[] literals for the UPDATE's WHERE clause. */
static const struct {
    const char *to;
    const char *from;
} legal[] = {
    {"assigned", "{pending}"},
    {"downloading", "{assigned,downloading,starting,failed}"},
    {"starting", "{assigned,downloading,starting,ready,failed}"}, /* ready: probes failing */
    {"ready", "{assigned,downloading,starting,ready,failed}"},
    {"failed", "{assigned,downloading,starting,ready,failed}"},
    {"stopping", "{assigned,downloading,starting,ready,failed}"},
    {"stopped", "{pending,stopping}"},
    {"pending", "{assigned,downloading,starting,ready,failed}"},
};

static const char *legal_from(const char *to)
{
    for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++)
        if (!strcmp(legal[i].to, to)) return legal[i].from;
    return NULL;
}

enum db_status replica_transition(PGconn *c, const char *id, int64_t epoch, int64_t host_id,
                                  const char *to, const char *reason, int port, int restarts)
{
    const char *from = legal_from(to);
    if (!from) return DB_HARD;
    char ep[24], hid[24], po[16], re[16];
    snprintf(ep, sizeof ep, "%lld", (long long)epoch);
    snprintf(hid, sizeof hid, "%lld", (long long)host_id);
    snprintf(po, sizeof po, "%d", port);
    snprintf(re, sizeof re, "%d", restarts);
    const char *p[] = {id,
                       to,
                       from,
                       epoch ? ep : NULL,
                       host_id ? hid : NULL,
                       reason,
                       port > 0 ? po : NULL,
                       restarts >= 0 ? re : NULL};
    return db_cmd(c,
                  "UPDATE replicas SET state = $2, reason = COALESCE($6, reason), "
                  "  port = COALESCE($7::int, port), restarts = COALESCE($8::int, restarts), "
                  "  ready_at = CASE WHEN $2 = 'ready' AND state <> 'ready' THEN now() "
                  "                  WHEN $2 = 'ready' THEN ready_at ELSE NULL END, "
                  "  updated_at = now() "
                  "WHERE id = $1::uuid AND state = ANY ($3::text[]) "
                  "  AND ($4::bigint IS NULL OR epoch = $4::bigint) "
                  "  AND ($5::bigint IS NULL OR host_id = $5::bigint) "
                  "  AND (state <> $2 OR reason IS DISTINCT FROM COALESCE($6, reason) "
                  "       OR port IS DISTINCT FROM COALESCE($7::int, port) "
                  "       OR restarts IS DISTINCT FROM COALESCE($8::int, restarts))",
                  8, p);
}

enum db_status replica_assign_many(PGconn *c, const char *placements_json, int *assigned)
{
    const char *p[] = {placements_json};
    PGresult *r;
    /* Each row gets its own new epoch (nextval per updated row) and its own secret. */
    enum db_status st =
        db_exec(c,
                "UPDATE replicas r SET state = 'assigned', host_id = x.host_id, "
                "  devices = string_to_array(x.devices, ','), secret = x.secret, "
                "  epoch = nextval('replica_epochs'), reason = '', port = NULL, restarts = 0, "
                "  ready_at = NULL, updated_at = now() "
                "FROM json_to_recordset($1::json) AS x(id uuid, host_id bigint, devices text, "
                "  secret text) "
                "WHERE r.id = x.id AND r.state = 'pending' RETURNING r.id",
                1, p, &r, NULL);
    *assigned = st == DB_ROWS ? PQntuples(r) : 0;
    if (st >= 0) PQclear(r);
    return st;
}

enum db_status replica_note_pending(PGconn *c, const char *id, const char *reason)
{
    const char *p[] = {id, reason};
    return db_cmd(c,
                  "UPDATE replicas SET reason = $2, updated_at = now() "
                  "WHERE id = $1::uuid AND state = 'pending'",
                  2, p);
}

enum db_status replica_stop_endpoint(PGconn *c, const char *endpoint_id)
{
    const char *p[] = {endpoint_id, legal_from("stopping")};
    enum db_status st =
        db_cmd(c,
               "UPDATE replicas SET state = 'stopped', reason = 'endpoint deleted', "
               "  updated_at = now() "
               "WHERE endpoint_id = $1::uuid AND state = 'pending'",
               1, p);
    if (st < 0) return st;
    return db_cmd(c,
                  "UPDATE replicas SET state = 'stopping', reason = 'endpoint deleted', "
                  "  ready_at = NULL, updated_at = now() "
                  "WHERE endpoint_id = $1::uuid AND state = ANY ($2::text[])",
                  2, p);
}

enum db_status replica_stop_endpoints(PGconn *c, PGresult *r, const char *why, int *n)
{
    enum db_status st = DB_ROWS;
    *n = PQntuples(r);
    for (int i = 0; i < PQntuples(r) && st >= 0; i++) {
        st = replica_stop_endpoint(c, PQgetvalue(r, i, 0));
        log_warn("endpoint %s (%s) of account %s stopped: %s", PQgetvalue(r, i, 0),
                 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), why);
    }
    PQclear(r);
    return st;
}

enum db_status replica_reap_stopping(PGconn *c, int64_t host_id, const char *reported)
{
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)host_id);
    const char *p[] = {hid, reported};
    return db_cmd(c,
                  "UPDATE replicas SET state = 'stopped', updated_at = now() "
                  "WHERE host_id = $1::bigint AND state = 'stopping' "
                  "  AND NOT (id::text = ANY ($2::text[]))",
                  2, p);
}

enum db_status replica_create_replacement(PGconn *c, const char *old_id, const char *reason)
{
    const char *p[] = {old_id, reason, legal_from("stopping")}; /* the live states */
    /* ON CONFLICT: replicas_one_replacement allows one live replacement per replica. */
    return db_cmd(c,
                  "INSERT INTO replicas (endpoint_id, account_id, ordinal, reason, replaces) "
                  "SELECT endpoint_id, account_id, ordinal, $2, id FROM replicas "
                  "WHERE id = $1::uuid AND state = ANY ($3::text[]) "
                  "ON CONFLICT DO NOTHING",
                  3, p);
}

enum db_status replica_requeue_host(PGconn *c, int64_t host_id, const char *reason)
{
    char hid[24];
    snprintf(hid, sizeof hid, "%lld", (long long)host_id);
    const char *p[] = {hid, reason, legal_from("pending")};
    /* A replica being drained already has its replacement: placing it again too would leave the
     * endpoint with one replica more than it asked for. It is stopped instead (below). */
    enum db_status st = db_cmd(c,
                               "UPDATE replicas r SET state = 'stopping', reason = $2, "
                               "  ready_at = NULL, updated_at = now() "
                               "WHERE r.host_id = $1::bigint AND r.state = ANY ($3::text[]) "
                               "  AND EXISTS (SELECT 1 FROM replicas x WHERE x.replaces = r.id "
                               "              AND x.state <> 'stopped')",
                               3, p);
    if (st < 0) return st;
    st = db_cmd(c,
                "UPDATE replicas SET state = 'stopped', reason = $2, "
                "  updated_at = now() "
                "WHERE host_id = $1::bigint AND state = 'stopping'",
                2, p);
    if (st < 0) return st;
    return db_cmd(c,
                  "UPDATE replicas SET state = 'pending', reason = $2, host_id = NULL, "
                  "  devices = '{}', port = NULL, ready_at = NULL, updated_at = now() "
                  "WHERE host_id = $1::bigint AND state = ANY ($3::text[])",
                  3, p);
}
