/* leader: see leader.h. */
#include "leader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "credit.h"
#include "drain.h"
#include "housekeeping.h"
#include "liveness.h"
#include "metering.h"
#include "scheduler.h"
#include "util.h"

#define LEADER_LOCK_KEY "7311002"

static pthread_t leader_thread;
static volatile int leader_quit;
static int leader_running;

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
    int64_t last_housekeeping = 0;
    log_set_context("leader");
    while (!leader_quit) {
        if (!c || PQstatus(c) != CONNECTION_OK) {
            if (c) PQfinish(c);
            leading = 0;
            c = leader_connect(ctl->cfg.database_url);
        }
        if (c && !leading && ctl->cfg.unlocked_leader) {
            leading = 1;
            log_warn("leader loops run WITHOUT election (--unlocked-leader, for tests only)");
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
            liveness_pass(c, ctl->cfg.liveness_timeout_ms);
            sched_pass(c);
            drain_pass(c);
            metering_pass(c, ctl->cfg.billing_period_s);
            credit_pass(c, ctl->cfg.credit_grace_s);
            /* Expired rows are harmless for a while: once a minute is plenty. */
            if (util_now_ms() - last_housekeeping >= 60000) {
                housekeeping_pass(c);
                last_housekeeping = util_now_ms();
            }
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
