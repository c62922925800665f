/* housekeeping: see housekeeping.h. The windows match the readers: auth.c refuses a session past
 * expires_at or idle for 24 h, and idempotency.c replays a key for 24 h. A batch limit keeps one
 * pass short even after a long outage. */
#include "housekeeping.h"

#include <stdlib.h>

#include "log.h"

#define HOUSEKEEPING_BATCH "10000" /* rows per table per pass */

static const char *const STATEMENTS[] = {
    "DELETE FROM sessions WHERE ctid IN (SELECT ctid FROM sessions "
    "  WHERE expires_at < now() OR last_seen_at < now() - interval '24 hours' "
    "  LIMIT " HOUSEKEEPING_BATCH ")",
    "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys "
    "  WHERE created_at < now() - interval '24 hours' LIMIT " HOUSEKEEPING_BATCH ")",
};

int housekeeping_pass(PGconn *c)
{
    int deleted = 0;
    for (size_t i = 0; i < sizeof STATEMENTS / sizeof STATEMENTS[0]; i++) {
        PGresult *r;
        if (db_exec(c, STATEMENTS[i], 0, NULL, &r, NULL) < 0) return -1;
        deleted += atoi(PQcmdTuples(r));
        PQclear(r);
    }
    if (deleted) log_info("housekeeping deleted %d expired row(s)", deleted);
    return deleted;
}
