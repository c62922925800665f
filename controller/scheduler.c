/* scheduler: see scheduler.h. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "replica.h"
#include "util.h"

int sched_place(struct sched_host *hosts, int nhosts, const char *kind, int n, int *chosen)
{
    int best = -1, best_free = 0;
    for (int h = 0; h < nhosts; h++) {
        int nfree = 0;
        for (int d = 0; d < hosts[h].ndevices; d++)
            if (hosts[h].devices[d].free && !strcmp(hosts[h].devices[d].kind, kind)) nfree++;
        if (nfree < n) continue;
        if (best < 0 || nfree < best_free) {
            best = h;
            best_free = nfree;
        }
    }
    if (best < 0) return -1;
    /* Lowest device indexes first: a deterministic choice an operator can predict. */
    int got = 0;
    struct sched_host *bh = &hosts[best];
    while (got < n) {
        int pick = -1;
        for (int d = 0; d < bh->ndevices; d++)
            if (bh->devices[d].free && !strcmp(bh->devices[d].kind, kind) &&
                (pick < 0 || bh->devices[d].idx < bh->devices[pick].idx))
                pick = d;
        bh->devices[pick].free = 0;
        chosen[got++] = pick;
    }
    return best;
}

#define SCHED_MAX_HOSTS 256 /* a pass loads the whole fleet; beyond this, page it */

struct pass {
    struct sched_host *hosts;
    int nhosts;
    int placed;
};

static int find_host(struct pass *p, int64_t id)
{
    for (int i = 0; i < p->nhosts; i++)
        if (p->hosts[i].id == id) return i;
    return -1;
}

static enum db_status load_fleet(PGconn *c, struct pass *p)
{
    PGresult *r;
    /* Devices of live hosts, each marked free unless a live replica holds it. */
    enum db_status st = db_exec(
        c,
        "SELECT g.host_id, g.uuid, g.kind, g.idx, "
        "  (g.healthy AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.host_id = g.host_id "
        "     AND r.state <> 'stopped' AND r.state <> 'pending' AND g.uuid = ANY (r.devices))) "
        "FROM gpus g JOIN hosts h ON h.id = g.host_id WHERE h.state = 'ready' "
        "ORDER BY g.host_id, g.idx",
        0, NULL, &r, NULL);
    if (st < 0) return st;
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t hid = db_int(r, i, 0);
        int h = find_host(p, hid);
        if (h < 0) {
            if (p->nhosts == SCHED_MAX_HOSTS) continue;
            h = p->nhosts++;
            p->hosts[h].id = hid;
            p->hosts[h].ndevices = 0;
        }
        struct sched_host *hh = &p->hosts[h];
        if (hh->ndevices == SCHED_MAX_DEVICES) continue;
        struct sched_device *d = &hh->devices[hh->ndevices++];
        snprintf(d->uuid, sizeof d->uuid, "%s", PQgetvalue(r, i, 1));
        snprintf(d->kind, sizeof d->kind, "%s", PQgetvalue(r, i, 2));
        d->idx = (int)db_int(r, i, 3);
        d->free = PQgetvalue(r, i, 4)[0] == 't';
    }
    PQclear(r);
    return DB_ROWS;
}

static enum db_status pass_txn(PGconn *c, void *arg)
{
    struct pass *p = arg;
    p->nhosts = 0;
    p->placed = 0;
    PGresult *pend;
    /* SKIP LOCKED: a replica being changed by someone else is placed on the next pass. */
    enum db_status st = db_exec(c,
                                "SELECT r.id, e.device_kind, e.gpus_per_replica, r.reason "
                                "FROM replicas r JOIN endpoints e ON e.id = r.endpoint_id "
                                "WHERE r.state = 'pending' ORDER BY r.created_at, r.ordinal "
                                "FOR UPDATE OF r SKIP LOCKED",
                                0, NULL, &pend, NULL);
    if (st < 0) return st;
    if (st == DB_NONE) {
        PQclear(pend);
        return DB_NONE;
    }
    st = load_fleet(c, p);
    if (st < 0) {
        PQclear(pend);
        return st;
    }
    for (int i = 0; i < PQntuples(pend) && st >= 0; i++) {
        const char *rid = PQgetvalue(pend, i, 0);
        const char *kind = PQgetvalue(pend, i, 1);
        int n = (int)db_int(pend, i, 2);
        int chosen[SCHED_MAX_DEVICES];
        int h = n <= SCHED_MAX_DEVICES ? sched_place(p->hosts, p->nhosts, kind, n, chosen) : -1;
        if (h < 0) {
            char why[160];
            snprintf(why, sizeof why, "waiting for a host with %d free %s device%s", n,
                     !strcmp(kind, "cpu") ? "CPU" : "GPU", n == 1 ? "" : "s");
            if (strcmp(PQgetvalue(pend, i, 3), why) != 0) st = replica_note_pending(c, rid, why);
            continue;
        }
        struct buf devs = {0};
        buf_append(&devs, "{", 1);
        for (int k = 0; k < n; k++)
            buf_printf(&devs, "%s\"%s\"", k ? "," : "", p->hosts[h].devices[chosen[k]].uuid);
        buf_append(&devs, "}", 1);
        st = replica_assign(c, rid, p->hosts[h].id, devs.data);
        buf_free(&devs);
        if (st == DB_ROWS) p->placed++;
    }
    PQclear(pend);
    return st < 0 ? st : DB_ROWS;
}

int sched_pass(PGconn *c)
{
    struct pass p = {0};
    p.hosts = calloc(SCHED_MAX_HOSTS, sizeof *p.hosts);
    if (!p.hosts) return -1;
    enum db_status st = db_txn_run(c, pass_txn, &p);
    free(p.hosts);
    if (st < 0) return -1;
    if (p.placed) log_info("scheduler placed %d replica(s)", p.placed);
    return p.placed;
}
