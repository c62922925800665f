/* logs: see logs.h.
 *
 * Who owns what: a struct log_stream is shared by the connection (the content reader, and the
 * completion callback that lets go of it) and the poller thread; each holds a reference, the last
 * one frees it. The registry (every open stream) is guarded by reg.lock, a stream's buffer and
 * cursor by its own lock; reg.lock is always taken first. The poller never holds reg.lock while it
 * queries. */
#include "logs.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth.h"
#include "ctl.h"
#include "jsonx.h"
#include "log.h"
#include "util.h"

/* Open log streams per account: a console tab or two per endpoint; more is a leak or abuse, and
 * each one costs a query every poll. */
#define LOGS_MAX_PER_ACCOUNT 8
/* Open log streams per controller process: bounds the poller's work (one query per stream and
 * poll) and the memory of the buffers below. */
#define LOGS_MAX_STREAMS 256
#define LOGS_POLL_MS 500
#define LOGS_KEEPALIVE_MS 15000
/* A stream ends after an hour: EventSource reconnects by itself with Last-Event-ID, and a
 * connection that lives forever would outlast credential revocation. */
#define LOGS_STREAM_MAX_MS (3600 * 1000)
/* Unsent bytes a stream may hold: past it the poller stops reading for that client until it
 * catches up (the cursor is in the database, so nothing is lost, only delayed). */
#define LOGS_BUFFER_MAX (256 * 1024)
/* Rows per query: the stored tail of one replica is 2 000 lines. */
#define LOGS_BATCH 500
#define LOGS_TAIL_DEFAULT 200
#define LOGS_TAIL_MAX 2000

struct log_stream {
    pthread_mutex_t lock;
    int refs;
    struct httpd_req *req; /* NULL once the connection is gone */
    int64_t account;
    char endpoint_id[40];
    char replica_id[40]; /* "" : every replica */
    int64_t last_id;     /* the last event id queued */
    struct buf data;     /* bytes not yet sent start at off */
    size_t off;
    int64_t next_keepalive_ms, deadline_ms;
    int finished;
    int fd; /* the client's socket, to notice a departed client while suspended; -1: unknown */
    struct log_stream *next; /* in reg.list */
};

static struct {
    pthread_mutex_t lock;
    struct log_stream *list;
    int n;
    int started;
    char *conninfo; /* the poller's own connection */
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void stream_unref(struct log_stream *ls)
{
    pthread_mutex_lock(&ls->lock);
    int left = --ls->refs;
    pthread_mutex_unlock(&ls->lock);
    if (left) return;
    pthread_mutex_destroy(&ls->lock);
    buf_free(&ls->data);
    free(ls);
}

/* Appends the rows of r (id, replica_id, stream, time, line) as events. Called with ls->lock held
 * or before ls is shared. Returns how many. */
static int append_rows(struct log_stream *ls, PGresult *r)
{
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "replica_id", PQgetvalue(r, i, 1), "stream",
                              PQgetvalue(r, i, 2), "time", PQgetvalue(r, i, 3), "line",
                              PQgetvalue(r, i, 4));
        char *txt = o ? jsonx_dump(o) : NULL;
        json_decref(o);
        int64_t id = db_int(r, i, 0);
        if (txt) buf_printf(&ls->data, "id: %lld\nevent: log\ndata: %s\n\n", (long long)id, txt);
        free(txt);
        if (id > ls->last_id) ls->last_id = id;
    }
    return n;
}

#define LOG_COLUMNS                                                                                \
    "SELECT id, replica_id, stream, "                                                              \
    "  to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), line "                 \
    "FROM replica_logs "

/* The lines of endpoint (and replica, "" : all) after last_id, oldest first, at most LOGS_BATCH. */
static enum db_status query_after(PGconn *c, const char *endpoint, const char *replica,
                                  int64_t last_id, PGresult **r)
{
    char after[24], lim[16];
    snprintf(after, sizeof after, "%lld", (long long)last_id);
    snprintf(lim, sizeof lim, "%d", LOGS_BATCH);
    const char *p[] = {endpoint, after, replica[0] ? replica : NULL, lim};
    return db_exec(c,
                   LOG_COLUMNS "WHERE endpoint_id = $1::uuid AND id > $2::bigint "
                               "  AND ($3::uuid IS NULL OR replica_id = $3::uuid) "
                               "ORDER BY id LIMIT $4::int",
                   4, p, r, NULL);
}

/* The last tail lines of ls's endpoint, oldest first. */
static enum db_status query_tail(PGconn *c, const struct log_stream *ls, int64_t tail, PGresult **r)
{
    char lim[24];
    snprintf(lim, sizeof lim, "%lld", (long long)tail);
    const char *p[] = {ls->endpoint_id, ls->replica_id[0] ? ls->replica_id : NULL, lim};
    return db_exec(c,
                   "SELECT * FROM (" LOG_COLUMNS "WHERE endpoint_id = $1::uuid "
                   "  AND ($2::uuid IS NULL OR replica_id = $2::uuid) "
                   "  ORDER BY id DESC LIMIT $3::int) t ORDER BY id",
                   3, p, r, NULL);
}

