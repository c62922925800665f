/* console_api: read routes the console needs beyond the core API, each built from stored rows:
 * GET /v1/quotas (the caller's own quotas beside what it uses now) and
 * GET /v1/endpoints/{id}/stats (requests, tokens, time to first token and generation speed per
 * period, from usage_events, every period of the window present, zero (times: null) when idle, so
 * a chart plots it as it comes). Writes nothing. */
#ifndef ORP_CONSOLE_API_H
#define ORP_CONSOLE_API_H

#include <stddef.h>

#include "httpd.h"

extern const struct httpd_route console_routes[];
extern const size_t console_nroutes;

#endif
