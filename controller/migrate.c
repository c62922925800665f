/* migrate: see migrate.h. A file's number is its version; names must match NNN_*.sql. */
#include "migrate.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "util.h"

/* An arbitrary constant naming the migration lock among all advisory locks. */
#define MIGRATE_LOCK_KEY "7311001"

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_migration(const char *n)
{
    size_t len = strlen(n);
    return len > 8 && n[0] >= '0' && n[0] <= '9' && n[1] >= '0' && n[1] <= '9' && n[2] >= '0' &&
           n[2] <= '9' && n[3] == '_' && !strcmp(n + len - 4, ".sql");
}

static int apply_one(PGconn *c, const char *dir, const char *name)
{
    char version[4] = {name[0], name[1], name[2], 0};
    if (db_cmd(c, "BEGIN", 0, NULL) < 0) return -1;
    const char *lk[] = {MIGRATE_LOCK_KEY};
    if (db_cmd(c, "SELECT pg_advisory_xact_lock($1::bigint)", 1, lk) < 0) goto fail;
    const char *pv[] = {version};
    enum db_status st = db_cmd(c, "SELECT 1 FROM schema_migrations WHERE version = $1::int", 1, pv);
    if (st < 0) goto fail;
    if (st == DB_ROWS) { /* someone else applied it meanwhile */
        db_cmd(c, "COMMIT", 0, NULL);
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *sql = util_read_file(path, NULL);
    if (!sql) {
        log_error("cannot read migration %s", path);
        goto fail;
    }
    /* A migration file holds several statements: PQexec (no parameters) is the only way to run
     * it, and the file is ours, not input. */
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        log_error("migration %s failed: %s", name, PQresultErrorMessage(r));
        PQclear(r);
        goto fail;
    }
    PQclear(r);
    const char *pi[] = {version, name};
    if (db_cmd(c, "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2)", 2, pi) < 0)
        goto fail;
    if (db_cmd(c, "COMMIT", 0, NULL) < 0) return -1;
    log_info("applied migration %s", name);
    return 1;
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return -1;
}

int migrate_run(PGconn *c, const char *schema_dir)
{
    if (db_cmd(c,
               "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
               "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
               0, NULL) < 0)
        return -1;
    DIR *d = opendir(schema_dir);
    if (!d) {
        log_error("cannot open schema directory %s", schema_dir);
        return -1;
    }
    char *names[1000];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 1000)
        if (is_migration(e->d_name)) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_names);
    int applied = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0) {
            int r = apply_one(c, schema_dir, names[i]);
            if (r < 0)
                rc = -1;
            else
                applied += r;
        }
        free(names[i]);
    }
    return rc < 0 ? -1 : applied;
}
