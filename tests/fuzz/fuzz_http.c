/* fuzz_http: a libFuzzer target for what httpd does with a request before any handler runs,
 * without a socket: route matching (httpd_match_route against a table shaped like the
 * controller's, with {} segments and a trailing *), the JSON depth pre-scan (httpd_json_too_deep)
 * and the body path (jsonx_parse_object and the typed getters).
 *
 * Input: "METHOD PATH\n" then the body, the rest of the input. A line without a space is all path
 * (method GET); an input without a newline is all request line and an empty body.
 *
 * Besides "no crash, no leak, no UB" it checks three properties and aborts when one fails:
 *   - a match reconstructs the path: the pattern with each {} / * replaced by its capture is the
 *     path itself, and a {} capture is non-empty and holds no '/';
 *   - the pre-scan is exact for valid JSON: it says "too deep" iff the parsed tree nests more
 *     than HTTPD_JSON_MAX_DEPTH arrays/objects (so no body deeper than that reaches a handler,
 *     and no legitimate body is refused);
 *   - a getter that answers JSONX_OK agrees with the value in the tree, and one that does not
 *     leaves a message. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "httpd_internal.h"
#include "jsonx.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http: %s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void nop(struct httpd_req *req)
{
    (void)req;
}

/* The controller's listeners merged (api, accounts, billing, gateway, agent API) and the
 * catch-all static route last, as in controller/api.c. */
static const struct httpd_route routes[] = {
    {"GET", "/healthz", nop},
    {"GET", "/v1/catalog", nop},
    {"POST", "/v1/endpoints", nop},
    {"GET", "/v1/endpoints", nop},
    {"GET", "/v1/endpoints/{}", nop},
    {"DELETE", "/v1/endpoints/{}", nop},
    {"PATCH", "/v1/endpoints/{}", nop},
    {"POST", "/v1/endpoints/{}/stop", nop},
    {"POST", "/v1/endpoints/{}/start", nop},
    {"DELETE", "/v1/api-keys/{}", nop},
    {"GET", "/v1/billing/statements/{}", nop},
    {"POST", "/v1/admin/accounts/{}/credits", nop},
    {"PUT", "/v1/admin/accounts/{}/quotas", nop},
    {"GET", "/v1/a/{}/b/{}/c/{}/d/{}", nop},      /* HTTPD_MAX_PARAMS captures */
    {"GET", "/v1/a/{}/b/{}/c/{}/d/{}/e/{}", nop}, /* one too many: never matches */
    {"GET", "/v1/files/{}/*", nop},
    {"POST", "/v1/chat/completions", nop},
    {"POST", "/v1/completions", nop},
    {"GET", "/v1/models", nop},
    {"OPTIONS", "/v1/chat/completions", nop},
    {"POST", "/agent/v1/register", nop},
    {"POST", "/agent/v1/heartbeat", nop},
    {"GET", "/*", nop},
};

/* A request line longer than this is cut: MHD refuses such URLs long before a route is looked up,
 * and the property check below is quadratic in nothing but linear in this. */
#define FUZZ_MAX_LINE 4096

static void check_match(const char *pattern, const char *path, const struct httpd_req *req)
{
    CHECK(req->nparams >= 0 && req->nparams <= HTTPD_MAX_PARAMS);
    char rebuilt[FUZZ_MAX_LINE + 1];
    size_t n = 0;
    int k = 0;
    for (const char *p = pattern; *p;) {
        const char *piece;
        size_t len;
        if (p[0] == '{' && p[1] == '}') {
            CHECK(k < req->nparams);
            piece = req->params[k++];
            len = strnlen(piece, sizeof req->params[0]);
            CHECK(len > 0 && len < sizeof req->params[0] && !memchr(piece, '/', len));
            p += 2;
        } else if (p[0] == '*' && p[1] == '\0') {
            CHECK(k < req->nparams);
            piece = req->params[k++];
            len = strnlen(piece, sizeof req->params[0]);
            CHECK(len < sizeof req->params[0]);
            p++;
        } else {
            piece = p++;
            len = 1;
        }
        CHECK(n + len <= FUZZ_MAX_LINE);
        memcpy(rebuilt + n, piece, len);
        n += len;
    }
    rebuilt[n] = '\0';
    CHECK(k == req->nparams);
    CHECK(strcmp(rebuilt, path) == 0);
}

static void fuzz_routes(const char *method, const char *path)
{
    int found = 0;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        struct httpd_req req;
        memset(&req, 0, sizeof req);
        if (!httpd_match_route(routes[i].pattern, path, &req)) continue;
        check_match(routes[i].pattern, path, &req);
        if (strcmp(routes[i].method, method) == 0) found = 1;
    }
    (void)found;
}

/* Nesting of arrays/objects in v: a scalar is 0, [] and {} are 1. jansson itself refuses more
 * than 2048 levels, so the recursion is bounded. */
