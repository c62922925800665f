/* leader: see leader.h. */
#include "leader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "replica.h"
#include "scheduler.h"
#include "util.h"

#define LEADER_LOCK_KEY "7311002"

static pthread_t leader_thread;
static volatile int leader_quit;
static int leader_running;

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
    enum db_status st = db_exec(
        c,
        "SELECT h.id, h.name, (s.seen_at IS NULL OR s.seen_at < now() - $1::bigint * "
        "  interval '1 millisecond') FROM hosts h LEFT JOIN host_seen s ON s.host_id = h.id "
        "WHERE h.state = 'ready' FOR UPDATE OF h",
        1, p, &r, NULL);
    if (st <= 0) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    int n = PQntuples(r), silent = 0;
    for (int i = 0; i < n; i++)
        silent += PQgetvalue(r, i, 2)[0] == 't';
    /* More than half silent at once (with more than one host): suspect our own network. */
    if (n > 1 && silent * 2 > n) {
        log_warn("%d of %d hosts are silent at once: not marking any lost", silent, n);
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

int leader_liveness_pass(PGconn *c, int64_t timeout_ms)
{
    struct live lv = {timeout_ms, 0};
    return db_txn_run(c, liveness_txn, &lv) < 0 ? -1 : lv.lost;
}

static PGconn *leader_connect(const char *url)
{
    /* keepalives and tcp_user_timeout: a leader that vanished must lose its lock quickly. */
    const char *keys[] = {
        "dbname",           "keepalives",       "keepalives_idle",  "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "application_name", NULL};
    const char *vals[] = {url, "1", "10", "5", "3", "30000", "orp-controller-leader", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        log_warn("leader: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    db_quiet_notices(c);
    return c;
}

static void *leader_main(void *arg)
{
    struct ctl *ctl = arg;
    PGconn *c = NULL;
    int leading = 0;
    log_set_context("leader");
    while (!leader_quit) {
        if (!c || PQstatus(c) != CONNECTION_OK) {
            if (c) PQfinish(c);
            leading = 0;
            c = leader_connect(ctl->cfg.database_url);
        }
        if (c && !leading) {
            const char *p[] = {LEADER_LOCK_KEY};
            PGresult *r;
            if (db_exec(c, "SELECT pg_try_advisory_lock($1::bigint)", 1, p, &r, NULL) == DB_ROWS) {
                leading = PQgetvalue(r, 0, 0)[0] == 't';
                PQclear(r);
                if (leading) log_info("this controller is now the leader");
            }
        }
        if (c && leading) {
            leader_liveness_pass(c, ctl->cfg.liveness_timeout_ms);
            sched_pass(c);
        }
        util_sleep_ms(ctl->cfg.scheduler_interval_ms);
    }
    if (c) PQfinish(c);
    return NULL;
}

int leader_start(struct ctl *ctl)
{
    leader_quit = 0;
    if (pthread_create(&leader_thread, NULL, leader_main, ctl) != 0) return -1;
    leader_running = 1;
    return 0;
}

void leader_stop(void)
{
    if (!leader_running) return;
    leader_quit = 1;
    pthread_join(leader_thread, NULL);
    leader_running = 0;
}
