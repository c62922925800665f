/* db: the controller's PostgreSQL access: bounded connection pools, one call that runs a
 * parameterized statement and classifies the outcome, and the transaction runner.
 *
 * Each listener has its own pool so a burst on one cannot starve another. A checkout waits at
 * most the pool's timeout and then fails, and the caller answers 503: waiting longer only piles
 * up threads. SQL is only ever sent with parameters (PQexecParams); nothing here formats input
 * into SQL text. */
#ifndef ORP_DB_H
#define ORP_DB_H

#include <libpq-fe.h>
#include <stdint.h>

/* Four-valued status (after GNU Taler): hard error, soft error (retry the transaction), no rows,
 * one or more rows. */
enum db_status { DB_HARD = -2, DB_SOFT = -1, DB_NONE = 0, DB_ROWS = 1 };

struct db_pool;

struct db_pool *db_pool_new(const char *conninfo, int size, int checkout_timeout_ms,
                            const char *name);
void db_pool_free(struct db_pool *p); /* accepts NULL */
/* A connection, or NULL when none freed up in time or the database is unreachable. */
PGconn *db_acquire(struct db_pool *p);
void db_release(struct db_pool *p, PGconn *c);

/* Runs one statement with text parameters (NULL = SQL NULL). *res gets the result (caller
 * PQclear()s it; NULL on DB_HARD/DB_SOFT). A unique violation is reported as DB_HARD with
 * *sqlstate set, so callers can answer 409. sqlstate may be NULL. */
enum db_status db_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char sqlstate[6]);
/* Like db_exec, for a statement on a hot path: run as the prepared statement name (parsed and
 * planned once per connection; prepared on its first use there), which saves the server most of
 * the work of a small query. name must be unique to sql across the program. Inside a transaction
 * block it is plain db_exec. */
enum db_status db_exec_prepared(PGconn *c, const char *name, const char *sql, int nparams,
                                const char *const *params, PGresult **res, char sqlstate[6]);
/* Like db_exec but discards the result; returns the status. */
enum db_status db_cmd(PGconn *c, const char *sql, int nparams, const char *const *params);

/* Runs fn inside BEGIN … COMMIT, retrying serialization failures and deadlocks up to 5 times.
 * fn returns DB_HARD/DB_SOFT to roll back, anything else to commit. */
enum db_status db_txn_run(PGconn *c, enum db_status (*fn)(PGconn *c, void *arg), void *arg);

/* Routes the server's NOTICE messages to debug logs instead of stderr. */
void db_quiet_notices(PGconn *c);

/* Value of a column as a number (0 when NULL). */
int64_t db_int(PGresult *r, int row, int col);

#endif
