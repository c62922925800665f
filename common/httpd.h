/* httpd: the glue between libmicrohttpd and our handlers, shared by the controller's three
 * listeners and the runtime's server.
 *
 * It owns: the route table lookup (routes are data: method, pattern, handler), reading the request
 * body under a size limit (413 past it), the per-request struct (one owner per request: created on
 * the first MHD callback, freed in the completion callback with everything hanging off it), the
 * one error funnel (httpd_error builds every error body in OpenAI's shape, logs 4xx as warnings
 * and 5xx as errors), and suspend/resume bookkeeping so that stopping a server first resumes
 * every suspended connection.
 *
 * A handler is called once the whole body is in. It must either queue a reply (httpd_reply_* or
 * httpd_error) or suspend the connection (httpd_suspend); after httpd_resume() MHD calls it again
 * with the same req, so a handler that suspends keeps its progress in req->state. */
#ifndef ORP_HTTPD_H
#define ORP_HTTPD_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct httpd_req;
struct httpd_server;
typedef void (*httpd_handler)(struct httpd_req *req);

struct httpd_route {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/v1/endpoints/{}": {} is one path segment, captured in params;
                            a trailing "*" matches any rest (captured as the last param) */
    httpd_handler fn;
};

#define HTTPD_MAX_PARAMS 4

struct httpd_req {
    struct MHD_Connection *conn;
    struct httpd_server *srv;
    void *app; /* borrowed from the config */
    const char *method, *url;
    struct buf body;
    int too_large;
    size_t discarded; /* bytes of an oversized body thrown away */
    const struct httpd_route *route;
    char params[HTTPD_MAX_PARAMS][256];
    int nparams;
    int replied;
    int suspended;
    unsigned suspends; /* times suspended: another thread may resume before the handler returns */
    int retry_after;   /* seconds; added as Retry-After to the next error reply when > 0 */
    char extra_headers[1024]; /* "Name: value" lines joined by CRLF, added to the reply */
    char id[72];     /* in logs and the X-Request-Id header: made here, or set by the handler to the
                        request id billing uses, so one id follows a request through every program */
    unsigned status; /* of the reply queued, for the access log; 0: none */
    long long bytes; /* of a whole reply's body; -1: streamed (length unknown here) */
    int64_t start_ms; /* monotonic, when the request arrived */
    void *state;      /* the handler's, freed with state_free at completion */
    void (*state_free)(void *state);
    struct httpd_req *susp_prev, *susp_next;
};

struct httpd_config {
    const char *name;          /* for logs: "api", "gateway", "agent-api", "runtime" */
    const char *host;          /* bind address, IPv4 dotted quad */
    int port;                  /* 0: any free port (see httpd_port) */
    int threads;               /* thread pool size (epoll mode) */
    int thread_per_connection; /* 1: one thread per connection (handlers may block) */
    unsigned conn_limit;
    unsigned per_ip_limit;   /* connections one client address may hold; 0: no limit */
    unsigned conn_timeout_s; /* idle timeout; suspended connections do not time out */
    size_t max_body;
    size_t conn_memory_limit; /* bytes MHD may use per connection (headers, buffers); 0: 64 KiB */
    /* PEM texts (borrowed, kept for the server's life): both set, the listener speaks HTTPS only
     * (libmicrohttpd's own TLS, GnuTLS); both NULL, plain HTTP. */
    const char *tls_cert_pem, *tls_key_pem;
    const struct httpd_route *routes;
    size_t nroutes;
    void *app;
    /* 1: the listener has no threads of its own; `threads` loops of the application's drive it
     * (httpd_loop_*), each with its own daemon on the one listening socket, so that a loop can
     * serve its connections and do its own I/O (the gateway's upstream transfers) without
     * handing work to another thread. */
    int external_loops;
};

struct httpd_server *httpd_start(const struct httpd_config *cfg, char *err, size_t errlen);
/* 1 when this libmicrohttpd was built with TLS support. */
int httpd_tls_supported(void);
/* Resumes every suspended connection, then stops the daemon. Accepts NULL. */
void httpd_stop(struct httpd_server *s);
int httpd_port(const struct httpd_server *s);

/* External loops (config.external_loops). Loop i (0 <= i < httpd_loops) watches
 * httpd_loop_fd(s, i) for input and, on its own thread only, calls httpd_loop_run(s, i) when
 * that fd is readable, after it resumed a connection, when another thread resumed one of its
 * connections (which that thread must tell it of: no wake-up comes through the fd), and when the
 * time httpd_loop_run last returned has passed. httpd_loop_run accepts, reads, calls handlers
 * and writes without waiting, and returns the milliseconds until it must run again (0: at once;
 * -1: not before the fd says so). httpd_stop must come after the loops stopped. httpd_loops is 0
 * for a listener with threads of its own. */
int httpd_loops(const struct httpd_server *s);
int httpd_loop_fd(const struct httpd_server *s, int i);
int64_t httpd_loop_run(struct httpd_server *s, int i);
int httpd_stopping(const struct httpd_server *s);

const char *httpd_header(struct httpd_req *req, const char *name); /* borrowed or NULL */
const char *httpd_query(struct httpd_req *req, const char *name);  /* borrowed or NULL */
/* An optional query parameter that must be an integer in [1, max]: def when absent, -1 after
 * answering 400 naming it. */
int64_t httpd_query_int(struct httpd_req *req, const char *name, int64_t def, int64_t max);

/* Replies. Each queues exactly one response; a second reply on the same request is a bug. */
void httpd_reply_json(struct httpd_req *req, unsigned status, json_t *body); /* steals body */
void httpd_reply_raw(struct httpd_req *req, unsigned status, const char *content_type,
                     const void *data, size_t len); /* copies data */
/* Queues a response the caller built (e.g. from a content-reader callback); steals r. */
void httpd_reply_response(struct httpd_req *req, unsigned status, struct MHD_Response *r);
/* The error funnel: the type comes from the status; code and param may be NULL. */
void httpd_error(struct httpd_req *req, unsigned status, const char *code, const char *param,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
const char *httpd_error_type(unsigned status);

/* 1 when s is well-formed UTF-8. Paths and query strings that are not get 400 invalid_encoding
 * before any route runs. */
int httpd_utf8_valid(const char *s);

/* Bodies nested deeper than this are refused before parsing: no request of ours needs more than
 * a handful of levels, and a parser (or the code walking its tree) should not be made to recurse
 * thousands deep by "[[[[...". */
#define HTTPD_JSON_MAX_DEPTH 32

/* 1 when the JSON text s[0..n) opens more than max nested arrays/objects at once (brackets inside
 * strings do not count). One linear pass; does not validate the rest of the syntax. */
int httpd_json_too_deep(const char *s, size_t n, unsigned max);

/* The request body as a JSON object (new reference), or NULL after answering 400 invalid_json
 * (also for a body nested deeper than HTTPD_JSON_MAX_DEPTH). */
json_t *httpd_body_object(struct httpd_req *req);
/* 0 when every key of body is in the NULL-terminated list known; else answers 400
 * unknown_parameter naming the first stranger and returns -1. */
int httpd_reject_unknown(struct httpd_req *req, json_t *body, const char *const *known);

/* Suspends the connection (the handler returns; MHD stops polling it). Thread-safe resume. */
void httpd_suspend(struct httpd_req *req);
void httpd_resume(struct httpd_req *req);

#endif
