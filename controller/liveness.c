/* liveness: see liveness.h. */
#include "liveness.h"

#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "replica.h"

struct live {
    int64_t timeout_ms;
    int lost;
};

static enum db_status liveness_txn(PGconn *c, void *arg)
{
    struct live *lv = arg;
    char ms[24];
    snprintf(ms, sizeof ms, "%lld", (long long)lv->timeout_ms);
    const char *p[] = {ms};
    PGresult *r;
    /* Column 2: silent past the timeout; column 3: silent for half of it (going silent). */
    enum db_status st = db_exec(
        c,
        "SELECT h.id, h.name, "
        "  (s.seen_at IS NULL OR s.seen_at < now() - $1::bigint * interval '1 millisecond'), "
        "  (s.seen_at IS NULL OR s.seen_at < now() - $1::bigint / 2 * interval '1 millisecond') "
        "FROM hosts h LEFT JOIN host_seen s ON s.host_id = h.id "
        "WHERE h.state = 'ready' FOR UPDATE OF h",
        1, p, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    int n = PQntuples(r), silent = 0, going = 0;
    for (int i = 0; i < n; i++) {
        silent += PQgetvalue(r, i, 2)[0] == 't';
        going += PQgetvalue(r, i, 3)[0] == 't';
    }
    /* More than half silent at once (with more than one host): suspect our own network. Hosts
     * that went quiet together cross the timeout up to a heartbeat apart, so those silent for half
     * the timeout count too: otherwise the first to cross would be marked lost alone, the next
     * one a pass later among fewer hosts, and so on, and "at once" would never be seen. */
    if (silent && n > 1 && going * 2 > n) {
        log_warn("%d of %d hosts are silent at once: not marking any lost", going, n);
        PQclear(r);
        return DB_NONE;
    }
    for (int i = 0; i < n && st >= 0; i++) {
        if (PQgetvalue(r, i, 2)[0] != 't') continue;
        const char *hid = PQgetvalue(r, i, 0);
        const char *ph[] = {hid};
        st = db_cmd(c, "UPDATE hosts SET state = 'lost', updated_at = now() WHERE id = $1::bigint",
                    1, ph);
        if (st < 0) break;
        char why[200];
        snprintf(why, sizeof why, "host %s stopped sending heartbeats", PQgetvalue(r, i, 1));
        st = replica_requeue_host(c, strtoll(hid, NULL, 10), why);
        log_warn("%s: marked lost, its replicas will be placed again", why);
        lv->lost++;
    }
    PQclear(r);
    return st;
}

int liveness_pass(PGconn *c, int64_t timeout_ms)
{
    struct live lv = {timeout_ms, 0};
    return db_txn_run(c, liveness_txn, &lv) < 0 ? -1 : lv.lost;
}
