/* upstream: see upstream.h.
 *
 * A connection is in one of four states: connecting (waits for EPOLLOUT), sending (the request is
 * partly written: EPOLLOUT and EPOLLIN, since a runtime may answer early), receiving (EPOLLIN) and
 * idle (in its pool, EPOLLIN: an event there means the runtime closed it). A connection that
 * goes from receiving to idle and back keeps its registration, so a request on a kept-alive
 * connection costs one sendmsg and one recv, and no epoll_ctl. A paused exchange's connection
 * leaves the epoll set (a closed peer would otherwise report EPOLLHUP in a loop).
 *
 * A kept-alive connection can be closed by the runtime just as a request is written to it; the
 * request then fails before any byte of a reply. Such an exchange is tried once more on a new
 * connection (what browsers and libcurl do): the runtime did not read it. */
#include "upstream.h"

#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util.h"

#define UP_HEAD_MAX 1536 /* the request line and headers */
#define UP_KEY_MAX 280   /* base URLs: "http://" + host + ":" + port */
#define UP_HOST_MAX 264
#define UP_NAME_MAX 64 /* reply header names passed on */
#define UP_VALUE_MAX 1024
#define UP_MAX_HEADER_BYTES (64 * 1024)
#define UP_RBUF (16 * 1024)
#define UP_READS_PER_EVENT 4 /* recv calls per event when each fills the buffer */
#define UP_IDLE_MS 60000     /* an idle connection older than this is closed */
#define UP_POOL_IDLE_MS 300000
#define UP_BUCKETS 256
#define UP_ADDRS 4                /* addresses of one host name tried in turn */
#define UP_RESOLVE_RETRY_MS 10000 /* a name that did not resolve is not looked up again sooner */

enum conn_state { C_CONNECTING, C_SENDING, C_RECEIVING, C_IDLE };

struct up_pool;

struct up_conn {
    int fd;
    enum conn_state state;
    uint32_t events; /* what the epoll set holds for fd; 0: not in it */
    struct up_pool *pool;
    struct up_xfer *x;             /* the exchange on it; NULL when idle */
    struct up_conn *inext, *iprev; /* the pool's idle list */
    int served;                    /* replies read whole on it */
    int64_t since_ms;              /* connecting since, or idle since (coarse) */
    llhttp_t parser;
    int got;             /* bytes of the current reply arrived */
    int complete;        /* the current reply is whole */
    int aborted;         /* a callback refused it */
    int too_big;         /* its headers passed UP_MAX_HEADER_BYTES */
    const char *refused; /* why on_hdone refused it (llhttp keeps no reason of a callback's) */
    size_t hbytes;
    size_t hn, hv;
    int hover;
    char *rest;      /* read but not parsed: the exchange was paused in the middle of a read */
    size_t rest_len; /* the header being read overflowed name or value: not passed on */
    char hname[UP_NAME_MAX];
    char hval[UP_VALUE_MAX];
};

struct up_pool {
    struct up_pool *hnext;
    char key[UP_KEY_MAX];
    char host[UP_HOST_MAX];                 /* host:port, the Host header */
    struct sockaddr_storage addr[UP_ADDRS]; /* what the host resolved to; addr[cur] is used */
    socklen_t alen[UP_ADDRS];
    int naddr, cur;
    int resolved, named;      /* named: a host name, not an address literal */
    int64_t resolve_again_ms; /* a failed lookup is not repeated before then */
    char resolve_err[128];
    int nconns;
    struct up_conn *idle;             /* most recently used first */
    struct up_xfer *wait, *wait_tail; /* over the limit, in arrival order */
    int kicking;                      /* pool_kick is running */
    int64_t used_ms;                  /* coarse */
};

struct up_xfer {
    struct up_xfer *next, *prev; /* the loop's live list, then its done list */
    struct up_xfer *wnext;       /* the pool's wait queue */
    struct up_pool *pool;
    struct up_conn *c;
    const struct up_handler *h;
    void *ud;
    const char *body;
    size_t body_len;
    size_t head_len;
    size_t off; /* of head + body, written */
    int64_t deadline_ms;
    int sent, paused, waiting, ended, retried;
    enum up_rc rc;
    char why[160];
    char head[UP_HEAD_MAX];
};

