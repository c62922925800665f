/* openapi_api: serves the OpenAPI 3.1 description of the public API and gateway listeners
 * (docs/openapi.json, or --openapi-file) at GET /v1/openapi.json, without authentication: it
 * describes what anyone may call and holds no secrets. The document itself is maintained by hand
 * beside the route tables; tests/e2e/openapi.test.js fails when the two disagree. */
#ifndef ORP_OPENAPI_API_H
#define ORP_OPENAPI_API_H

#include <stddef.h>

#include "httpd.h"

extern const struct httpd_route openapi_routes[];
extern const size_t openapi_nroutes;

#endif
