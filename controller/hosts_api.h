/* hosts_api: the operator's view of the fleet: admin REST routes under /v1/admin/hosts and the
 * `orp-controller host ...` command line. Reads hosts, host_seen and gpus; changes to a host's
 * scheduling state (cordon, drain, revoke) belong here too, and so do enrollment tokens. */
#ifndef ORP_HOSTS_API_H
#define ORP_HOSTS_API_H

#include <jansson.h>
#include <stdint.h>

#include "db.h"
#include "httpd.h"

#define HOSTS_TOKEN_MAX 64 /* an enrollment token's length ("orp_et_" + 48 hex), with room */

extern const struct httpd_route hosts_routes[];
extern const size_t hosts_nroutes;

/* A one-time enrollment token valid for ttl_s seconds; a host that registers with it joins pool
 * (NULL: "default"). token gets the secret, shown only now; *out (new reference) the token's
 * public fields and the secret. key_id: the admin's API key (0 from the command line). */
enum db_status hosts_token_create(PGconn *c, int64_t ttl_s, const char *pool, int64_t key_id,
                                  char token[HOSTS_TOKEN_MAX + 1], json_t **out);

/* Revokes host id (decimal): its key stops working, it may come back only with a new enrollment
 * token, and its replicas go back to pending to be placed elsewhere. DB_ROWS with *host (new
 * reference), or DB_NONE when there is no such host. Revoking twice is harmless. */
enum db_status hosts_revoke(PGconn *c, const char *id, json_t **host);

/* action "cordon" (no new placement on the host), "uncordon" (placement again, and any drain
 * ends) or "drain" (cordon, and drain.c moves its replicas away one at a time). DB_ROWS with
 * *host (new reference), DB_NONE when there is no such host or it was revoked. */
enum db_status hosts_set_schedulable(PGconn *c, const char *id, const char *action, json_t **host);

/* `orp-controller host SUBCOMMAND ...`; argv[1] is "host". Returns the exit status. */
int hosts_cli(int argc, char **argv);

#endif
