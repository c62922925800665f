/* hosts_api: the operator's view of the fleet: admin REST routes under /v1/admin/hosts and the
 * `orp-controller host ...` command line. Reads hosts, host_seen and gpus; changes to a host's
 * scheduling state (cordon, drain, remove) belong here too. */
#ifndef ORP_HOSTS_API_H
#define ORP_HOSTS_API_H

#include "httpd.h"

extern const struct httpd_route hosts_routes[];
extern const size_t hosts_nroutes;

/* `orp-controller host SUBCOMMAND ...`; argv[1] is "host". Returns the exit status. */
int hosts_cli(int argc, char **argv);

#endif
