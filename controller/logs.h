/* logs: GET /v1/endpoints/{id}/logs, the live tail of an endpoint's runtime logs as a
 * server-sent event stream (docs/contracts.md, "Endpoint logs"). The lines come from the agents
 * with their heartbeats (agentapi.c stores them in replica_logs); this module only reads them.
 *
 * On connect a stream gets the stored lines after Last-Event-ID (or ?after=), else the last
 * ?tail= lines, then whatever arrives: one poller thread per process reads new lines for every
 * open stream every LOGS_POLL_MS on a database connection of its own, appends them to the
 * stream's bounded buffer and wakes the suspended connection. A quiet stream gets a ": keepalive"
 * comment every 15 s (which is also how a departed client is noticed). */
#ifndef ORP_LOGS_H
#define ORP_LOGS_H

#include <stddef.h>

#include "httpd.h"

extern const struct httpd_route logs_routes[];
extern const size_t logs_nroutes;

#endif
