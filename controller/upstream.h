/* upstream: the gateway's HTTP/1.1 client to runtimes.
 *
 * One `struct up_loop` per gateway loop thread, driven by that thread's epoll set: it opens,
 * reuses and closes keep-alive connections to each runtime address (a pool per address, with a
 * limit on its connections and a queue beyond it), writes each request with one writev, and
 * reads the reply through llhttp (Node.js's HTTP parser: chunked and close-delimited bodies,
 * strict syntax). It exists because the general client (libcurl, still used everywhere else)
 * spent more of the gateway's time per proxied request than everything else the gateway does
 * (docs/architecture.md, "Gateway upstream client"; docs/benchmarks.md).
 *
 * Everything here runs on the loop's thread. Callbacks: on_header, on_headers and on_body are
 * called from inside up_event (as bytes arrive), and on_body also from inside up_pause (a resume
 * passes on what was held back); on_done is called only from up_reap, exactly
 * once per exchange that up_start accepted and that was not cancelled (up_cancel), so the caller
 * may start or cancel other exchanges from inside it. */
#ifndef ORP_UPSTREAM_H
#define ORP_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

enum up_rc {
    UP_OK = 0,   /* the whole reply was read */
    UP_CONNECT,  /* no connection could be made (refused, unreachable, unresolvable, connect
                    timeout): the request was not sent */
    UP_TIMEOUT,  /* the exchange's deadline passed */
    UP_BROKEN,   /* the connection failed or closed before the reply's end */
    UP_PROTOCOL, /* the reply is not valid HTTP/1.1, or its headers are too large */
    UP_ABORTED,  /* a callback refused the reply */
    UP_NOMEM,
};

/* A short English phrase for rc ("connection refused" is in the on_done detail instead). */
const char *up_strerror(enum up_rc rc);

struct up_handler {
    /* One reply header, whole (values longer than 1 KiB are not passed on). Optional. */
    void (*on_header)(void *ud, const char *name, size_t nlen, const char *value, size_t vlen);
    /* The status line and every header were read. Non-zero ends the exchange (UP_ABORTED). */
    int (*on_headers)(void *ud, int status);
    /* Bytes of the body (de-chunked). Non-zero ends the exchange (UP_ABORTED). */
    int (*on_body)(void *ud, const char *data, size_t n);
    /* The exchange is over; why: a detail for logs ("" when rc is UP_OK). */
    void (*on_done)(void *ud, enum up_rc rc, const char *why);
};

struct up_request {
    const char *base_url; /* "http://host:port" (a name is resolved once per address) */
    const char *path;     /* "/v1/chat/completions" */
    const char *headers;  /* extra header lines, each ending "\r\n"; may be NULL */
    const char *body;     /* sent as application/json; the caller keeps it until on_done */
    size_t body_len;
    int64_t timeout_ms; /* the whole exchange, from up_start, queueing included; 0: none */
};

struct up_loop;
struct up_xfer;

/* A client over the epoll set epfd (the caller's loop waits on it and hands each event on a
 * descriptor it does not own to up_event). max_per_address: connections one address may have
 * open at once from this loop (more requests wait in order); connect_timeout_ms: how long a new
 * connection may take. NULL when out of memory. */
struct up_loop *up_loop_new(int epfd, int max_per_address, int64_t connect_timeout_ms);
/* Closes every connection; exchanges still running are dropped without on_done. */
void up_loop_free(struct up_loop *ul);

/* Starts an exchange: sent at once on an idle connection, after connecting on a new one, or
 * queued behind the address's limit. NULL when it cannot start at all (bad URL, headers too
 * large, out of memory): nothing will be called. The request's strings are copied, except body. */
struct up_xfer *up_start(struct up_loop *ul, const struct up_request *rq,
                         const struct up_handler *h, void *ud);
/* Ends an exchange now without on_done; its connection is closed (the runtime sees the client
 * go) unless the reply was already whole. Must not be called after on_done. */
void up_cancel(struct up_loop *ul, struct up_xfer *x);
/* Stops (1) or resumes (0) reading the exchange's reply: the caller's buffer is full. Paused from
 * inside on_headers or on_body, nothing more of the reply is passed on, not even the rest of
 * what was already read; on resume that rest is passed on from inside up_pause itself. */
void up_pause(struct up_loop *ul, struct up_xfer *x, int paused);
/* Whether the request may have reached the runtime: some of it was written. */
int up_sent(const struct up_xfer *x);

/* An epoll event on fd: 1 when fd is one of this client's connections (handled), 0 if not. */
int up_event(struct up_loop *ul, int fd, uint32_t events);
/* Calls on_done for every exchange that ended since the last call. */
void up_reap(struct up_loop *ul);
/* Deadlines (exchanges, connects) and idle connections; call about once a second. */
void up_sweep(struct up_loop *ul, int64_t now_ms);
/* Connections open now (tests, diagnostics). */
int up_open_connections(const struct up_loop *ul);

#endif
