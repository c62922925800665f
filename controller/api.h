/* api: the public REST API listener (/healthz, /v1/catalog, /v1/endpoints, the console's static
 * files). Handlers validate input, check the caller's account on every object (another account's
 * object is a 404, exactly like a missing one) and answer through the httpd error funnel. */
#ifndef ORP_API_H
#define ORP_API_H

#include "httpd.h"

extern const struct httpd_route api_routes[];
extern const size_t api_nroutes;

/* 1 when s looks like a UUID (8-4-4-4-12 hex); path ids are checked before any query. */
int api_is_uuid(const char *s);

#endif
