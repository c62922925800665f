/* replica: the replica state machine, and the only code that writes replicas.state.
 *
 *   pending   no host yet; the scheduler looks for one (reason says what it waits for)
 *   assigned  host, devices, a new epoch and a new secret chosen; the agent will start it
 *   downloading  the agent fetches the model's weights into its cache (reason: the progress)
 *   starting  the agent launched the runtime; it is loading
 *   ready     the runtime answers /health; the gateway routes to it
 *   failed    the runtime exited or never became healthy; the agent restarts it (reason says why)
 *   stopping  no longer wanted (endpoint deleted, or replaced after a drain); the agent stops it
 *   stopped   gone for good; its devices are free
 *
 * Every transition goes through replica_transition(), which checks legality in the UPDATE's WHERE
 * clause (so concurrent writers cannot race past it) and records the reason and time. Agent
 * reports carry the epoch: a report for an older placement matches no row and changes nothing. */
#ifndef ORP_REPLICA_H
#define ORP_REPLICA_H

#include <stdint.h>

#include "db.h"

/* Legal transition of one replica; fields other than state are optional (NULL: unchanged).
 * epoch/host_id 0: not checked. Returns DB_ROWS when it happened, DB_NONE when not legal now. */
enum db_status replica_transition(PGconn *c, const char *id, int64_t epoch, int64_t host_id,
                                  const char *to, const char *reason, int port, int restarts);

/* Many pending -> assigned at once (a scheduler pass): placements_json is
 * [{"id","host_id","devices":"uuid,uuid","secret"}, …]; each replica gets a new epoch. *assigned
 * gets how many were still pending (and are now assigned). */
enum db_status replica_assign_many(PGconn *c, const char *placements_json, int *assigned);
/* Updates the reason of a pending replica (what it waits for). */
enum db_status replica_note_pending(PGconn *c, const char *id, const char *reason);
/* Every replica of an endpoint: pending -> stopped, live -> stopping. */
enum db_status replica_stop_endpoint(PGconn *c, const char *endpoint_id);
/* replica_stop_endpoint() for every row of r (id, name, account id: endpoints just marked
 * stopped), each logged as a warning with why; *n gets the number of rows. Frees r. */
enum db_status replica_stop_endpoints(PGconn *c, PGresult *r, const char *why, int *n);
/* Replicas of host_id in 'stopping' that the agent no longer reports (reported: text[] literal
 * of replica ids) are stopped. */
enum db_status replica_reap_stopping(PGconn *c, int64_t host_id, const char *reported);
/* A new pending replica of the same endpoint that will take over from old_id (a live replica)
 * once ready (drain.c). DB_NONE when old_id is not live or already has a live replacement. */
enum db_status replica_create_replacement(PGconn *c, const char *old_id, const char *reason);
/* A lost or revoked host: its live replicas go back to pending (to be placed again with a new
 * epoch); its stopping ones are stopped. */
enum db_status replica_requeue_host(PGconn *c, int64_t host_id, const char *reason);

#endif
