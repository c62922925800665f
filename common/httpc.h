/* httpc: a blocking HTTP client call over libcurl, for the agent's calls to the controller and the
 * controller's non-streaming calls. Streaming proxying lives in the gateway, which drives curl
 * itself. Call curl_global_init(CURL_GLOBAL_DEFAULT) once in main() before any thread uses this. */
#ifndef ORP_HTTPC_H
#define ORP_HTTPC_H

#include <stddef.h>

#include "util.h"

struct httpc_resp {
    long status;     /* HTTP status, 0 when no response came */
    struct buf body; /* owned; free with buf_free() */
};

/* headers: NULL-terminated array of "Name: value" lines, or NULL. body may be NULL (no body).
 * The response body is cut off (error) past max_resp bytes. Returns 0 when a response arrived
 * (any status), -1 on a transport error (message in err). */
int httpc_request(const char *method, const char *url, const char *const *headers, const char *body,
                  size_t body_len, long timeout_ms, size_t max_resp, struct httpc_resp *resp,
                  char *err, size_t errlen);

#endif
