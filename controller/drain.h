/* drain: empties hosts an operator is draining (hosts.draining, set by POST
 * /v1/admin/hosts/{id}/drain), one replica at a time, make before break: for a replica on the
 * host, a replacement replica of the same endpoint is created (replicas.replaces names the one
 * it takes over from) and placed elsewhere by the scheduler (the draining host is cordoned); once
 * the replacement is ready, the old replica is stopped; then the next. So an endpoint never has
 * fewer ready replicas than before because of a drain. When nothing live is left on the host, its
 * draining flag is cleared (it stays cordoned until uncordoned).
 *
 * A replacement that cannot be placed (no capacity) waits, and the old replica keeps serving:
 * a drain never takes capacity away to make progress. For a moment between the replacement
 * becoming ready and the old one stopping, both are ready (and a time-billed endpoint pays for
 * both): that is the price of not dropping below capacity.
 *
 * drain_pass is idempotent and is run by the leader after the scheduler, each pass. */
#ifndef ORP_DRAIN_H
#define ORP_DRAIN_H

#include <libpq-fe.h>

/* One drain step for every draining host. Returns the number of changes made (replacements
 * created, old replicas stopped, drains finished), or -1 on a database error. */
int drain_pass(PGconn *c);

#endif
