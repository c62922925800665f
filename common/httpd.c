/* httpd: see httpd.h. */
#include "httpd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpd_internal.h"
#include "jsonx.h"
#include "log.h"

/* What one connection may hold in MHD's own pool (request line, headers, read and write buffers):
 * MHD's default of 32 KiB refuses a request with a few long cookies; 64 KiB does not, and bounds
 * what --max-connections idle clients can pin at 64 KiB each. */
#define HTTPD_CONN_MEMORY_DEFAULT (64u * 1024)

/* A body over max_body is still read (and dropped) up to this size so the client can read its 413;
 * beyond it the connection is cut: reading more would let one client make us swallow gigabytes. */
#define HTTPD_DISCARD_LIMIT (16u * 1024 * 1024)

/* Connections per client address, for a listener driven by external loops: its daemons do not
 * share MHD's own per-address counts, so the listener keeps them (a chained hash of IPv4
 * addresses; an entry lives while the address holds a connection). */
#define HTTPD_IP_BUCKETS 1024
struct ip_count {
    uint32_t ip;
    unsigned n;
    struct ip_count *next;
};

struct httpd_server {
    struct httpd_config cfg;
    struct MHD_Daemon *d; /* internal mode: the one daemon (with its threads) */
    /* External loops (cfg.external_loops): one daemon per loop, all on listen_fd. */
    struct MHD_Daemon **loop_d;
    int nloops;
    int listen_fd;
    pthread_mutex_t ip_lock;
    struct ip_count *ips[HTTPD_IP_BUCKETS];
    int port;
    int stopping;
    pthread_mutex_t lock; /* guards the suspended list */
    struct httpd_req *suspended;
};

/* Finished requests kept for reuse by the thread that finished them: a request is a few KiB
 * (util_spares). */
static struct util_spares httpd_spare_reqs = UTIL_SPARES_INIT(256);

int httpd_match_route(const char *pattern, const char *path, struct httpd_req *req)
{
    int np = 0;
    const char *p = pattern, *u = path;
    while (*p) {
        if (p[0] == '{' && p[1] == '}') {
            const char *end = strchr(u, '/');
            size_t n = end ? (size_t)(end - u) : strlen(u);
            if (n == 0 || n >= sizeof req->params[0] || np >= HTTPD_MAX_PARAMS) return 0;
            memcpy(req->params[np], u, n);
            req->params[np++][n] = '\0';
            u += n;
            p += 2;
        } else if (p[0] == '*' && p[1] == '\0') {
            size_t n = strlen(u);
            if (n >= sizeof req->params[0] || np >= HTTPD_MAX_PARAMS) return 0;
            memcpy(req->params[np++], u, n + 1);
            req->nparams = np;
            return 1;
        } else {
            if (*p != *u) return 0;
            p++;
            u++;
        }
    }
    if (*u) return 0;
    req->nparams = np;
    return 1;
}

/* 1 when s is well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF). */
int httpd_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p, n, min, cp;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, min = 0x80, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, min = 0x800, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, min = 0x10000, cp = c & 0x07;
        else
            return 0;
        for (unsigned i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        p += n + 1;
    }
    return 1;
}

/* 1..HTTPD_CLIENT_ID_MAX of [A-Za-z0-9._:-]: safe in logs, headers and JSON as it is. */
#define HTTPD_CLIENT_ID_MAX 64
static int request_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > HTTPD_CLIENT_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || strchr("._:-", s[i])))
            return 0;
    return 1;
}

static enum MHD_Result arg_utf8(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    int *ok = cls;
    if (!httpd_utf8_valid(key) || (value && !httpd_utf8_valid(value))) *ok = 0;
    return *ok ? MHD_YES : MHD_NO;
}

/* Finds the route; sets *method_mismatch when the path exists under another method. */
static const struct httpd_route *find_route(struct httpd_server *s, struct httpd_req *req,
                                            int *method_mismatch)
{
    *method_mismatch = 0;
    for (size_t i = 0; i < s->cfg.nroutes; i++) {
        const struct httpd_route *r = &s->cfg.routes[i];
        if (!httpd_match_route(r->pattern, req->url, req)) continue;
        if (strcmp(r->method, req->method) == 0) return r;
        /* A catch-all pattern (static files) does not make every path "exist". */
        if (r->pattern[strlen(r->pattern) - 1] != '*') *method_mismatch = 1;
    }
    return NULL;
}

