/* housekeeping: deletes rows that have outlived their use, so tables that grow with traffic stay
 * bounded: expired or long-idle sessions, idempotency keys past their 24 h replay window. Run by
 * the leader about once a minute; idempotent. The only code that deletes from these tables in
 * bulk. */
#ifndef ORP_HOUSEKEEPING_H
#define ORP_HOUSEKEEPING_H

#include "db.h"

/* Returns the number of rows deleted, or -1. */
int housekeeping_pass(PGconn *c);

#endif