static unsigned depth_of(json_t *v)
{
    unsigned max = 0, d;
    if (json_is_object(v)) {
        const char *key;
        json_t *m;
        json_object_foreach(v, key, m) if ((d = depth_of(m)) > max) max = d;
        return max + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) if ((d = depth_of(m)) > max) max = d;
        return max + 1;
    }
    return 0;
}

static void check_err(enum jsonx_rc rc, int required, const struct jsonx_err *err)
{
    CHECK(rc == JSONX_OK || rc == JSONX_MISSING || rc == JSONX_BAD);
    CHECK(memchr(err->message, '\0', sizeof err->message));
    CHECK(memchr(err->param, '\0', sizeof err->param));
    if (rc == JSONX_BAD || (rc == JSONX_MISSING && required)) CHECK(err->message[0] != '\0');
}

/* Every getter on one key, with the ranges our handlers use. */
static void fuzz_getters(json_t *obj, const char *key, int required)
{
    struct jsonx_err err;
    json_t *v = json_object_get(obj, key);

    const char *s = NULL;
    memset(&err, 0, sizeof err);
    enum jsonx_rc rc = jsonx_get_string(obj, key, required, &s, 256, &err);
    check_err(rc, required, &err);
    if (rc == JSONX_OK) CHECK(s && strlen(s) <= 256 && strcmp(s, json_string_value(v)) == 0);

    int64_t i = 0;
    memset(&err, 0, sizeof err);
    rc = jsonx_get_int(obj, key, required, 1, 1000000, &i, &err);
    check_err(rc, required, &err);
    if (rc == JSONX_OK) CHECK(i >= 1 && i <= 1000000 && i == json_integer_value(v));
    memset(&err, 0, sizeof err);
    rc = jsonx_get_int(obj, key, required, INT64_MIN, INT64_MAX, &i, &err);
    check_err(rc, required, &err);

    double d = 0;
    memset(&err, 0, sizeof err);
    rc = jsonx_get_number(obj, key, required, 0.0, 2.0, &d, &err);
    check_err(rc, required, &err);
    if (rc == JSONX_OK) CHECK(d >= 0.0 && d <= 2.0);
    memset(&err, 0, sizeof err);
    rc = jsonx_get_number(obj, key, required, -1e308, 1e308, &d, &err);
    check_err(rc, required, &err);

    int b = -1;
    memset(&err, 0, sizeof err);
    rc = jsonx_get_bool(obj, key, required, &b, &err);
    check_err(rc, required, &err);
    if (rc == JSONX_OK) CHECK(b == 0 || b == 1);
}

static void fuzz_body(const char *body, size_t len)
{
    int too_deep = httpd_json_too_deep(body, len, HTTPD_JSON_MAX_DEPTH);

    /* The oracle: any JSON value, parsed with the same flags as the production path. */
    json_error_t je;
    json_t *any = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (any) {
        CHECK(too_deep == (depth_of(any) > HTTPD_JSON_MAX_DEPTH));
        json_decref(any);
    }
    if (too_deep) return; /* httpd_body_object answers 400 here; nothing is parsed */

    struct jsonx_err err;
    memset(&err, 0, sizeof err);
    json_t *obj = jsonx_parse_object(body, len, &err);
    if (!obj) {
        CHECK(err.message[0] != '\0');
        json_t *e = jsonx_error_body(err.message, "invalid_request_error", NULL, "invalid_json");
        char *s = jsonx_dump(e);
        CHECK(s != NULL);
        free(s);
        json_decref(e);
        return;
    }
    static const char *const keys[] = {"model", "max_tokens", "temperature", "stream",      "name",
                                       "n",     "",           "top_p",       "min_replicas"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        fuzz_getters(obj, keys[k], k & 1);
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) fuzz_getters(obj, key, 1);
    char *s = jsonx_dump(obj);
    CHECK(s != NULL);
    free(s);
    json_decref(obj);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(1); /* jansson seeds its hash from /dev/urandom; a run must be repeatable */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    const char *nl = memchr(in, '\n', size);
    size_t line_len = nl ? (size_t)(nl - in) : size;
    const char *body = nl ? nl + 1 : in + size;
    size_t body_len = nl ? size - line_len - 1 : 0;

    /* A heap copy of exactly the request line so ASan sees any read past its NUL. */
    size_t keep = line_len < FUZZ_MAX_LINE ? line_len : FUZZ_MAX_LINE;
    char *line = malloc(keep + 1);
    if (!line) return 0;
    memcpy(line, in, keep);
    line[keep] = '\0';
    const char *method = "GET", *path = line;
    char *sp = strchr(line, ' ');
    if (sp) {
        *sp = '\0';
        method = line;
        path = sp + 1;
    }
    fuzz_routes(method, path);
    free(line);

    /* The body in its own heap block of exactly its size: neither the scan nor the parser may
     * rely on a NUL after it (MHD's buffer has none). */
    char *b = malloc(body_len ? body_len : 1);
    if (!b) return 0;
    if (body_len) memcpy(b, body, body_len);
    fuzz_body(b, body_len);
    free(b);
    return 0;
}