const char *httpd_error_type(unsigned status)
{
    switch (status) {
    case 400:
    case 413:
    case 422:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 402:
        return "insufficient_quota";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 405:
        return "invalid_request_error";
    case 409:
        return "conflict_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static void queue(struct httpd_req *req, unsigned status, struct MHD_Response *r)
{
    if (req->replied) {
        log_error("second reply on one request (%s %s): a bug", req->method, req->url);
        MHD_destroy_response(r);
        return;
    }
    req->replied = 1;
    req->status = status;
    MHD_add_response_header(r, "X-Request-Id", req->id);
    for (char *line = req->extra_headers; *line;) {
        char *end = strstr(line, "\r\n");
        char *colon = strchr(line, ':');
        if (end) *end = '\0';
        if (colon) {
            *colon = '\0';
            const char *v = colon + 1;
            while (*v == ' ')
                v++;
            MHD_add_response_header(r, line, v);
        }
        if (!end) break;
        line = end + 2;
    }
    if (status >= 400 && req->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", req->retry_after);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    if (MHD_queue_response(req->conn, status, r) != MHD_YES)
        log_warn("could not queue a %u reply for %s %s", status, req->method, req->url);
    MHD_destroy_response(r);
}

void httpd_reply_response(struct httpd_req *req, unsigned status, struct MHD_Response *r)
{
    req->bytes = -1;
    queue(req, status, r);
}

void httpd_reply_raw(struct httpd_req *req, unsigned status, const char *content_type,
                     const void *data, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (content_type) MHD_add_response_header(r, "Content-Type", content_type);
    req->bytes = (long long)len;
    queue(req, status, r);
}

void httpd_reply_json(struct httpd_req *req, unsigned status, json_t *body)
{
    char *s = jsonx_dump(body);
    json_decref(body);
    if (!s) {
        httpd_error(req, 500, "internal_error", NULL, "could not serialize the reply");
        return;
    }
    size_t n = strlen(s);
    /* MHD frees s with free() once sent. */
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(n, s, free);
    MHD_add_response_header(r, "Content-Type", "application/json");
    req->bytes = (long long)n;
    queue(req, status, r);
}

void httpd_error(struct httpd_req *req, unsigned status, const char *code, const char *param,
                 const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status >= 500)
        log_error("%s %s -> %u %s", req->method, req->url, status, msg);
    else
        log_warn("%s %s -> %u %s", req->method, req->url, status, msg);
    httpd_reply_json(
        req, status,
        jsonx_error_body(msg, httpd_error_type(status), param && *param ? param : NULL, code));
}

int64_t httpd_query_int(struct httpd_req *req, const char *name, int64_t def, int64_t max)
{
    const char *v = httpd_query(req, name);
    if (!v) return def;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end || n < 1 || n > max) {
        httpd_error(req, 400, "invalid_parameter", name,
                    "query parameter '%s' must be an integer between 1 and %lld", name,
                    (long long)max);
        return -1;
    }
    return n;
}

int httpd_json_too_deep(const char *s, size_t n, unsigned max)
{
    unsigned depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped character, quote or backslash, is not special */
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max) return 1;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--; /* unbalanced closers are the parser's to report */
        }
    }
    return 0;
}

json_t *httpd_body_object(struct httpd_req *req)
{
    if (httpd_json_too_deep(req->body.data, req->body.len, HTTPD_JSON_MAX_DEPTH)) {
        httpd_error(req, 400, "invalid_json", NULL,
                    "request body is nested deeper than %d levels of arrays and objects",
                    HTTPD_JSON_MAX_DEPTH);
        return NULL;
    }
    struct jsonx_err je = {0};
    json_t *body = jsonx_parse_object(req->body.data, req->body.len, &je);
    if (!body) httpd_error(req, 400, "invalid_json", NULL, "%s", je.message);
    return body;
}

