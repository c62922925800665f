/* openapi_api: see openapi_api.h. */
#include "openapi_api.h"

#include <stdlib.h>

#include "ctl.h"
#include "log.h"
#include "util.h"

/* The file is read on every request rather than once at start: it is about 100 KiB, served
 * rarely (tools and people fetch it, not the request path), and an edited document is then
 * served without a restart. */
static void h_openapi(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const char *path = l->ctl->cfg.openapi_file;
    size_t len = 0;
    char *data = path ? util_read_file(path, &len) : NULL;
    if (!data) {
        /* An installation without its docs: the operator's problem, not the client's. */
        log_warn("cannot read the OpenAPI document %s (see --openapi-file)",
                 path ? path : "(unset)");
        httpd_error(req, 503, "openapi_unavailable", NULL,
                    "the OpenAPI document is not installed on this controller");
        return;
    }
    httpd_reply_raw(req, 200, "application/json", data, len);
    free(data);
}

const struct httpd_route openapi_routes[] = {
    {"GET", "/v1/openapi.json", h_openapi},
};
const size_t openapi_nroutes = sizeof openapi_routes / sizeof openapi_routes[0];
