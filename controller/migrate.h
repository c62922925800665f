/* migrate: applies schema/NNN_name.sql files in order, each once, each in its own transaction,
 * under an advisory lock so two controllers starting together do not race. The only writer of
 * schema_migrations. */
#ifndef ORP_MIGRATE_H
#define ORP_MIGRATE_H

#include <libpq-fe.h>

/* Returns the number of migrations applied (0 when up to date) or -1 (logged). */
int migrate_run(PGconn *c, const char *schema_dir);

#endif