int httpd_reject_unknown(struct httpd_req *req, json_t *body, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        int ok = 0;
        for (const char *const *k = known; *k && !ok; k++)
            ok = !strcmp(*k, key);
        if (!ok) {
            char name[64];
            snprintf(name, sizeof name, "%s", key);
            httpd_error(req, 400, "unknown_parameter", name, "unknown parameter '%s'", name);
            return -1;
        }
    }
    return 0;
}

const char *httpd_header(struct httpd_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *httpd_query(struct httpd_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

void httpd_suspend(struct httpd_req *req)
{
    struct httpd_server *s = req->srv;
    pthread_mutex_lock(&s->lock);
    req->suspended = 1;
    req->suspends++;
    req->susp_prev = NULL;
    req->susp_next = s->suspended;
    if (s->suspended) s->suspended->susp_prev = req;
    s->suspended = req;
    MHD_suspend_connection(req->conn);
    pthread_mutex_unlock(&s->lock);
}

void httpd_resume(struct httpd_req *req)
{
    struct httpd_server *s = req->srv;
    pthread_mutex_lock(&s->lock);
    if (req->suspended) {
        req->suspended = 0;
        if (req->susp_prev)
            req->susp_prev->susp_next = req->susp_next;
        else
            s->suspended = req->susp_next;
        if (req->susp_next) req->susp_next->susp_prev = req->susp_prev;
        req->susp_prev = req->susp_next = NULL;
        MHD_resume_connection(req->conn);
    }
    pthread_mutex_unlock(&s->lock);
}

static void run_handler(struct httpd_req *req)
{
    char ctx[96] = "req=";
    util_strlcpy(ctx + 4, req->id, sizeof ctx - 4);
    log_set_context(ctx);
    pthread_mutex_lock(&req->srv->lock);
    unsigned before = req->suspends;
    pthread_mutex_unlock(&req->srv->lock);
    req->route->fn(req);
    pthread_mutex_lock(&req->srv->lock);
    int suspended_now = req->suspends != before;
    pthread_mutex_unlock(&req->srv->lock);
    /* Suspended (even if already resumed by the thread it waits for) or replied: fine. */
    if (!req->replied && !suspended_now) {
        log_error("handler for %s %s neither replied nor suspended: a bug", req->method, req->url);
        httpd_error(req, 500, "internal_error", NULL, "internal error");
    }
    log_set_context(NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct httpd_server *s = cls;
    struct httpd_req *req = *con_cls;
    if (!req) {
        req = util_spare_take(&httpd_spare_reqs, sizeof *req);
        if (!req) return MHD_NO;
        req->conn = conn;
        req->srv = s;
        req->app = s->cfg.app;
        req->method = method;
        req->url = url; /* MHD passes the path without the query string */
        req->start_ms = util_now_ms();
        /* A client's own X-Request-Id is echoed when it is a plain token (so its logs and ours
         * share the id); anything else gets one made here. The gateway replaces it with the
         * billing request id, which is never the client's. */
        const char *cid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        if (cid && request_id_ok(cid))
            snprintf(req->id, sizeof req->id, "%s", cid);
        else if (util_random_hex(req->id, 8) != 0)
            snprintf(req->id, sizeof req->id, "unknown");
        *con_cls = req;
        /* Every handler, and PostgreSQL behind it, may take the path and the query as text: bytes
         * that are not UTF-8 are the client's error here, not a database error later. */
        int utf8 = httpd_utf8_valid(url);
        if (utf8) MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, arg_utf8, &utf8);
        if (!utf8) {
            httpd_error(req, 400, "invalid_encoding", NULL,
                        "the request's path and query must be UTF-8 text");
            return MHD_YES;
        }
        int mismatch;
        req->route = find_route(s, req, &mismatch);
        if (!req->route) {
            if (mismatch)
                httpd_error(req, 405, "method_not_allowed", NULL, "%s is not allowed on %s", method,
                            url);
            else
                httpd_error(req, 404, "not_found", NULL, "no route for %s %s", method, url);
            return MHD_YES;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > HTTPD_DISCARD_LIMIT) {
            httpd_error(req, 413, "body_too_large", NULL, "request body is larger than %zu bytes",
                        s->cfg.max_body);
            return MHD_YES;
        }
        return MHD_YES;
    }
    if (req->replied) {
        *upload_data_size = 0; /* discard the rest of a rejected upload */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* Past the limit the body is read and thrown away, and 413 is answered once it is all in:
         * a reply sent mid-upload makes most clients fail with a reset instead of reading it. */
        if (!req->too_large && req->body.len + *upload_data_size <= s->cfg.max_body) {
            if (buf_append(&req->body, upload_data, *upload_data_size) != 0) return MHD_NO;
        } else {
            req->too_large = 1;
            req->discarded += *upload_data_size;
            if (req->discarded > HTTPD_DISCARD_LIMIT) return MHD_NO; /* close the connection */
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->too_large) {
        httpd_error(req, 413, "body_too_large", NULL, "request body is larger than %zu bytes",
                    s->cfg.max_body);
        return MHD_YES;
    }
    if (!req->body.data) buf_append(&req->body, "", 0);
    run_handler(req);
    return MHD_YES;
}

/* The access log: one line per finished request. Checked against the level first, so a server
 * logging at warn pays one comparison per request. Successful probes and scrapes (GET /health,
 * /healthz, /metrics) are logged at debug only: an agent probes each runtime five times a second,
 * and a line each would drown the log that a crash-loop reason quotes. */
static void access_log(struct httpd_server *s, struct httpd_req *req,
                       enum MHD_RequestTerminationCode toe)
{
    int probe = req->status < 400 && !strcmp(req->method, "GET") &&
                (!strcmp(req->url, "/health") || !strcmp(req->url, "/healthz") ||
                 !strcmp(req->url, "/metrics"));
    if ((probe ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO) < log_min_level) return;
    char bytes[24];
    if (req->bytes >= 0)
        snprintf(bytes, sizeof bytes, "%lld", req->bytes);
    else
        snprintf(bytes, sizeof bytes, "stream");
    log_write(probe ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, __FILE__, __LINE__,
              "%s %s %s %u %lldms req=%s bytes=%s%s", s->cfg.name, req->method, req->url,
              req->status, (long long)(util_now_ms() - req->start_ms), req->id, bytes,
              toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct httpd_req *req = *con_cls;
    if (!req) return;
    access_log(cls, req, toe);
    if (req->state_free) req->state_free(req->state);
    buf_free(&req->body);
    util_spare_give(&httpd_spare_reqs, req);
    *con_cls = NULL;
}

/* The format attribute tells clang that fmt is MHD's own printf format (gcc does not warn here). */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct httpd_server *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_warn("%s listener: libmicrohttpd: %s", s->cfg.name, msg);
}

/* ---- per-address limits for external loops ---- */

static struct ip_count **ip_slot(struct httpd_server *s, uint32_t ip)
{
    struct ip_count **pp = &s->ips[(ip * 2654435761u) >> 22];
    while (*pp && (*pp)->ip != ip)
        pp = &(*pp)->next;
    return pp;
}

/* MHD's accept policy: refuse an address that already holds per_ip_limit connections. Counted
 * when MHD reports the connection started, so connections accepted at the same instant on two
 * loops may pass the limit by the number of loops at most. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    struct httpd_server *s = cls;
    if (!s->cfg.per_ip_limit || addr->sa_family != AF_INET || len < sizeof(struct sockaddr_in))
        return MHD_YES;
    uint32_t ip = ((const struct sockaddr_in *)addr)->sin_addr.s_addr;
    pthread_mutex_lock(&s->ip_lock);
    struct ip_count *e = *ip_slot(s, ip);
    int ok = !e || e->n < s->cfg.per_ip_limit;
    pthread_mutex_unlock(&s->ip_lock);
    return ok ? MHD_YES : MHD_NO;
}

/* Counts a connection in when it starts and out when it closes (*socket_context marks one that
 * was counted). */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct httpd_server *s = cls;
    if (!s->cfg.per_ip_limit) return;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (!ci || !ci->client_addr || ci->client_addr->sa_family != AF_INET) return;
        uint32_t ip = ((const struct sockaddr_in *)ci->client_addr)->sin_addr.s_addr;
        pthread_mutex_lock(&s->ip_lock);
        struct ip_count **pp = ip_slot(s, ip);
        if (!*pp && (*pp = calloc(1, sizeof **pp)) != NULL) (*pp)->ip = ip;
        if (*pp) {
            (*pp)->n++;
            *socket_context = (void *)(uintptr_t)((uint64_t)ip | (1ull << 32));
        }
        pthread_mutex_unlock(&s->ip_lock);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        uint32_t ip = (uint32_t)(uintptr_t)*socket_context;
        *socket_context = NULL;
        pthread_mutex_lock(&s->ip_lock);
        struct ip_count **pp = ip_slot(s, ip), *e = *pp;
        if (e && --e->n == 0) {
            *pp = e->next;
            free(e);
        }
        pthread_mutex_unlock(&s->ip_lock);
    }
}

/* The listening socket that the daemons of external loops share (non-blocking: a loop that
 * loses the race for a connection must not wait in accept). -1 with err set. */
static int listen_socket(const struct sockaddr_in *sa, const struct httpd_config *cfg, char *err,
                         size_t errlen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)sa, sizeof *sa) != 0 || listen(fd, SOMAXCONN) != 0) {
        snprintf(err, errlen, "%s listener: cannot listen on %s:%d (in use?)", cfg->name, cfg->host,
                 cfg->port);
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static void server_free(struct httpd_server *s)
{
    for (int i = 0; i < HTTPD_IP_BUCKETS; i++)
        for (struct ip_count *e = s->ips[i], *nx; e; e = nx) {
            nx = e->next;
            free(e);
        }
    free(s->loop_d);
    pthread_mutex_destroy(&s->ip_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Resumes every suspended connection (their handlers see httpd_stopping and finish), giving
 * them up to a second to be answered; run_daemons (external loops) drives the daemons meanwhile,
 * the caller's loops having stopped. */
static void resume_all(struct httpd_server *s, int run_daemons)
{
    for (int round = 0; round < 100; round++) {
        pthread_mutex_lock(&s->lock);
        struct httpd_req *r = s->suspended;
        pthread_mutex_unlock(&s->lock);
        if (!r) break;
        httpd_resume(r);
        for (int i = 0; run_daemons && i < s->nloops; i++)
            MHD_run(s->loop_d[i]);
        util_sleep_ms(10);
    }
}

/* Stops the daemons of external loops (whose loops no longer run) and closes their socket. */
static void stop_external(struct httpd_server *s)
{
    s->stopping = 1;
    resume_all(s, 1);
    for (int i = 0; i < s->nloops; i++) {
        MHD_quiesce_daemon(s->loop_d[i]); /* the socket is shared: closed once, below */
        MHD_stop_daemon(s->loop_d[i]);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    server_free(s);
}

/* External loops: cfg.threads daemons without threads of their own, on one listening socket
 * (each accepts from it; a connection stays with the daemon that accepted it), driven by the
 * application's loops through httpd_loop_run. MHD's connection limit is per daemon, so each gets
 * its share of cfg.conn_limit (as MHD's own thread pool divides it); the per-address limit is
 * the server's (on_accept). */
static struct httpd_server *start_external(struct httpd_server *s, unsigned flags,
                                           const struct sockaddr_in *sa,
                                           struct MHD_OptionItem *extra, char *err, size_t errlen)
{
    const struct httpd_config *cfg = &s->cfg;
    flags &= ~(unsigned)MHD_USE_INTERNAL_POLLING_THREAD;
    flags |= MHD_USE_EPOLL;
    int n = cfg->threads > 0 ? cfg->threads : 1;
    unsigned limit = cfg->conn_limit ? cfg->conn_limit : 1000u;
    unsigned share = (limit + (unsigned)n - 1) / (unsigned)n;
    s->listen_fd = listen_socket(sa, cfg, err, errlen); /* err set when it fails */
    s->loop_d = s->listen_fd < 0 ? NULL : calloc((size_t)n, sizeof *s->loop_d);
    if (!s->loop_d) {
        if (s->listen_fd >= 0) {
            snprintf(err, errlen, "%s listener: out of memory", cfg->name);
            close(s->listen_fd);
        }
        server_free(s);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        s->loop_d[i] = MHD_start_daemon(
            flags, 0, on_accept, s, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
            MHD_OPTION_LISTEN_SOCKET, s->listen_fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_CONNECTION_LIMIT, share,
            MHD_OPTION_CONNECTION_TIMEOUT, cfg->conn_timeout_s ? cfg->conn_timeout_s : 60u,
            MHD_OPTION_ARRAY, extra, MHD_OPTION_END);
        if (!s->loop_d[i]) {
            snprintf(err, errlen, "%s listener: cannot start loop %d of %d", cfg->name, i + 1, n);
            s->nloops = i;
            stop_external(s);
            return NULL;
        }
    }
    s->nloops = n;
    struct sockaddr_in bound;
    socklen_t bl = sizeof bound;
    s->port = getsockname(s->listen_fd, (struct sockaddr *)&bound, &bl) == 0 ? ntohs(bound.sin_port)
                                                                             : cfg->port;
    return s;
}

struct httpd_server *httpd_start(const struct httpd_config *cfg, char *err, size_t errlen)
{
    struct httpd_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cfg = *cfg;
    s->listen_fd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->ip_lock, NULL);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host ? cfg->host : "127.0.0.1", &sa.sin_addr) != 1) {
        snprintf(err, errlen, "%s listener: bad bind address '%s'", cfg->name, cfg->host);
        server_free(s);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    int tls = cfg->tls_cert_pem && cfg->tls_key_pem;
    if (tls && !httpd_tls_supported()) {
        snprintf(err, errlen, "%s listener: this libmicrohttpd has no TLS support", cfg->name);
        server_free(s);
        return NULL;
    }
    if (tls) flags |= MHD_USE_TLS;
    /* Options that depend on the configuration, passed as one array. */
    struct MHD_OptionItem extra[] = {
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT,
         (intptr_t)(cfg->conn_memory_limit ? cfg->conn_memory_limit : HTTPD_CONN_MEMORY_DEFAULT),
         NULL},
        {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, (void *)cfg->tls_key_pem},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)cfg->tls_cert_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    if (cfg->external_loops) return start_external(s, flags, &sa, extra, err, errlen);
    if (cfg->thread_per_connection)
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
    else
        flags |= MHD_USE_EPOLL;
    /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: on Linux it sets SO_REUSEPORT, and a second process
     * could then bind the same port and silently take half of its connections. MHD's default
     * (SO_REUSEADDR only) still allows a quick restart on a port in TIME_WAIT. */
    s->d = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, s, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, cfg->conn_limit ? cfg->conn_limit : 1000u,
        /* 0 is MHD's own "no limit". */
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->per_ip_limit, MHD_OPTION_CONNECTION_TIMEOUT,
        cfg->conn_timeout_s ? cfg->conn_timeout_s : 60u, MHD_OPTION_ARRAY, extra,
        /* A pool of one is no pool: MHD then uses its one internal thread. */
        cfg->thread_per_connection || cfg->threads == 1 ? MHD_OPTION_END
                                                        : MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)(cfg->threads > 0 ? cfg->threads : 4), MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "%s listener: cannot listen on %s:%d (in use?)", cfg->name, cfg->host,
                 cfg->port);
        server_free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    return s;
}

int httpd_tls_supported(void)
{
    return MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES;
}

int httpd_port(const struct httpd_server *s)
{
    return s->port;
}

int httpd_stopping(const struct httpd_server *s)
{
    return s->stopping;
}

void httpd_stop(struct httpd_server *s)
{
    if (!s) return;
    if (s->nloops) {
        stop_external(s);
        return;
    }
    s->stopping = 1;
    /* MHD cannot stop with suspended connections: resume them all; their handlers see
     * httpd_stopping() and finish. */
    MHD_quiesce_daemon(s->d);
    resume_all(s, 0);
    MHD_stop_daemon(s->d);
    server_free(s);
}

int httpd_loops(const struct httpd_server *s)
{
    return s->nloops;
}

int httpd_loop_fd(const struct httpd_server *s, int i)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->loop_d[i], MHD_DAEMON_INFO_EPOLL_FD);
    return info ? info->epoll_fd : -1;
}

int64_t httpd_loop_run(struct httpd_server *s, int i)
{
    MHD_run(s->loop_d[i]);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(s->loop_d[i], &ms) != MHD_YES) return -1;
    return ms > INT64_MAX ? INT64_MAX : (int64_t)ms;
}