struct up_loop {
    int epfd;
    int max_per;
    int64_t connect_timeout_ms;
    int64_t coarse_ms; /* the last up_sweep's clock */
    struct up_conn **byfd;
    int nbyfd;
    int nconns;
    struct up_xfer *live;
    struct up_xfer *done, *done_tail;
    struct up_pool *buckets[UP_BUCKETS];
    char rbuf[UP_RBUF];
};

/* Exchanges are a couple of KiB each: kept for reuse by the loop's thread (util_spares). */
static struct util_spares up_spare_xfers = UTIL_SPARES_INIT(1024);

const char *up_strerror(enum up_rc rc)
{
    switch (rc) {
    case UP_OK:
        return "ok";
    case UP_CONNECT:
        return "could not connect to the runtime";
    case UP_TIMEOUT:
        return "the request reached its deadline";
    case UP_BROKEN:
        return "the connection to the runtime broke";
    case UP_PROTOCOL:
        return "the runtime's reply is not valid HTTP/1.1";
    case UP_ABORTED:
        return "the reply was refused";
    case UP_NOMEM:
        return "out of memory";
    }
    return "unknown error";
}

static int on_hfield(llhttp_t *p, const char *at, size_t n);
static int on_hvalue(llhttp_t *p, const char *at, size_t n);
static int on_hvalue_done(llhttp_t *p);
static int on_hdone(llhttp_t *p);
static int on_rbody(llhttp_t *p, const char *at, size_t n);
static int on_rdone(llhttp_t *p);

static const llhttp_settings_t up_settings = {
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_header_value_complete = on_hvalue_done,
    .on_headers_complete = on_hdone,
    .on_body = on_rbody,
    .on_message_complete = on_rdone,
};

/* ---- connections ---- */

/* Makes the epoll set hold `events` for c (0: not at all). */
static void conn_watch(struct up_loop *ul, struct up_conn *c, uint32_t events)
{
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.fd = c->fd};
    if (!events)
        epoll_ctl(ul->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    else
        epoll_ctl(ul->epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev);
    c->events = events;
}

static void idle_remove(struct up_conn *c)
{
    struct up_pool *pl = c->pool;
    if (c->iprev)
        c->iprev->inext = c->inext;
    else if (pl->idle == c)
        pl->idle = c->inext;
    if (c->inext) c->inext->iprev = c->iprev;
    c->inext = c->iprev = NULL;
}

/* Closes c (its exchange, if any, must be detached first). The caller then calls pool_kick:
 * the pool may start a waiting exchange in its place. */
static void conn_close(struct up_loop *ul, struct up_conn *c)
{
    if (c->state == C_IDLE) idle_remove(c);
    c->pool->nconns--;
    ul->nconns--;
    if (c->fd >= 0 && c->fd < ul->nbyfd) ul->byfd[c->fd] = NULL;
    close(c->fd); /* also takes it out of the epoll set */
    free(c->rest);
    free(c);
}

static void xfer_end(struct up_loop *ul, struct up_xfer *x, enum up_rc rc, const char *why);
static void wait_remove(struct up_xfer *x);
static void conn_begin(struct up_loop *ul, struct up_conn *c, struct up_xfer *x);
static void pool_start(struct up_loop *ul, struct up_xfer *x);
static void pool_kick(struct up_loop *ul, struct up_pool *pl);
static void pool_connect_failed(struct up_pool *pl);

/* The exchange on c is over: c goes back to its pool (or to the next waiting exchange) when
 * reusable, else it is closed; x ends with rc. */
static void conn_finish(struct up_loop *ul, struct up_conn *c, int reusable, enum up_rc rc,
                        const char *why)
{
    struct up_xfer *x = c->x;
    struct up_pool *pl = c->pool;
    c->x = NULL;
    if (x) x->c = NULL;
    if (reusable) {
        c->served++;
        if (pl->wait) { /* the next in line takes it as it is */
            struct up_xfer *w = pl->wait;
            wait_remove(w);
            conn_begin(ul, c, w);
        } else {
            c->state = C_IDLE;
            c->since_ms = ul->coarse_ms;
            c->inext = pl->idle;
            c->iprev = NULL;
            if (pl->idle) pl->idle->iprev = c;
            pl->idle = c;
            conn_watch(ul, c, EPOLLIN);
        }
    } else {
        conn_close(ul, c);
    }
    if (x) xfer_end(ul, x, rc, why);
    if (!reusable) pool_kick(ul, pl);
}