/* 1 when the client closed its side: a suspended connection is not polled by libmicrohttpd, and
 * writing a keepalive into a closed socket fails only at the second write (30 s). Called with
 * ls->lock held, so the connection (and its descriptor) cannot be completed meanwhile. */
static int client_left(const struct log_stream *ls)
{
    if (ls->fd < 0) return 0;
    char c;
    ssize_t n = recv(ls->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* One pass of the poller over every open stream. */
static void poll_streams(PGconn *c)
{
    pthread_mutex_lock(&reg.lock);
    size_t n = 0;
    struct log_stream **all = reg.n ? calloc((size_t)reg.n, sizeof *all) : NULL;
    for (struct log_stream *ls = reg.list; ls && all; ls = ls->next) {
        pthread_mutex_lock(&ls->lock);
        ls->refs++;
        pthread_mutex_unlock(&ls->lock);
        all[n++] = ls;
    }
    pthread_mutex_unlock(&reg.lock);
    for (size_t i = 0; i < n; i++) {
        struct log_stream *ls = all[i];
        pthread_mutex_lock(&ls->lock);
        int gone = !ls->req || ls->finished;
        int room = ls->data.len - ls->off < LOGS_BUFFER_MAX;
        int64_t last_id = ls->last_id; /* the cursor, for the query without the lock */
        pthread_mutex_unlock(&ls->lock);
        PGresult *r = NULL;
        enum db_status st = !gone && room && c
                                ? query_after(c, ls->endpoint_id, ls->replica_id, last_id, &r)
                                : DB_NONE;
        pthread_mutex_lock(&ls->lock);
        int wake = 0;
        if (st == DB_ROWS) wake = append_rows(ls, r) > 0;
        int64_t now = util_now_ms();
        int live = ls->req && !ls->finished; /* again: the connection may have ended meanwhile */
        if (live && now >= ls->next_keepalive_ms) {
            buf_printf(&ls->data, ": keepalive\n\n");
            ls->next_keepalive_ms = now + LOGS_KEEPALIVE_MS;
            wake = 1;
        }
        if (live && (now >= ls->deadline_ms || client_left(ls))) ls->finished = wake = 1;
        if (wake && ls->req) httpd_resume(ls->req);
        pthread_mutex_unlock(&ls->lock);
        if (r) PQclear(r);
        stream_unref(ls);
    }
    free(all);
}

static void *poller(void *arg)
{
    (void)arg;
    PGconn *c = NULL;
    for (;;) {
        util_sleep_ms(LOGS_POLL_MS);
        if (!c || PQstatus(c) != CONNECTION_OK) {
            if (c) PQfinish(c);
            c = PQconnectdb(reg.conninfo);
            if (PQstatus(c) != CONNECTION_OK) {
                log_warn("log streams: cannot reach the database: %s", PQerrorMessage(c));
                PQfinish(c);
                c = NULL; /* keepalives are still sent; lines wait for the next pass */
            } else {
                db_quiet_notices(c);
            }
        }
        poll_streams(c);
    }
    return NULL;
}

/* Content reader: never returns 0 without suspending first (libmicrohttpd would busy-loop). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct log_stream *ls = cls;
    pthread_mutex_lock(&ls->lock);
    ssize_t n;
    size_t avail = ls->data.len - ls->off;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(out, ls->data.data + ls->off, (size_t)n);
        ls->off += (size_t)n;
        if (ls->off == ls->data.len) ls->off = ls->data.len = 0;
    } else if (ls->finished || !ls->req || httpd_stopping(ls->req->srv)) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        httpd_suspend(ls->req);
        n = 0;
    }
    pthread_mutex_unlock(&ls->lock);
    return n;
}

/* The connection is done (completion callback): out of the registry, and let go. */
static void stream_state_free(void *state)
{
    struct log_stream *ls = state;
    pthread_mutex_lock(&reg.lock);
    for (struct log_stream **pp = &reg.list; *pp; pp = &(*pp)->next)
        if (*pp == ls) {
            *pp = ls->next;
            reg.n--;
            break;
        }
    pthread_mutex_unlock(&reg.lock);
    pthread_mutex_lock(&ls->lock);
    ls->req = NULL;
    pthread_mutex_unlock(&ls->lock);
    stream_unref(ls);
}

/* Registers ls, starting the poller on first use. 0, or answers 429/503 and returns -1. */
static int admit(struct httpd_req *req, struct log_stream *ls, const char *conninfo)
{
    pthread_mutex_lock(&reg.lock);
    int mine = 0;
    for (struct log_stream *x = reg.list; x; x = x->next)
        mine += x->account == ls->account;
    if (!reg.started) {
        pthread_t t;
        reg.conninfo = strdup(conninfo ? conninfo : "");
        if (reg.conninfo && pthread_create(&t, NULL, poller, NULL) == 0) {
            pthread_detach(t);
            reg.started = 1;
        }
    }
    int ok = reg.started && mine < LOGS_MAX_PER_ACCOUNT && reg.n < LOGS_MAX_STREAMS;
    if (ok) {
        ls->next = reg.list;
        reg.list = ls;
        reg.n++;
    }
    int started = reg.started;
    pthread_mutex_unlock(&reg.lock);
    if (ok) return 0;
    req->retry_after = 10;
    if (!started)
        httpd_error(req, 503, "logs_unavailable", NULL, "log streaming is not available");
    else if (mine >= LOGS_MAX_PER_ACCOUNT)
        httpd_error(req, 429, "too_many_log_streams", NULL,
                    "this account already has %d log streams open; close one first",
                    LOGS_MAX_PER_ACCOUNT);
    else
        httpd_error(req, 503, "too_many_log_streams", NULL,
                    "this controller is serving as many log streams as it can; retry shortly");
    return -1;
}

/* A non-negative event id from Last-Event-ID or ?after=: 1 found, 0 absent, -1 answered 400. */
static int resume_point(struct httpd_req *req, int64_t *after)
{
    const char *param = "Last-Event-ID";
    const char *v = httpd_header(req, "Last-Event-ID");
    if (!v) {
        param = "after";
        v = httpd_query(req, "after");
    }
    if (!v) return 0;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (!v[0] || *end || n < 0 || strlen(v) > 19) {
        httpd_error(req, 400, "invalid_parameter", param,
                    "%s must be an event id (a non-negative integer)", param);
        return -1;
    }
    *after = n;
    return 1;
}

static void h_logs(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *id = req->params[0];
    const char *rep = httpd_query(req, "replica");
    int64_t after = 0, tail;
    int resume;
    struct log_stream *ls = NULL;
    PGresult *r = NULL;
    if (!api_is_uuid(id)) {
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
        goto out;
    }
    if (rep && !api_is_uuid(rep)) {
        httpd_error(req, 400, "invalid_parameter", "replica", "replica must be a replica id");
        goto out;
    }
    if ((resume = resume_point(req, &after)) < 0 ||
        (tail = httpd_query_int(req, "tail", LOGS_TAIL_DEFAULT, LOGS_TAIL_MAX)) < 0)
        goto out;
    const char *pe[] = {id, a.account_id_str};
    enum db_status st = db_exec(c,
                                "SELECT 1 FROM endpoints WHERE id = $1::uuid "
                                "AND account_id = $2::bigint",
                                2, pe, &r, NULL);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "try again");
        goto out;
    }
    PQclear(r);
    r = NULL;
    if (st == DB_NONE) {
        httpd_error(req, 404, "endpoint_not_found", NULL, "endpoint %s does not exist", id);
        goto out;
    }
    ls = calloc(1, sizeof *ls);
    if (!ls) {
        httpd_error(req, 503, "out_of_memory", NULL, "try again");
        goto out;
    }
    pthread_mutex_init(&ls->lock, NULL);
    ls->refs = 1;
    ls->fd = -1;
    ls->account = a.account_id;
    snprintf(ls->endpoint_id, sizeof ls->endpoint_id, "%.36s", id); /* a UUID */
    snprintf(ls->replica_id, sizeof ls->replica_id, "%.36s", rep ? rep : "");
    ls->last_id = after;
    ls->next_keepalive_ms = util_now_ms() + LOGS_KEEPALIVE_MS;
    ls->deadline_ms = util_now_ms() + LOGS_STREAM_MAX_MS;
    st = resume ? query_after(c, ls->endpoint_id, ls->replica_id, after, &r)
                : query_tail(c, ls, tail, &r);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "try again");
        goto out;
    }
    append_rows(ls, r);
    ctl_db_done(req, c);
    c = NULL;
    if (admit(req, ls, l->ctl->cfg.database_url) != 0) goto out;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    pthread_mutex_lock(&ls->lock); /* the poller sees it from now on */
    ls->req = req;
    ls->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_unlock(&ls->lock);
    req->state = ls;
    req->state_free = stream_state_free;
    ls = NULL; /* the connection's reference now */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, req->state, NULL);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    httpd_reply_response(req, 200, resp);
out:
    if (r) PQclear(r);
    if (c) ctl_db_done(req, c);
    if (ls) stream_unref(ls);
}

const struct httpd_route logs_routes[] = {
    {"GET", "/v1/endpoints/{}/logs", h_logs},
};
const size_t logs_nroutes = sizeof logs_routes / sizeof logs_routes[0];
