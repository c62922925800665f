/* drain: see drain.h. */
#include "drain.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "replica.h"

struct drain {
    int changes;
};

/* One step on one draining host (hid, name). */
static enum db_status drain_host(PGconn *c, const char *hid, const char *name, struct drain *d)
{
    const char *p[] = {hid};
    PGresult *r;
    /* The replica being moved now, if any: one of the host's live replicas with a replacement that
     * is not stopped, and that replacement's state. */
    enum db_status st = db_exec(
        c,
        "SELECT o.id, o.epoch, x.state FROM replicas o JOIN replicas x ON x.replaces = o.id "
        "WHERE o.host_id = $1::bigint AND o.state IN ('assigned', 'downloading', 'starting', "
        "'ready', 'failed') "
        "  AND x.state <> 'stopped' LIMIT 1",
        1, p, &r, NULL);
    if (st < 0) return st;
    if (st == DB_ROWS) {
        if (!strcmp(PQgetvalue(r, 0, 2), "ready")) {
            char why[200];
            snprintf(why, sizeof why, "moved off host %s (drain)", name);
            st = replica_transition(c, PQgetvalue(r, 0, 0), db_int(r, 0, 1), 0, "stopping", why, 0,
                                    -1);
            if (st == DB_ROWS) {
                d->changes++;
                log_info("drain %s: replica %s replaced, stopping it", name, PQgetvalue(r, 0, 0));
            }
        }
        PQclear(r);
        return st < 0 ? st : DB_ROWS; /* one move at a time: wait for this one */
    }
    PQclear(r);
    /* The next replica to move: the oldest live one. */
    st = db_exec(c,
                 "SELECT id FROM replicas WHERE host_id = $1::bigint "
                 "  AND state IN ('assigned', 'downloading', 'starting', 'ready', 'failed') "
                 "ORDER BY created_at, ordinal LIMIT 1",
                 1, p, &r, NULL);
    if (st < 0) return st;
    if (st == DB_ROWS) {
        char why[200];
        snprintf(why, sizeof why, "replacing a replica on draining host %s", name);
        st = replica_create_replacement(c, PQgetvalue(r, 0, 0), why);
        if (st == DB_ROWS) {
            d->changes++;
            log_info("drain %s: replacement for replica %s created", name, PQgetvalue(r, 0, 0));
        }
        PQclear(r);
        return st < 0 ? st : DB_ROWS;
    }
    PQclear(r);
    /* Nothing live is left (stopping ones still release their devices; that is fine). */
    st = db_cmd(c,
                "UPDATE hosts SET draining = false, updated_at = now() "
                "WHERE id = $1::bigint AND draining",
                1, p);
    if (st == DB_ROWS) {
        d->changes++;
        log_info("drain %s: finished, the host stays cordoned", name);
    }
    return st;
}

static enum db_status drain_txn(PGconn *c, void *arg)
{
    struct drain *d = arg;
    d->changes = 0;
    PGresult *r;
    /* FOR UPDATE: an uncordon or revoke of the host waits for this pass, or we see its result. */
    enum db_status st = db_exec(c,
                                "SELECT id, name FROM hosts WHERE draining AND state = 'ready' "
                                "ORDER BY id FOR UPDATE",
                                0, NULL, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    for (int i = 0; i < PQntuples(r) && st >= 0; i++)
        st = drain_host(c, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), d);
    PQclear(r);
    return st;
}

int drain_pass(PGconn *c)
{
    struct drain d = {0};
    return db_txn_run(c, drain_txn, &d) < 0 ? -1 : d.changes;
}