/* c failed (rc, why). An exchange that a reused connection lost before any byte of its reply is
 * tried once more on a new connection. */
static void conn_fail(struct up_loop *ul, struct up_conn *c, enum up_rc rc, const char *why)
{
    struct up_xfer *x = c->x;
    struct up_pool *pl = c->pool;
    if (x && rc == UP_BROKEN && c->served > 0 && !c->got && !x->retried) {
        c->x = NULL;
        x->c = NULL;
        x->retried = 1;
        x->off = 0;
        conn_close(ul, c);
        pool_start(ul, x);
        pool_kick(ul, pl);
        return;
    }
    conn_finish(ul, c, 0, rc, why);
}

/* Writes what is left of the request. */
static void conn_send(struct up_loop *ul, struct up_conn *c)
{
    struct up_xfer *x = c->x;
    size_t total = x->head_len + x->body_len;
    while (x->off < total) {
        struct iovec iov[2];
        int n = 0;
        if (x->off < x->head_len) iov[n++] = (struct iovec){x->head + x->off, x->head_len - x->off};
        size_t boff = x->off > x->head_len ? x->off - x->head_len : 0;
        if (x->body_len > boff)
            iov[n++] = (struct iovec){(char *)x->body + boff, x->body_len - boff};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_watch(ul, c, EPOLLIN | EPOLLOUT);
                return;
            }
            char why[160];
            snprintf(why, sizeof why, "sending the request: %s", strerror(errno));
            conn_fail(ul, c, UP_BROKEN, why);
            return;
        }
        x->off += (size_t)w;
        x->sent = 1;
    }
    c->state = C_RECEIVING;
    conn_watch(ul, c, x->paused ? 0 : EPOLLIN);
}

/* Gives x to c, with a parser for its reply. */
static void conn_attach(struct up_conn *c, struct up_xfer *x)
{
    c->x = x;
    x->c = c;
    llhttp_init(&c->parser, HTTP_RESPONSE, &up_settings);
    c->parser.data = c;
    c->got = c->complete = c->aborted = c->too_big = 0;
    c->refused = NULL;
    c->hbytes = c->hn = c->hv = 0;
    c->hover = 0;
    free(c->rest);
    c->rest = NULL;
    c->rest_len = 0;
}

/* Sends x on the connected c. */
static void conn_begin(struct up_loop *ul, struct up_conn *c, struct up_xfer *x)
{
    conn_attach(c, x);
    c->state = C_SENDING;
    conn_send(ul, c);
}

/* ---- the reply (llhttp callbacks) ---- */

static int header_bytes(struct up_conn *c, size_t n)
{
    c->hbytes += n;
    if (c->hbytes <= UP_MAX_HEADER_BYTES) return 0;
    c->too_big = 1;
    return -1;
}

static int on_hfield(llhttp_t *p, const char *at, size_t n)
{
    struct up_conn *c = p->data;
    if (c->hn + n < sizeof c->hname) {
        memcpy(c->hname + c->hn, at, n);
        c->hn += n;
    } else {
        c->hover = 1;
    }
    return header_bytes(c, n);
}

static int on_hvalue(llhttp_t *p, const char *at, size_t n)
{
    struct up_conn *c = p->data;
    if (c->hv + n < sizeof c->hval) {
        memcpy(c->hval + c->hv, at, n);
        c->hv += n;
    } else {
        c->hover = 1;
    }
    return header_bytes(c, n);
}

static int on_hvalue_done(llhttp_t *p)
{
    struct up_conn *c = p->data;
    struct up_xfer *x = c->x;
    if (!c->hover && x->h->on_header) {
        c->hname[c->hn] = c->hval[c->hv] = '\0';
        x->h->on_header(x->ud, c->hname, c->hn, c->hval, c->hv);
    }
    c->hn = c->hv = 0;
    c->hover = 0;
    return 0;
}

static int on_hdone(llhttp_t *p)
{
    struct up_conn *c = p->data;
    struct up_xfer *x = c->x;
    int status = llhttp_get_status_code(p);
    if (status < 200 || status > 599) { /* no 1xx is ever asked for (no Expect, no Upgrade) */
        c->refused = status < 200 ? "an unexpected 1xx status" : "a status code above 599";
        return -1;
    }
    if (x->h->on_headers && x->h->on_headers(x->ud, status) != 0) {
        c->aborted = 1;
        return -1;
    }
    return x->paused ? HPE_PAUSED : 0; /* up_pause from the callback: nothing more until resumed */
}

