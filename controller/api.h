/* api: the public REST API listener (/healthz, /v1/catalog, /v1/endpoints, the console's static
 * files). Handlers validate input, check the caller's account on every object (another account's
 * object is a 404, exactly like a missing one) and answer through the httpd error funnel. */
#ifndef ORP_API_H
#define ORP_API_H

#include "httpd.h"

extern const struct httpd_route api_routes[];
extern const size_t api_nroutes;

/* A catalog model as the API shows it, built by the statement from the models row aliased t
 * (customers: GET /v1/catalog; operators: /v1/admin/catalog). */
#define API_MODEL_JSON(t)                                                                          \
    "json_build_object('id', " t ".name, 'object', 'model', 'family', " t ".family, "              \
    "  'context_length', " t ".context_length, 'min_devices', " t ".min_devices, "                 \
    "  'device_kinds', " t ".device_kinds, "                                                       \
    "  'input_price_micros_per_mtok', " t ".input_price_micros_per_mtok, "                         \
    "  'output_price_micros_per_mtok', " t ".output_price_micros_per_mtok, "                       \
    "  'parameter_count', " t ".parameter_count, 'source', " t ".source, 'sha256', " t ".sha256, " \
    "  'gpu_requirements', " t ".gpu_requirements, 'retired_at', " t ".retired_at)"

/* Empties this process's cache of endpoint listings (GET /v1/endpoints, --list-cache-ms): called
 * after every change to an account's endpoints made here. */
void api_endpoints_changed(void);

/* 1 when s looks like a UUID (8-4-4-4-12 hex); path ids are checked before any query. */
int api_is_uuid(const char *s);

#endif
