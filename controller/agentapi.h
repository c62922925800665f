/* agentapi: the agent API listener (/agent/v1/register, /agent/v1/heartbeat): host enrollment,
 * device inventory, replica state reports, usage intake, and the desired state handed back.
 * The only writer of hosts, host_seen, gpus and usage_events. See docs/contracts.md. */
#ifndef ORP_AGENTAPI_H
#define ORP_AGENTAPI_H

#include "httpd.h"

extern const struct httpd_route agentapi_routes[];
extern const size_t agentapi_nroutes;

#endif