static int on_rbody(llhttp_t *p, const char *at, size_t n)
{
    struct up_conn *c = p->data;
    struct up_xfer *x = c->x;
    if (n == 0) return 0; /* llhttp ends a body span at each buffer's end, empty after a resume */
    if (x->h->on_body && x->h->on_body(x->ud, at, n) != 0) {
        c->aborted = 1;
        return -1;
    }
    return x->paused ? HPE_PAUSED : 0;
}

static int on_rdone(llhttp_t *p)
{
    struct up_conn *c = p->data;
    c->complete = 1;
    return HPE_PAUSED; /* nothing after the reply is read as part of it */
}

/* Hands n bytes of c's reply to the parser; 1 when the exchange ended (c may be gone). */
static int conn_parse(struct up_loop *ul, struct up_conn *c, const char *d, size_t n)
{
    c->got = 1;
    llhttp_errno_t e = llhttp_execute(&c->parser, d, n);
    if (c->complete) {
        /* Bytes after the reply, or a reply before the request was all written, or a runtime
         * that closes: the connection is not used again. */
        const char *end = llhttp_get_error_pos(&c->parser);
        int reusable = e == HPE_PAUSED && end == d + n && c->state == C_RECEIVING &&
                       llhttp_should_keep_alive(&c->parser);
        conn_finish(ul, c, reusable, UP_OK, "");
        return 1;
    }
    if (e == HPE_OK) return 0;
    if (e == HPE_PAUSED) { /* by up_pause: what is left of d waits for the resume */
        const char *at = llhttp_get_error_pos(&c->parser);
        size_t left = at && at >= d && at < d + n ? (size_t)(d + n - at) : 0;
        if (left) {
            c->rest = malloc(left);
            if (!c->rest) {
                conn_finish(ul, c, 0, UP_NOMEM, "out of memory");
                return 1;
            }
            memcpy(c->rest, at, left);
            c->rest_len = left;
        }
        return 0;
    }
    if (c->aborted) {
        conn_finish(ul, c, 0, UP_ABORTED, "the reply was refused");
    } else if (c->too_big) {
        conn_finish(ul, c, 0, UP_PROTOCOL, "the reply's headers are larger than 64 KiB");
    } else if (c->refused) {
        char why[160];
        snprintf(why, sizeof why, "invalid reply: %s", c->refused);
        conn_finish(ul, c, 0, UP_PROTOCOL, why);
    } else {
        char why[160];
        snprintf(why, sizeof why, "invalid reply: %s (%s)", llhttp_get_error_reason(&c->parser),
                 llhttp_errno_name(e));
        conn_finish(ul, c, 0, UP_PROTOCOL, why);
    }
    return 1;
}

/* c is readable. */
static void conn_read(struct up_loop *ul, struct up_conn *c)
{
    for (int i = 0; i < UP_READS_PER_EVENT; i++) {
        ssize_t n = recv(c->fd, ul->rbuf, sizeof ul->rbuf, 0);
        if (n > 0) {
            if (conn_parse(ul, c, ul->rbuf, (size_t)n)) return;
            /* Paused from a callback, or drained: the next event says when there is more. */
            if (c->x->paused || (size_t)n < sizeof ul->rbuf) return;
            continue;
        }
        if (n == 0) { /* the runtime closed: the end of a close-delimited reply, or a failure */
            llhttp_finish(&c->parser); /* completes a close-delimited reply */
            if (c->complete) {
                conn_finish(ul, c, 0, UP_OK, "");
            } else {
                conn_fail(ul, c, UP_BROKEN,
                          c->got ? "the runtime closed the connection before the reply's end"
                                 : "the runtime closed the connection without a reply");
            }
            return;
        }
        if (errno == EINTR) {
            i--;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        char why[160];
        snprintf(why, sizeof why, "reading the reply: %s", strerror(errno));
        conn_fail(ul, c, UP_BROKEN, why);
        return;
    }
}

/* c's connect finished (or failed). */
static void conn_connected(struct up_loop *ul, struct up_conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "connect to %.100s: %s", c->pool->host, strerror(err));
        pool_connect_failed(c->pool);
        conn_finish(ul, c, 0, UP_CONNECT, why);
        return;
    }
    c->state = C_SENDING;
    conn_send(ul, c);
}

