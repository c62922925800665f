/* db: see db.h. The pool is a fixed array guarded by one mutex and condition variable; broken
 * connections are reset on checkout. */
#include "db.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

struct db_pool {
    char *conninfo;
    char name[32];
    int size;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    PGconn **conns; /* NULL slot: not yet connected */
    int *busy;
};

struct db_pool *db_pool_new(const char *conninfo, int size, int checkout_timeout_ms,
                            const char *name)
{
    struct db_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->conninfo = strdup(conninfo);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->size = size;
    p->timeout_ms = checkout_timeout_ms;
    p->conns = calloc((size_t)size, sizeof *p->conns);
    p->busy = calloc((size_t)size, sizeof *p->busy);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

void db_pool_free(struct db_pool *p)
{
    if (!p) return;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i]) PQfinish(p->conns[i]);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cv);
    free(p->conns);
    free(p->busy);
    free(p->conninfo);
    free(p);
}

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    log_debug("postgres: %s", message);
}

void db_quiet_notices(PGconn *c)
{
    PQsetNoticeProcessor(c, on_notice, NULL);
}

static PGconn *connect_one(struct db_pool *p)
{
    PGconn *c = PQconnectdb(p->conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        log_error("db pool %s: cannot connect: %s", p->name, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    db_quiet_notices(c);
    return c;
}

PGconn *db_acquire(struct db_pool *p)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += p->timeout_ms / 1000;
    deadline.tv_nsec += (long)(p->timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->lock);
    int slot = -1;
    for (;;) {
        for (int i = 0; i < p->size; i++)
            if (!p->busy[i]) {
                slot = i;
                break;
            }
        if (slot >= 0) break;
        if (pthread_cond_timedwait(&p->cv, &p->lock, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&p->lock);
            log_warn("db pool %s: no connection free within %d ms", p->name, p->timeout_ms);
            return NULL;
        }
    }
    p->busy[slot] = 1;
    PGconn *c = p->conns[slot];
    pthread_mutex_unlock(&p->lock);

    /* Connect or repair outside the lock. */
    if (c && PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = NULL;
        }
    }
    if (!c) c = connect_one(p);
    pthread_mutex_lock(&p->lock);
    p->conns[slot] = c;
    if (!c) p->busy[slot] = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->lock);
    return c;
}

void db_release(struct db_pool *p, PGconn *c)
{
    if (!c) return;
    /* A connection left inside a transaction (a bug or an interrupted call) is rolled back
     * rather than handed to the next user half-done. */
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
    pthread_mutex_lock(&p->lock);
    for (int i = 0; i < p->size; i++)
        if (p->conns[i] == c) {
            p->busy[i] = 0;
            break;
        }
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->lock);
}

/* The status of result r of sql (cleared, or handed to *res). */
static enum db_status finish(PGconn *c, PGresult *r, const char *sql, PGresult **res,
                             char sqlstate[6])
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        int rows = st == PGRES_TUPLES_OK ? PQntuples(r) : atoi(PQcmdTuples(r));
        if (res)
            *res = r;
        else
            PQclear(r);
        return rows > 0 ? DB_ROWS : DB_NONE;
    }
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (sqlstate && state) snprintf(sqlstate, 6, "%s", state);
    enum db_status out = DB_HARD;
    if (state && (!strcmp(state, "40001") || !strcmp(state, "40P01"))) out = DB_SOFT;
    if (PQstatus(c) != CONNECTION_OK) out = DB_SOFT;
    if (state && !strcmp(state, "23505"))
        log_debug("unique violation: %s", PQresultErrorMessage(r));
    else if (out == DB_HARD)
        log_error("SQL failed (%s): %s-- %.200s", state ? state : "?", PQresultErrorMessage(r),
                  sql);
    PQclear(r);
    return out;
}

enum db_status db_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char sqlstate[6])
{
    if (res) *res = NULL;
    if (sqlstate) sqlstate[0] = '\0';
    return finish(c, PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0), sql, res,
                  sqlstate);
}

enum db_status db_exec_prepared(PGconn *c, const char *name, const char *sql, int nparams,
                                const char *const *params, PGresult **res, char sqlstate[6])
{
    /* Inside a transaction block a failed EXECUTE would abort the transaction: no shortcut. */
    if (PQtransactionStatus(c) != PQTRANS_IDLE)
        return db_exec(c, sql, nparams, params, res, sqlstate);
    if (res) *res = NULL;
    if (sqlstate) sqlstate[0] = '\0';
    PGresult *r = PQexecPrepared(c, name, nparams, params, NULL, NULL, 0);
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (PQresultStatus(r) == PGRES_FATAL_ERROR && state && !strcmp(state, "26000")) {
        /* First use on this connection (or a new connection): prepare, then run. */
        PQclear(r);
        PGresult *p = PQprepare(c, name, sql, nparams, NULL);
        int ok = PQresultStatus(p) == PGRES_COMMAND_OK;
        PQclear(p);
        if (!ok) return db_exec(c, sql, nparams, params, res, sqlstate);
        r = PQexecPrepared(c, name, nparams, params, NULL, NULL, 0);
    }
    return finish(c, r, sql, res, sqlstate);
}

enum db_status db_cmd(PGconn *c, const char *sql, int nparams, const char *const *params)
{
    return db_exec(c, sql, nparams, params, NULL, NULL);
}

enum db_status db_txn_run(PGconn *c, enum db_status (*fn)(PGconn *c, void *arg), void *arg)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        if (db_cmd(c, "BEGIN", 0, NULL) < 0) return DB_HARD;
        enum db_status st = fn(c, arg);
        if (st < 0) {
            PGresult *r = PQexec(c, "ROLLBACK");
            PQclear(r);
            if (st == DB_SOFT && PQstatus(c) == CONNECTION_OK) continue;
            return st;
        }
        enum db_status cst = db_cmd(c, "COMMIT", 0, NULL);
        if (cst == DB_SOFT && PQstatus(c) == CONNECTION_OK) continue;
        if (cst < 0) return cst;
        return st;
    }
    log_warn("transaction gave up after 5 serialization retries");
    return DB_SOFT;
}

int64_t db_int(PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col)) return 0;
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}