/* Resolves pl's host, once: an address literal costs nothing, a host name blocks this loop while
 * it is looked up (runtimes are best registered by address; agents send --advertise-addr). A
 * name that does not resolve fails fast for UP_RESOLVE_RETRY_MS instead of blocking every
 * request. 0 or -1 with why. */
static int pool_resolve(struct up_pool *pl, char *why, size_t whyn)
{
    if (pl->resolved) return 0;
    if (pl->resolve_again_ms && util_now_ms() < pl->resolve_again_ms) {
        util_strlcpy(why, pl->resolve_err, whyn);
        return -1;
    }
    char host[UP_HOST_MAX];
    util_strlcpy(host, pl->host, sizeof host);
    char *colon = strrchr(host, ':'); /* pool_of checked there is one, and a port after it */
    *colon = '\0';
    const char *port = colon + 1, *name = host;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') { /* [IPv6] */
        host[hl - 1] = '\0';
        name = host + 1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, port, &hints, &res);
    pl->named = rc == EAI_NONAME;
    if (pl->named) {
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(name, port, &hints, &res);
    }
    if (rc != 0 || !res) {
        snprintf(pl->resolve_err, sizeof pl->resolve_err, "cannot resolve %.80s: %s", pl->host,
                 gai_strerror(rc));
        pl->resolve_again_ms = util_now_ms() + UP_RESOLVE_RETRY_MS;
        util_strlcpy(why, pl->resolve_err, whyn);
        return -1;
    }
    pl->naddr = 0;
    for (struct addrinfo *a = res; a && pl->naddr < UP_ADDRS; a = a->ai_next) {
        if (a->ai_addrlen > sizeof pl->addr[0]) continue;
        memcpy(&pl->addr[pl->naddr], a->ai_addr, a->ai_addrlen);
        pl->alen[pl->naddr++] = a->ai_addrlen;
    }
    freeaddrinfo(res);
    pl->cur = 0;
    pl->resolved = pl->naddr > 0;
    pl->resolve_again_ms = 0;
    return pl->resolved ? 0 : (util_strlcpy(why, "no usable address", whyn), -1);
}

/* A connect to pl failed: the next time, its host's next address; after the last, a name is
 * looked up again (it may have moved). */
static void pool_connect_failed(struct up_pool *pl)
{
    if (pl->naddr > 0) pl->cur = (pl->cur + 1) % pl->naddr;
    if (pl->named && pl->cur == 0) pl->resolved = 0;
}

/* Opens a new connection for x (the pool has room). */
static void conn_open(struct up_loop *ul, struct up_pool *pl, struct up_xfer *x)
{
    char why[160];
    if (pool_resolve(pl, why, sizeof why) != 0) {
        xfer_end(ul, x, UP_CONNECT, why);
        return;
    }
    int fd = socket(pl->addr[pl->cur].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct up_conn *c = fd < 0 ? NULL : calloc(1, sizeof *c);
    if (fd >= 0 && fd >= ul->nbyfd) {
        int n = ul->nbyfd ? ul->nbyfd : 1024;
        while (n <= fd)
            n *= 2;
        struct up_conn **t = realloc(ul->byfd, (size_t)n * sizeof *t);
        if (t) {
            memset(t + ul->nbyfd, 0, (size_t)(n - ul->nbyfd) * sizeof *t);
            ul->byfd = t;
            ul->nbyfd = n;
        }
    }
    if (!c || fd >= ul->nbyfd) {
        snprintf(why, sizeof why, "cannot open a socket: %s",
                 fd < 0 ? strerror(errno) : "out of memory");
        if (fd >= 0) close(fd);
        free(c);
        xfer_end(ul, x, fd < 0 ? UP_CONNECT : UP_NOMEM, why);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->pool = pl;
    ul->byfd[fd] = c;
    pl->nconns++;
    ul->nconns++;
    conn_attach(c, x);
    c->state = C_CONNECTING;
    c->since_ms = util_now_ms();
    if (connect(fd, (struct sockaddr *)&pl->addr[pl->cur], pl->alen[pl->cur]) == 0) {
        c->state = C_SENDING;
        conn_send(ul, c);
    } else if (errno == EINPROGRESS || errno == EINTR) {
        conn_watch(ul, c, EPOLLOUT);
    } else {
        snprintf(why, sizeof why, "connect to %.100s: %s", pl->host, strerror(errno));
        pool_connect_failed(pl);
        conn_finish(ul, c, 0, UP_CONNECT, why);
    }
}

/* ---- pools ---- */

static uint32_t key_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The pool of base_url ("http://host:port"), made on first use; NULL for a URL that is not one. */
static struct up_pool *pool_of(struct up_loop *ul, const char *base_url)
{
    uint32_t b = key_hash(base_url) % UP_BUCKETS;
    for (struct up_pool *pl = ul->buckets[b]; pl; pl = pl->hnext)
        if (!strcmp(pl->key, base_url)) return pl;
    static const char scheme[] = "http://";
    if (strncmp(base_url, scheme, sizeof scheme - 1) != 0) return NULL;
    const char *hp = base_url + sizeof scheme - 1;
    size_t hl = strlen(hp);
    const char *colon = strrchr(hp, ':');
    if (hl == 0 || hl >= UP_HOST_MAX || strlen(base_url) >= UP_KEY_MAX || strchr(hp, '/') ||
        !colon || colon == hp || !colon[1] || strchr(colon, ']'))
        return NULL;
    long port = 0;
    for (const char *d = colon + 1; *d; d++) {
        if (*d < '0' || *d > '9' || port > 65535) return NULL;
        port = port * 10 + (*d - '0');
    }
    if (port < 1 || port > 65535) return NULL;
    struct up_pool *pl = calloc(1, sizeof *pl);
    if (!pl) return NULL;
    util_strlcpy(pl->key, base_url, sizeof pl->key);
    util_strlcpy(pl->host, hp, sizeof pl->host);
    pl->used_ms = ul->coarse_ms;
    pl->hnext = ul->buckets[b];
    ul->buckets[b] = pl;
    return pl;
}

/* Starts x on an idle connection, a new one, or queues it. */
static void pool_start(struct up_loop *ul, struct up_xfer *x)
{
    struct up_pool *pl = x->pool;
    pl->used_ms = ul->coarse_ms;
    if (pl->idle) {
        struct up_conn *c = pl->idle;
        idle_remove(c);
        conn_begin(ul, c, x);
    } else if (pl->nconns < ul->max_per) {
        conn_open(ul, pl, x);
    } else {
        x->waiting = 1;
        x->wnext = NULL;
        if (pl->wait_tail)
            pl->wait_tail->wnext = x;
        else
            pl->wait = x;
        pl->wait_tail = x;
    }
}

/* A connection of pl closed: waiting exchanges may open new ones. A connect that fails at once
 * (an unreachable network) closes its connection and kicks the pool again from inside this
 * loop: that inner call returns, and this loop goes on, so the stack does not grow with the
 * queue. */
static void pool_kick(struct up_loop *ul, struct up_pool *pl)
{
    if (pl->kicking) return;
    pl->kicking = 1;
    while (pl->wait && pl->nconns < ul->max_per) {
        struct up_xfer *w = pl->wait;
        wait_remove(w);
        conn_open(ul, pl, w);
    }
    pl->kicking = 0;
}

static void wait_remove(struct up_xfer *x)
{
    struct up_pool *pl = x->pool;
    struct up_xfer **pp = &pl->wait, *prev = NULL;
    while (*pp && *pp != x) {
        prev = *pp;
        pp = &(*pp)->wnext;
    }
    if (*pp) *pp = x->wnext;
    if (pl->wait_tail == x) pl->wait_tail = prev;
    x->wnext = NULL;
    x->waiting = 0;
}

/* ---- exchanges ---- */

static void live_remove(struct up_loop *ul, struct up_xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        ul->live = x->next;
    if (x->next) x->next->prev = x->prev;
    x->next = x->prev = NULL;
}

/* x is over (already detached from any connection and queue): on_done at the next up_reap. */
static void xfer_end(struct up_loop *ul, struct up_xfer *x, enum up_rc rc, const char *why)
{
    live_remove(ul, x);
    x->ended = 1;
    x->rc = rc;
    util_strlcpy(x->why, why, sizeof x->why);
    if (ul->done_tail)
        ul->done_tail->next = x;
    else
        ul->done = x;
    ul->done_tail = x;
}

/* Appends s (n bytes) at *at within [.., end); 0 or -1 when it does not fit. */
static int put(char **at, const char *end, const char *s, size_t n)
{
    if (n == 0) return 0;
    if ((size_t)(end - *at) < n) return -1;
    memcpy(*at, s, n);
    *at += n;
    return 0;
}
#define PUTS(at, end, lit) put(at, end, lit, sizeof lit - 1)

struct up_xfer *up_start(struct up_loop *ul, const struct up_request *rq,
                         const struct up_handler *h, void *ud)
{
    if (!rq->base_url || !rq->path) return NULL;
    struct up_pool *pl = pool_of(ul, rq->base_url);
    if (!pl) return NULL;
    struct up_xfer *x = util_spare_take(&up_spare_xfers, sizeof *x);
    if (!x) return NULL;
    char *at = x->head, *end = x->head + sizeof x->head;
    char len[24];
    size_t ll = util_i64toa(len, (int64_t)rq->body_len);
    size_t hl = rq->headers ? strlen(rq->headers) : 0;
    if (PUTS(&at, end, "POST ") || put(&at, end, rq->path, strlen(rq->path)) ||
        PUTS(&at, end, " HTTP/1.1\r\nHost: ") || put(&at, end, pl->host, strlen(pl->host)) ||
        PUTS(&at, end, "\r\nContent-Type: application/json\r\nContent-Length: ") ||
        put(&at, end, len, ll) || PUTS(&at, end, "\r\n") || put(&at, end, rq->headers, hl) ||
        PUTS(&at, end, "\r\n")) {
        util_spare_give(&up_spare_xfers, x);
        return NULL;
    }
    x->head_len = (size_t)(at - x->head);
    x->pool = pl;
    x->h = h;
    x->ud = ud;
    x->body = rq->body;
    x->body_len = rq->body_len;
    x->deadline_ms = rq->timeout_ms > 0 ? util_now_ms() + rq->timeout_ms : 0;
    x->next = ul->live;
    if (ul->live) ul->live->prev = x;
    ul->live = x;
    pool_start(ul, x);
    return x;
}

static void done_remove(struct up_loop *ul, struct up_xfer *x)
{
    struct up_xfer *prev = NULL;
    for (struct up_xfer *d = ul->done; d; prev = d, d = d->next) {
        if (d != x) continue;
        if (prev)
            prev->next = x->next;
        else
            ul->done = x->next;
        if (ul->done_tail == x) ul->done_tail = prev;
        return;
    }
}

void up_cancel(struct up_loop *ul, struct up_xfer *x)
{
    if (x->ended) {
        done_remove(ul, x); /* ended but not yet reaped: its connection was dealt with then */
    } else {
        if (x->waiting) wait_remove(x);
        struct up_conn *c = x->c;
        if (c) { /* closed, so that the runtime sees the client go */
            struct up_pool *pl = c->pool;
            c->x = NULL;
            conn_close(ul, c);
            pool_kick(ul, pl);
        }
        live_remove(ul, x);
    }
    util_spare_give(&up_spare_xfers, x);
}

void up_pause(struct up_loop *ul, struct up_xfer *x, int paused)
{
    int was = x->paused;
    x->paused = paused != 0;
    struct up_conn *c = x->c;
    if (!c || c->state != C_RECEIVING) return; /* sending: conn_send decides when done */
    if (paused || !was) {
        conn_watch(ul, c, paused ? 0 : EPOLLIN);
        return;
    }
    /* Resumed: first what was read but held back, then the socket again. */
    if (llhttp_get_errno(&c->parser) == HPE_PAUSED) {
        llhttp_resume(&c->parser);
        char *rest = c->rest;
        size_t n = c->rest_len;
        c->rest = NULL;
        c->rest_len = 0;
        int ended = conn_parse(ul, c, rest ? rest : ul->rbuf, n);
        free(rest);
        if (ended || x->paused) return;
    }
    conn_watch(ul, c, EPOLLIN);
}

int up_sent(const struct up_xfer *x)
{
    return x->sent;
}

int up_event(struct up_loop *ul, int fd, uint32_t events)
{
    struct up_conn *c = fd >= 0 && fd < ul->nbyfd ? ul->byfd[fd] : NULL;
    if (!c) return 0;
    switch (c->state) {
    case C_IDLE: { /* the runtime closed it, or spoke out of turn */
        struct up_pool *pl = c->pool;
        conn_close(ul, c);
        pool_kick(ul, pl);
        break;
    }
    case C_CONNECTING:
        conn_connected(ul, c);
        break;
    case C_SENDING:
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            conn_read(ul, c); /* an early reply, or the error */
        else if (events & EPOLLOUT)
            conn_send(ul, c);
        break;
    case C_RECEIVING:
        if (!c->x->paused) conn_read(ul, c);
        break;
    }
    return 1;
}

void up_reap(struct up_loop *ul)
{
    while (ul->done) {
        struct up_xfer *x = ul->done;
        ul->done = x->next;
        if (!ul->done) ul->done_tail = NULL;
        x->next = NULL;
        if (x->h->on_done) x->h->on_done(x->ud, x->rc, x->why);
        util_spare_give(&up_spare_xfers, x);
    }
}

void up_sweep(struct up_loop *ul, int64_t now_ms)
{
    ul->coarse_ms = now_ms;
    /* Ending one exchange can start or end others (a waiting one takes the freed place): after
     * each, the walk starts over. Each restart follows an exchange leaving the list. */
    for (struct up_xfer *x = ul->live, *next; x; x = next) {
        next = x->next;
        struct up_conn *c = x->c;
        if (x->deadline_ms && now_ms >= x->deadline_ms) {
            if (x->waiting) {
                wait_remove(x);
                xfer_end(ul, x, UP_TIMEOUT,
                         "the request waited past its deadline for a connection");
            } else if (c) {
                conn_finish(ul, c, 0, UP_TIMEOUT, "the request reached its deadline");
            }
            next = ul->live;
        } else if (c && c->state == C_CONNECTING &&
                   now_ms - c->since_ms >= ul->connect_timeout_ms) {
            char why[160];
            snprintf(why, sizeof why, "connect to %.100s timed out after %lld ms", c->pool->host,
                     (long long)ul->connect_timeout_ms);
            pool_connect_failed(c->pool);
            conn_finish(ul, c, 0, UP_CONNECT, why);
            next = ul->live;
        }
    }
    for (int b = 0; b < UP_BUCKETS; b++) {
        for (struct up_pool **pp = &ul->buckets[b]; *pp;) {
            struct up_pool *pl = *pp;
            for (struct up_conn *c = pl->idle, *cn; c; c = cn) {
                cn = c->inext;
                if (now_ms - c->since_ms >= UP_IDLE_MS) conn_close(ul, c);
            }
            if (!pl->nconns && !pl->wait && now_ms - pl->used_ms >= UP_POOL_IDLE_MS) {
                *pp = pl->hnext;
                free(pl);
            } else {
                pp = &pl->hnext;
            }
        }
    }
}

int up_open_connections(const struct up_loop *ul)
{
    return ul->nconns;
}

struct up_loop *up_loop_new(int epfd, int max_per_address, int64_t connect_timeout_ms)
{
    struct up_loop *ul = calloc(1, sizeof *ul);
    if (!ul) return NULL;
    ul->epfd = epfd;
    ul->max_per = max_per_address > 0 ? max_per_address : 1;
    ul->connect_timeout_ms = connect_timeout_ms > 0 ? connect_timeout_ms : 3000;
    ul->coarse_ms = util_now_ms();
    return ul;
}

void up_loop_free(struct up_loop *ul)
{
    if (!ul) return;
    while (ul->live) {
        struct up_xfer *x = ul->live;
        if (x->waiting) wait_remove(x);
        if (x->c) {
            x->c->x = NULL;
            conn_close(ul, x->c);
        }
        live_remove(ul, x);
        util_spare_give(&up_spare_xfers, x);
    }
    while (ul->done) {
        struct up_xfer *x = ul->done;
        ul->done = x->next;
        util_spare_give(&up_spare_xfers, x);
    }
    for (int b = 0; b < UP_BUCKETS; b++) {
        while (ul->buckets[b]) {
            struct up_pool *pl = ul->buckets[b];
            while (pl->idle)
                conn_close(ul, pl->idle);
            ul->buckets[b] = pl->hnext;
            free(pl);
        }
    }
    free(ul->byfd);
    free(ul);
}
