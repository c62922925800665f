/* gateway_proxy: see gateway_proxy.h.
 *
 * The task is to move bytes between a runtime and a client as cheaply as possible, without
 * buffering a stream and without letting either side make the gateway wait.
 *
 * Loops: the gateway listener's threads (--threads) are these loops, each an epoll loop over its
 * own libmicrohttpd daemon (the listener runs in external-loop mode: httpd.h) and its own
 * upstream client (upstream.h: keep-alive connections to each runtime, replies parsed by llhttp).
 * A client's connection stays with the loop that accepted it; its handler runs on that loop,
 * suspends the connection, and the same loop sends the request upstream right after the daemon's
 * turn, on a kept-alive connection when one is idle. Every upstream call on a transfer, and every
 * libmicrohttpd call on its connection, happens on its loop's thread. No request crosses threads
 * on its way:
 * a thread per request (the first design) cost more than the rest of a small request, and a
 * handoff between a listener thread and an upstream thread (the second) cost a context switch
 * and six system calls per request (docs/benchmarks.md).
 *
 * The life of a proxied request:
 *   1. gwp_start (the loop, in its daemon's turn): the proxy is made (two references: the MHD
 *      side and the loop), queued on the loop's own list, the connection suspended. With no
 *      ready replica yet it goes to a hold thread instead (rare: only while an endpoint is
 *      starting), which re-routes every 250 ms up to --hold-s and then queues it, or answers 503.
 *   2. the loop picks the untried candidate with the fewest requests outstanding from this
 *      gateway and POSTs to it with the replica secret and the request id. A refused connection,
 *      or a runtime 503 before any byte reached the client, moves on to the next candidate.
 *   3. bytes arrive (on_body): a 200 event stream resumes the client, whose content reader
 *      (the daemon's next turn) drains the buffer and suspends itself when it is empty; other
 *      replies are answered whole when the transfer ends.
 *   4. the client leaves (completion callback): the proxy's req is cleared and the loop poked; it
 *      removes the transfer, which closes the connection, and the runtime sees the disconnect
 *      and meters what it generated as cancelled.
 *   5. whoever is last of the two sides frees the proxy.
 * Limits: the buffer toward a slow client is bounded (PROXY_MAX_BUFFERED: the transfer is paused
 * and resumed when the client has drained half of it); every transfer has a deadline
 * (--stream-timeout-s); a quiet stream gets ": ping" comments so a departed client is noticed
 * on the next write. */
#include "gateway_proxy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "db.h"
#include "jsonx.h"
#include "lease.h"
#include "ratelimit.h"
#include "log.h"
#include "upstream.h"
#include "util.h"

/* Bytes buffered between the runtime and the client before the transfer is paused: enough for
 * thousands of SSE chunks, small enough that 10 000 slow streams fit in RAM. */
#define PROXY_MAX_BUFFERED (256 * 1024)
#define PROXY_COMPACT_AT (64 * 1024) /* read bytes dropped from the buffer's front past this */
/* Non-streaming replies larger than this are refused: the runtime's replies are a few KB. */
#define PROXY_MAX_REPLY (8 * 1024 * 1024)
#define PROXY_PING_MS 10000
#define GW_HOLD_POLL_MS 250
/* The longest a loop sleeps without looking at its transfers (pings, departed clients that
 * were not poked): short enough for a 10 s ping, long enough to cost nothing. */
#define GW_LOOP_TICK_MS 1000
#define GW_CONNECT_TIMEOUT_MS 3000
/* Connections this gateway process opens to one runtime, over all its loops, when
 * --replica-max-outstanding is 0: the runtime serves each connection with a thread and accepts
 * 256 at most (runtime/server.c), and its agent's probes need some. */
#define GW_REPLICA_CONNECTIONS 192
#define GW_PARKED_POLL_MS                                                                          \
    10 /* how often parked requests look for room at other loops' replicas                         \
        */

struct gw_loop;

struct proxy {
    pthread_mutex_t lock;
    int refs;              /* the MHD side and the loop (or the hold thread) */
    struct httpd_req *req; /* NULL once the client's request is gone */
    struct ctl_listener *lis;
    struct gw_loop *loop;
    struct proxy *next;   /* in the loop's inbox, then in its active list (loop thread only) */
    struct proxy *prev;   /* in the active list */
    struct up_xfer *xfer; /* while a transfer runs (loop thread only) */
    char headers[256];    /* the request's own headers to the runtime: secret, request id */
    int cand;             /* the candidate being tried */

    struct gw_route route; /* candidates; re-resolved while held */
    char account_id[24];
    int64_t account_num;
    int leased; /* a lease reservation to end (lease_end) when the transfer is over */
    int64_t tokens, tokens_per_min; /* charged to the account's tokens per minute; settled */
    /* A stream's usage event (stream_options.include_usage), read for settling its tokens (loop
     * thread only): the event being read, and the usage it carried (-1: none seen). */
    char ev[1024];
    size_t ev_len;
    int ev_skip; /* the event is longer than ev: not the usage event */
    int64_t stream_pt, stream_ct;
    int sent; /* some runtime may have received the request */
    char model[208];
    int64_t hold_until_ms;
    const char *path; /* the runtime route (static) */
    char request_id[64];
    char *body;
    size_t body_len;
    long timeout_s;

    long status;
    char content_type[128];
    char fingerprint[128]; /* the runtime's OpenRunPod-Fingerprint header, passed through */
    int headers_done;      /* status and first bytes known */
    int streaming;         /* a 200 event stream: answered incrementally */
    int finished;          /* transfer over */
    int failed;            /* transport error (error says which) */
    int swallow;           /* a runtime 503 that another candidate may still fix: not relayed */
    int paused;            /* the transfer waits for the client to drain the buffer */
    char error[256];
    unsigned err_status; /* the gateway's own answer (after holding), when non-zero */
    char err_code[40], err_msg[200];
    struct buf data; /* bytes not yet sent to the client start at data_off */
    size_t data_off;
    int64_t last_data_ms;
};

struct gw_loop {
    pthread_t th;
    struct httpd_server *srv; /* the gateway listener: this loop drives its daemon idx */
    int idx;
    int mhd_fd;        /* the daemon's epoll fd, watched here */
    int64_t mhd_at_ms; /* when the daemon wants its next turn regardless of its fd; -1: never */
    int mhd_due;       /* another thread resumed a connection of this loop (under mu) */
    int resumed;       /* this loop resumed a connection: the daemon's turn is due (loop only) */
    struct proxy *local, *local_tail; /* started by handlers in the daemon's turn (loop only) */
    int quit;                         /* gwp_loops_stop: end the loop (under mu) */
    struct up_loop *up;               /* the connections to runtimes (loop only) */
    int epfd;                         /* the daemon's fd, evfd and the upstream connections */
    int evfd;                         /* written to wake the loop (new work, a poke) */
    pthread_mutex_t mu;               /* guards inbox and poke */
    struct proxy *inbox;              /* newest first; started in arrival order */
    int poke;              /* a client left or drained a paused stream: look at the transfers */
    int sleeping;          /* the loop is in (or entering) epoll_wait: new work must write evfd */
    struct proxy *active;  /* loop thread only */
    int64_t last_sweep_ms; /* loop thread only */
    /* Requests waiting because every replica they may use has --replica-max-outstanding
     * requests from this gateway (loop thread only; in arrival order, linked by next). */
    struct proxy *parked, *parked_tail;
    int unpark_due; /* a transfer ended here: a parked request may go now */
};

static struct gw_loop *gw_loops;
static int gw_nloops;
static _Thread_local struct gw_loop *gw_self; /* the loop this thread runs, if any */

/* Freed proxies kept for reuse by the thread that freed them (mostly a loop): a proxy is several
 * KiB (util_spares). */
static struct util_spares gw_spare_proxies = UTIL_SPARES_INIT(1024);

static void proxy_unref(struct proxy *p)
{
    pthread_mutex_lock(&p->lock);
    int left = --p->refs;
    pthread_mutex_unlock(&p->lock);
    if (left) return;
    pthread_mutex_destroy(&p->lock);
    buf_free(&p->data);
    free(p->body);
    util_spare_give(&gw_spare_proxies, p);
}

/* Called with lp->mu held, after adding work: wakes the loop if it sleeps (a busy loop finds the
 * work on its next turn, and a write per request would cost a system call and an event). */
static void loop_wake(struct gw_loop *lp)
{
    if (!lp->sleeping) return;
    lp->sleeping = 0;
    uint64_t one = 1;
    if (write(lp->evfd, &one, sizeof one) < 0) { /* EAGAIN: a wake-up is pending anyway */
    }
}

/* Asks p's loop to look at its transfers soon (thread-safe). */
static void poke_loop(struct gw_loop *lp)
{
    pthread_mutex_lock(&lp->mu);
    lp->poke = 1;
    loop_wake(lp);
    pthread_mutex_unlock(&lp->mu);
}

/* MHD side lets go (completion callback): the client is gone or was answered. */
static void proxy_state_free(void *state)
{
    struct proxy *p = state;
    pthread_mutex_lock(&p->lock);
    p->req = NULL;
    struct gw_loop *lp = p->finished ? NULL : p->loop;
    pthread_mutex_unlock(&p->lock);
    if (lp) poke_loop(lp); /* cancel the transfer now, not at the next tick */
    proxy_unref(p);
}

/* Called with p->lock held. The connection's daemon belongs to p's loop, which must run it
 * next: told directly when it is this thread, woken otherwise (a hold or explain thread). */
static void wake_client(struct proxy *p)
{
    if (!p->req) return;
    httpd_resume(p->req);
    struct gw_loop *lp = p->loop;
    if (gw_self == lp) {
        lp->resumed = 1;
        return;
    }
    pthread_mutex_lock(&lp->mu);
    lp->mhd_due = 1;
    loop_wake(lp);
    pthread_mutex_unlock(&lp->mu);
}

/* ---- least-outstanding routing ----
 *
 * Requests outstanding from this gateway per replica. A fixed open-addressed table: a slot whose
 * count is 0 carries no information and may be reused. */
#define GW_LOAD_SLOTS 4096
#define GW_LOAD_PROBES 32
static struct {
    char id[40];
    int n;
} gw_load[GW_LOAD_SLOTS];
static pthread_mutex_t gw_load_lock = PTHREAD_MUTEX_INITIALIZER;

/* Adds d to id's count and returns the new count (d = 0 reads it). */
static int load_add(const char *id, int d)
{
    uint32_t h = 2166136261u;
    for (const char *c = id; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    pthread_mutex_lock(&gw_load_lock);
    int slot = -1, free_slot = -1;
    for (int i = 0; i < GW_LOAD_PROBES && slot < 0; i++) {
        int k = (int)((h + (uint32_t)i) % GW_LOAD_SLOTS);
        if (!strcmp(gw_load[k].id, id))
            slot = k;
        else if (gw_load[k].n == 0 && free_slot < 0)
            free_slot = k;
    }
    int n = 0;
    if (slot < 0 && d > 0 && free_slot >= 0) {
        slot = free_slot;
        snprintf(gw_load[slot].id, sizeof gw_load[slot].id, "%s", id);
        gw_load[slot].n = 0;
    }
    if (slot >= 0) {
        gw_load[slot].n += d;
        if (gw_load[slot].n < 0) gw_load[slot].n = 0;
        n = gw_load[slot].n;
    }
    pthread_mutex_unlock(&gw_load_lock);
    return n;
}

/* The untried candidate with the fewest outstanding requests; ties are broken at random (the
 * candidate list comes from a cache and keeps its order for a second, so "first" would send every
 * request of that second to one replica). -1 when none is left; *outstanding: its count. */
static int pick_candidate(struct gw_route *rt, int *outstanding)
{
    static _Thread_local uint32_t seed;
    if (!seed) seed = (uint32_t)util_now_ms() ^ (uint32_t)(uintptr_t)&seed;
    seed ^= seed << 13; /* xorshift32: cheap, and good enough to spread ties */
    seed ^= seed >> 17;
    seed ^= seed << 5;
    int best = -1, best_n = 0;
    for (int k = 0; k < rt->ncand; k++) {
        int i = (int)((seed + (uint32_t)k) % (uint32_t)rt->ncand);
        if (rt->cand[i].tried) continue;
        int n = load_add(rt->cand[i].replica_id, 0);
        if (best < 0 || n < best_n) {
            best = i;
            best_n = n;
        }
    }
    *outstanding = best_n;
    return best;
}

static int untried_left(const struct gw_route *rt)
{
    for (int i = 0; i < rt->ncand; i++)
        if (!rt->cand[i].tried) return 1;
    return 0;
}

/* ---- the upstream client's callbacks (loop thread) ---- */

/* The reply's status and headers are in. */
static int on_headers(void *ud, int status)
{
    struct proxy *p = ud;
    pthread_mutex_lock(&p->lock);
    /* A busy or dying runtime says 503: another replica may serve it, and the client has seen
     * nothing yet. */
    if (status == 503 && untried_left(&p->route)) {
        p->swallow = 1;
    } else {
        p->status = status;
        if (!p->content_type[0])
            util_strlcpy(p->content_type, "application/json", sizeof p->content_type);
        p->streaming = p->status == 200 && strstr(p->content_type, "text/event-stream") != NULL;
        p->headers_done = 1;
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* Keeps the reply headers that matter: its content type, and the runtime's fingerprint, which
 * is passed through. */
static void on_header(void *ud, const char *name, size_t nlen, const char *v, size_t vn)
{
    struct proxy *p = ud;
    char *to;
    size_t cap;
    if (nlen == 12 && !strncasecmp(name, "content-type", 12)) {
        to = p->content_type;
        cap = sizeof p->content_type;
    } else if (nlen == 22 && !strncasecmp(name, "openrunpod-fingerprint", 22)) {
        to = p->fingerprint;
        cap = sizeof p->fingerprint;
    } else {
        return;
    }
    if (vn >= cap) return;
    pthread_mutex_lock(&p->lock);
    memcpy(to, v, vn);
    to[vn] = '\0';
    pthread_mutex_unlock(&p->lock);
}

/* The prompt and completion tokens of the OpenAI-shaped reply or chunk in s[0..n), when it has a
 * `usage` object; else *pt and *ct are left as they are. */
static void usage_of(const char *s, size_t n, int64_t *pt, int64_t *ct)
{
    json_t *j = json_loadb(s, n, 0, NULL);
    json_t *u = json_object_get(j, "usage");
    json_t *jp = json_object_get(u, "prompt_tokens"), *jc = json_object_get(u, "completion_tokens");
    if (json_is_integer(jp) && json_is_integer(jc) && json_integer_value(jp) >= 0 &&
        json_integer_value(jc) >= 0) {
        *pt = json_integer_value(jp);
        *ct = json_integer_value(jc);
    }
    json_decref(j);
}

/* Reads a stream's events for its usage, which the runtime sends in an event of its own when
 * the client asked (stream_options.include_usage). Loop thread. */
static void scan_usage(struct proxy *p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n' && p->ev_len > 0 && p->ev[p->ev_len - 1] == '\n') {
            if (!p->ev_skip && p->ev_len > 6 && !memcmp(p->ev, "data: ", 6) &&
                (memmem(p->ev, p->ev_len, "\"usage\":{", 9) ||
                 memmem(p->ev, p->ev_len, "\"usage\": {", 10))) {
                usage_of(p->ev + 6, p->ev_len - 6, &p->stream_pt, &p->stream_ct);
            }
            p->ev_len = 0;
            p->ev_skip = 0;
        } else if (p->ev_len < sizeof p->ev) {
            p->ev[p->ev_len++] = s[i];
        } else {
            p->ev_skip = 1;
        }
    }
}

static int on_body(void *ud, const char *ptr, size_t n)
{
    struct proxy *p = ud;
    pthread_mutex_lock(&p->lock);
    if (p->swallow) {
        pthread_mutex_unlock(&p->lock);
        return 0;
    }
    int ok = p->req != NULL && (p->streaming || p->data.len + n <= PROXY_MAX_REPLY);
    if (ok) {
        /* What the client has read is dropped from the front, so a long stream read steadily
         * holds only what is unread, not everything it ever carried. */
        if (p->data_off > 0 && (p->data_off == p->data.len || p->data_off >= PROXY_COMPACT_AT)) {
            memmove(p->data.data, p->data.data + p->data_off, p->data.len - p->data_off);
            p->data.len -= p->data_off;
            p->data_off = 0;
        }
        ok = buf_append(&p->data, ptr, n) == 0;
        p->last_data_ms = util_now_ms();
        if (p->streaming && p->tokens > 0) scan_usage(p, ptr, n);
        if (p->streaming) wake_client(p);
        /* A slow client: stop reading from the runtime rather than buffer without bound (the
         * sweep resumes it when the client has drained half). */
        if (ok && p->streaming && !p->paused && p->data.len - p->data_off > PROXY_MAX_BUFFERED) {
            p->paused = 1;
            up_pause(p->loop->up, p->xfer, 1);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return ok ? 0 : -1; /* refused: the transfer ends and the runtime sees the disconnect */
}

static void on_done(void *ud, enum up_rc rc, const char *why);

static const struct up_handler gw_up_handler = {
    .on_header = on_header,
    .on_headers = on_headers,
    .on_body = on_body,
    .on_done = on_done,
};

/* ---- the loop ---- */

static void active_remove(struct gw_loop *lp, struct proxy *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        lp->active = p->next;
    if (p->next) p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

/* What the transfer says of the request's use: 1 when no runtime received it or the runtime
 * refused it whole (4xx, or 503: its queue is full); else 0, with *pt and *ct its prompt and
 * completion tokens when a non-streaming reply carried usage, else -1. */
static int reply_usage(struct proxy *p, int64_t *pt, int64_t *ct)
{
    *pt = *ct = -1;
    pthread_mutex_lock(&p->lock);
    int not_sent = !p->sent ||
                   (p->headers_done && ((p->status >= 400 && p->status < 500) || p->status == 503));
    if (!not_sent && p->headers_done && !p->streaming && p->status == 200 && !p->failed) {
        usage_of(p->data.data, p->data.len, pt, ct);
    }
    pthread_mutex_unlock(&p->lock);
    return not_sent;
}

/* Ends the request's lease reservation: returned whole when it was not sent, reduced to the
 * actual cost when the reply carried usage; otherwise it stays reserved until the usage event
 * arrives (lease.h). */
static void lease_return(struct proxy *p, int not_sent, int64_t pt, int64_t ct)
{
    int64_t actual = pt >= 0 ? lease_cost(pt, ct, p->route.in_price, p->route.out_price) : -1;
    lease_end(p->lis->ctl->lease, p->account_num, p->request_id, actual, not_sent);
}

/* Settles the request's tokens per minute: all of them come back when it was not sent, the
 * unused ones when the reply (or a stream's usage event) carried usage; otherwise it keeps its
 * whole charge. Loop thread. */
static void tokens_settle(struct proxy *p, int not_sent, int64_t pt, int64_t ct)
{
    if (pt < 0 && p->stream_pt >= 0) {
        pt = p->stream_pt;
        ct = p->stream_ct;
    }
    int64_t back = not_sent ? p->tokens : pt >= 0 ? p->tokens - pt - ct : 0;
    if (back > 0)
        rl_refund(p->lis->ctl->rl, -p->account_num, util_now_ms() * 1000, p->tokens_per_min, back);
}

/* The transfer is over for good (loop thread, or the hold thread before any transfer): settle,
 * tell the client, let go. rc, why: the last transfer's result. */
static void finish(struct proxy *p, enum up_rc rc, const char *why)
{
    if (p->leased || p->tokens > 0) {
        int64_t pt, ct;
        int not_sent = reply_usage(p, &pt, &ct);
        if (p->leased) lease_return(p, not_sent, pt, ct);
        if (p->tokens > 0) tokens_settle(p, not_sent, pt, ct);
    }
    pthread_mutex_lock(&p->lock);
    if (rc != UP_OK && !p->err_status) {
        p->failed = 1;
        util_strlcpy(p->error, why && why[0] ? why : up_strerror(rc), sizeof p->error);
        if (p->req)
            log_warn("request %s: replica %s: %s", p->request_id,
                     p->route.ncand ? p->route.cand[p->cand].url : "-", p->error);
    }
    p->finished = 1;
    wake_client(p);
    pthread_mutex_unlock(&p->lock);
    proxy_unref(p);
}

/* Appends p to the list (head, tail) linked by next: a loop's parked or local requests. */
static void proxy_append(struct proxy **head, struct proxy **tail, struct proxy *p)
{
    p->next = NULL;
    if (*tail)
        (*tail)->next = p;
    else
        *head = p;
    *tail = p;
}

/* Every replica p may use is at --replica-max-outstanding: p waits, in order, until one has
 * room, or answers 503 once its hold deadline (arrival + --hold-s) passed. */
static void park(struct gw_loop *lp, struct proxy *p)
{
    if (util_now_ms() >= p->hold_until_ms) {
        pthread_mutex_lock(&p->lock);
        p->err_status = 503;
        snprintf(p->err_code, sizeof p->err_code, "endpoint_busy");
        snprintf(p->err_msg, sizeof p->err_msg,
                 "every replica of endpoint '%.100s' is busy; retry shortly", p->model);
        pthread_mutex_unlock(&p->lock);
        finish(p, UP_OK, "");
        return;
    }
    proxy_append(&lp->parked, &lp->parked_tail, p);
}

static void attempt(struct gw_loop *lp, struct proxy *p, enum up_rc last, const char *why);

/* Tries every parked request again, in order (those still without room park again). */
static void unpark(struct gw_loop *lp)
{
    struct proxy *list = lp->parked;
    lp->parked = lp->parked_tail = NULL;
    lp->unpark_due = 0;
    while (list) {
        struct proxy *nx = list->next;
        list->next = NULL;
        attempt(lp, list, UP_CONNECT, "no replica could be reached");
        list = nx;
    }
}

/* Starts a transfer to the best untried candidate; finishes the proxy when none is left (with
 * the last candidate's failure: last, why). */
static void attempt(struct gw_loop *lp, struct proxy *p, enum up_rc last, const char *why)
{
    pthread_mutex_lock(&p->lock);
    int gone = p->req == NULL;
    pthread_mutex_unlock(&p->lock);
    if (gone) { /* the client left before a runtime was asked: nothing to cancel */
        finish(p, UP_ABORTED, "the client left");
        return;
    }
    int n = 0;
    int i = pick_candidate(&p->route, &n);
    int64_t cap = p->lis->ctl->cfg.replica_max_outstanding;
    if (i >= 0 && cap > 0 && n >= cap) {
        park(lp, p);
        return;
    }
    if (i < 0) {
        finish(p, last, why);
        return;
    }
    struct gw_candidate *cd = &p->route.cand[i];
    cd->tried = 1;
    p->cand = i;
    char *h = p->headers, *end = p->headers + sizeof p->headers;
    static const char auth_p[] = "Authorization: Bearer ", rid_p[] = "\r\nX-ORP-Request-Id: ";
    memcpy(h, auth_p, sizeof auth_p - 1);
    h += sizeof auth_p - 1;
    /* The secret gets what the request id's line leaves of the buffer. */
    size_t id_line = (sizeof rid_p - 1) + sizeof p->request_id + sizeof "\r\n";
    h += util_strlcpy(h, cd->secret, (size_t)(end - h) - id_line);
    memcpy(h, rid_p, sizeof rid_p - 1);
    h += sizeof rid_p - 1;
    h += util_strlcpy(h, p->request_id, sizeof p->request_id);
    memcpy(h, "\r\n", 3);
    p->content_type[0] = p->fingerprint[0] = '\0';
    struct up_request rq = {
        .base_url = cd->url,
        .path = p->path,
        .headers = p->headers,
        .body = p->body,
        .body_len = p->body_len,
        .timeout_ms = p->timeout_s * 1000,
    };
    load_add(cd->replica_id, 1);
    p->next = lp->active;
    p->prev = NULL;
    if (lp->active) lp->active->prev = p;
    lp->active = p;
    p->xfer = up_start(lp->up, &rq, &gw_up_handler, p);
    if (!p->xfer) { /* an address that is no URL: as if it refused */
        load_add(cd->replica_id, -1);
        active_remove(lp, p);
        log_warn("request %s: replica %s has no usable address", p->request_id, cd->url);
        attempt(lp, p, UP_CONNECT, "the replica's address is not usable");
    }
}

/* A detached thread for the rare paths that block (a held request, a cut stream's reason): 0 or
 * an errno. Small stacks: they only query and format. */
static int spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t th;
    int err = pthread_create(&th, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return err;
}

/* ---- a stream cut mid-way ----
 *
 * When a runtime's stream breaks after the client has seen events (its endpoint was stopped
 * because the owner ran out of credit or reached the spend cap, or was stopped or deleted, or the
 * runtime died, or the stream's deadline passed), the client gets one last SSE event saying why,
 * in OpenAI's error shape, and the stream ends cleanly rather than with a broken connection.
 * Why it broke is read from the endpoint's state, which the stop wrote before the runtime was
 * told to stop; the query blocks, so it runs on a thread of its own (a rare path). */
struct cut {
    struct proxy *p;
    char error[128];
    int timed_out;
};

static void *explain_thread(void *arg)
{
    struct cut *ct = arg;
    struct proxy *p = ct->p;
    char msg[400], code[40] = "stream_interrupted";
    const char *type = "server_error";
    if (ct->timed_out)
        snprintf(msg, sizeof msg, "the stream reached its deadline of %ld s and was ended",
                 p->timeout_s);
    else
        snprintf(msg, sizeof msg, "the replica ended the stream early (%s); retry the request",
                 ct->error);
    PGconn *c = ct->timed_out ? NULL : db_acquire(p->lis->pool);
    if (c) {
        const char *prm[] = {p->route.endpoint_id};
        PGresult *r;
        if (db_exec(c, "SELECT state, state_reason FROM endpoints WHERE id = $1::uuid", 1, prm, &r,
                    NULL) == DB_ROWS) {
            if (!strcmp(PQgetvalue(r, 0, 0), "stopped")) {
                snprintf(msg, sizeof msg, "endpoint '%.100s' was stopped during the stream: %.250s",
                         p->model, PQgetvalue(r, 0, 1));
                snprintf(code, sizeof code, "endpoint_stopped");
                /* Out of credit and the spend cap are a payment matter, like a 402. */
                if (strstr(PQgetvalue(r, 0, 1), "credit") || strstr(PQgetvalue(r, 0, 1), "cap"))
                    type = "insufficient_quota";
            } else if (!strcmp(PQgetvalue(r, 0, 0), "deleted")) {
                snprintf(msg, sizeof msg, "endpoint '%.100s' was deleted during the stream",
                         p->model);
                snprintf(code, sizeof code, "endpoint_deleted");
            }
            PQclear(r);
        }
        db_release(p->lis->pool, c);
    }
    json_t *body = jsonx_error_body(msg, type, NULL, code);
    char *text = jsonx_dump(body);
    json_decref(body);
    pthread_mutex_lock(&p->lock);
    if (text) {
        buf_append(&p->data, "data: ", 6);
        buf_append(&p->data, text, strlen(text));
        buf_append(&p->data, "\n\n", 2);
    }
    pthread_mutex_unlock(&p->lock);
    free(text);
    log_warn("request %s: stream cut mid-way: %s", p->request_id, msg);
    free(ct);
    finish(p, UP_OK, ""); /* the stream ends normally after that event */
    return NULL;
}

/* 0 when a thread took over p to end it with a final event; -1 to finish it as it is. */
static int explain_cut(struct proxy *p, enum up_rc rc, const char *why)
{
    struct cut *ct = calloc(1, sizeof *ct);
    if (!ct) return -1;
    ct->p = p;
    ct->timed_out = rc == UP_TIMEOUT;
    util_strlcpy(ct->error, why && why[0] ? why : up_strerror(rc), sizeof ct->error);
    int err = spawn_detached(explain_thread, ct);
    if (err) free(ct);
    return err ? -1 : 0;
}

/* A transfer ended (or was cancelled: rc UP_ABORTED, after up_cancel). Retries another
 * candidate when nothing reached the client and the runtime never saw the request or refused it
 * whole. */
static void transfer_done(struct gw_loop *lp, struct proxy *p, enum up_rc rc, const char *why)
{
    const char *url = p->route.cand[p->cand].url;
    load_add(p->route.cand[p->cand].replica_id, -1);
    lp->unpark_due = 1;
    active_remove(lp, p);
    pthread_mutex_lock(&p->lock);
    if (rc != UP_CONNECT && !p->swallow) p->sent = 1; /* it may have run */
    int retry =
        p->req && !p->headers_done && untried_left(&p->route) && (p->swallow || rc == UP_CONNECT);
    if (retry) {
        log_warn("request %s: replica %s %s; trying another", p->request_id, url,
                 p->swallow ? "is busy (503)" : "refused the connection");
        p->swallow = 0;
        p->data.len = p->data_off = 0;
    }
    p->xfer = NULL;
    p->paused = 0;
    int left = p->req == NULL;
    pthread_mutex_unlock(&p->lock);
    /* Found by the sweep, or by on_body refusing bytes for nobody: either way the connection
     * is closed now, and the runtime stops and meters what it made. */
    if (left && rc != UP_OK)
        log_info("request %s: the client left; cancelling it upstream", p->request_id);
    if (retry) {
        attempt(lp, p, rc, why);
        return;
    }
    pthread_mutex_lock(&p->lock);
    int cut = rc != UP_OK && p->streaming && p->req != NULL;
    pthread_mutex_unlock(&p->lock);
    if (cut && explain_cut(p, rc, why) == 0) return;
    finish(p, rc, why);
}

/* The upstream client's end of a transfer (up_reap). */
static void on_done(void *ud, enum up_rc rc, const char *why)
{
    struct proxy *p = ud;
    transfer_done(p->loop, p, rc, why);
}

/* Looks at every transfer: cancels those whose client left, unpauses those whose client drained
 * the buffer, pings quiet streams. */
static void sweep(struct gw_loop *lp)
{
    int64_t now = util_now_ms();
    lp->last_sweep_ms = now;
    for (struct proxy *p = lp->active, *next; p; p = next) {
        next = p->next;
        pthread_mutex_lock(&p->lock);
        int gone = p->req == NULL;
        int unpause = !gone && p->paused && p->data.len - p->data_off <= PROXY_MAX_BUFFERED / 2;
        if (!gone && p->streaming && now - p->last_data_ms > PROXY_PING_MS) {
            buf_append(&p->data, ": ping\n\n", 8);
            p->last_data_ms = now;
            wake_client(p);
        }
        if (unpause) p->paused = 0;
        pthread_mutex_unlock(&p->lock);
        if (gone) {
            up_cancel(lp->up, p->xfer);
            transfer_done(lp, p, UP_ABORTED, "the client left");
        } else if (unpause) {
            up_pause(lp->up, p->xfer, 0);
        }
    }
    up_sweep(lp->up, now); /* deadlines; idle connections */
}

#define GW_LOOP_EVENTS 256 /* events taken per epoll_wait: more simply wait for the next call */

/* Starts the requests that handlers queued on this loop during the daemon's turn: each is sent
 * at once on an idle connection. */
static void start_local(struct gw_loop *lp)
{
    struct proxy *p = lp->local;
    lp->local = lp->local_tail = NULL;
    if (!p) return;
    while (p) {
        struct proxy *nx = p->next;
        p->next = NULL;
        attempt(lp, p, UP_CONNECT, "no replica could be reached");
        p = nx;
    }
    up_reap(lp->up); /* those that could not start at all */
}

/* The daemon's turn: accepts, reads requests, runs handlers, writes replies (httpd.h). */
static void run_daemon(struct gw_loop *lp)
{
    lp->resumed = 0;
    int64_t t = httpd_loop_run(lp->srv, lp->idx);
    lp->mhd_at_ms = t < 0 ? -1 : util_now_ms() + t;
    start_local(lp);
}

static void *loop_main(void *arg)
{
    struct gw_loop *lp = arg;
    gw_self = lp;
    log_set_context("gateway-loop");
    struct epoll_event evs[GW_LOOP_EVENTS];
    for (;;) {
        int64_t now = util_now_ms();
        int64_t wait = GW_LOOP_TICK_MS - (now - lp->last_sweep_ms);
        if (lp->mhd_at_ms >= 0 && lp->mhd_at_ms - now < wait) wait = lp->mhd_at_ms - now;
        /* Parked requests: room may open at another loop's replica too; look again soon. */
        if (lp->parked && wait > GW_PARKED_POLL_MS) wait = GW_PARKED_POLL_MS;
        if (lp->resumed || wait < 0) wait = 0;
        pthread_mutex_lock(&lp->mu);
        if (lp->quit) {
            pthread_mutex_unlock(&lp->mu);
            break;
        }
        if (lp->inbox || lp->poke || lp->mhd_due) wait = 0;
        lp->sleeping = wait > 0;
        pthread_mutex_unlock(&lp->mu);
        int n = epoll_wait(lp->epfd, evs, GW_LOOP_EVENTS, (int)wait);
        if (wait > 0) {
            pthread_mutex_lock(&lp->mu);
            lp->sleeping = 0;
            pthread_mutex_unlock(&lp->mu);
        }
        int daemon_due = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == lp->evfd) {
                uint64_t v;
                if (read(lp->evfd, &v, sizeof v) < 0) { /* EAGAIN: another read took it */
                }
                continue;
            }
            if (evs[i].data.fd == lp->mhd_fd) {
                daemon_due = 1;
                continue;
            }
            up_event(lp->up, evs[i].data.fd, evs[i].events);
        }
        up_reap(lp->up);

        pthread_mutex_lock(&lp->mu);
        struct proxy *in = lp->inbox;
        lp->inbox = NULL;
        int poke = lp->poke;
        lp->poke = 0;
        if (lp->mhd_due) daemon_due = 1;
        lp->mhd_due = 0;
        pthread_mutex_unlock(&lp->mu);
        /* The inbox (requests that were held: hold_thread) is newest first: start them oldest
         * first. */
        struct proxy *rev = NULL;
        while (in) {
            struct proxy *nx = in->next;
            in->next = rev;
            rev = in;
            in = nx;
        }
        while (rev) {
            struct proxy *nx = rev->next;
            attempt(lp, rev, UP_CONNECT, "no replica could be reached");
            rev = nx;
        }
        if (daemon_due || lp->resumed || (lp->mhd_at_ms >= 0 && util_now_ms() >= lp->mhd_at_ms))
            run_daemon(lp);
        if (lp->parked && (lp->unpark_due || n == 0)) unpark(lp);
        if (poke || util_now_ms() - lp->last_sweep_ms >= GW_LOOP_TICK_MS) {
            sweep(lp);
            up_reap(lp->up); /* transfers past their deadline */
        }
    }
    return NULL;
}

int gwp_loops_start(struct ctl_listener *l, struct httpd_server *srv)
{
    int n = httpd_loops(srv);
    if (n < 1 || gw_loops) return -1;
    gw_loops = calloc((size_t)n, sizeof *gw_loops);
    if (!gw_loops) return -1;
    for (int i = 0; i < n; i++) {
        struct gw_loop *lp = &gw_loops[i];
        pthread_mutex_init(&lp->mu, NULL);
        lp->srv = srv;
        lp->idx = i;
        lp->mhd_at_ms = -1;
        lp->mhd_fd = httpd_loop_fd(srv, i);
        lp->epfd = epoll_create1(EPOLL_CLOEXEC);
        lp->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        /* With --replica-max-outstanding the gateway itself keeps requests waiting, in order;
         * without it, the client's per-address limit bounds the connections (and queues). */
        int64_t cap = l->ctl->cfg.replica_max_outstanding;
        long per_host = cap > 0 ? (long)cap : GW_REPLICA_CONNECTIONS / n;
        lp->up = lp->epfd < 0 ? NULL
                              : up_loop_new(lp->epfd, per_host > 0 ? (int)per_host : 1,
                                            GW_CONNECT_TIMEOUT_MS);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = lp->evfd};
        struct epoll_event mev = {.events = EPOLLIN, .data.fd = lp->mhd_fd};
        if (!lp->up || lp->epfd < 0 || lp->evfd < 0 || lp->mhd_fd < 0 ||
            epoll_ctl(lp->epfd, EPOLL_CTL_ADD, lp->evfd, &ev) != 0 ||
            epoll_ctl(lp->epfd, EPOLL_CTL_ADD, lp->mhd_fd, &mev) != 0) {
            log_error("gateway: cannot set up loop %d", i);
            return -1; /* the caller stops: what was made here lives until the process ends */
        }
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&gw_loops[i].th, NULL, loop_main, &gw_loops[i]) != 0) {
            log_error("gateway: cannot start loop %d", i);
            gw_nloops = i;
            gwp_loops_stop();
            return -1;
        }
        gw_nloops = i + 1;
    }
    return 0;
}

void gwp_loops_stop(void)
{
    for (int i = 0; i < gw_nloops; i++) {
        struct gw_loop *lp = &gw_loops[i];
        pthread_mutex_lock(&lp->mu);
        lp->quit = 1;
        lp->sleeping = 1; /* wake it whether or not it is in epoll_wait now */
        loop_wake(lp);
        pthread_mutex_unlock(&lp->mu);
    }
    for (int i = 0; i < gw_nloops; i++)
        pthread_join(gw_loops[i].th, NULL);
    gw_nloops = 0;
}

static void submit(struct proxy *p)
{
    struct gw_loop *lp = p->loop;
    pthread_mutex_lock(&lp->mu);
    p->next = lp->inbox;
    lp->inbox = p;
    loop_wake(lp);
    pthread_mutex_unlock(&lp->mu);
}

/* While the endpoint has no ready replica: look again every GW_HOLD_POLL_MS (a pooled
 * connection only for the query) until the hold deadline or the client leaves; then queue the
 * request to its loop, or answer 503. A thread per held request: holding is rare (an endpoint
 * starting) and the query blocks. */
static void *hold_thread(void *arg)
{
    struct proxy *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        int gone = p->req == NULL;
        pthread_mutex_unlock(&p->lock);
        if (gone || util_now_ms() >= p->hold_until_ms) break;
        util_sleep_ms(GW_HOLD_POLL_MS);
        struct gw_route rt;
        enum gw_route_rc rc = gw_route_db(p->lis, p->account_id, p->model, &rt);
        if (rc == ROUTE_OK && rt.ncand > 0) {
            p->route = rt;
            submit(p);
            return NULL;
        }
        if (rc == ROUTE_NOT_FOUND || rc == ROUTE_STOPPED) break; /* deleted meanwhile */
    }
    pthread_mutex_lock(&p->lock);
    p->err_status = 503;
    snprintf(p->err_code, sizeof p->err_code, "endpoint_not_ready");
    snprintf(p->err_msg, sizeof p->err_msg, "endpoint '%.100s' has no ready replica; retry shortly",
             p->model);
    pthread_mutex_unlock(&p->lock);
    finish(p, UP_OK, "");
    return NULL;
}

int gwp_start(struct httpd_req *req, const struct gwp_request *r)
{
    struct ctl_listener *l = req->app;
    struct gw_loop *self = gw_self;
    if (!self) return -1; /* only a gateway loop runs this listener's handlers */
    struct proxy *p = util_spare_take(&gw_spare_proxies, sizeof *p);
    if (!p) return -1;
    pthread_mutex_init(&p->lock, NULL);
    p->refs = 2;
    p->req = req;
    p->lis = l;
    p->route = *r->route;
    p->path = r->path;
    util_strlcpy(p->account_id, r->account_id, sizeof p->account_id);
    p->account_num = r->account_num;
    util_strlcpy(p->model, r->model, sizeof p->model);
    util_strlcpy(p->request_id, r->request_id, sizeof p->request_id);
    p->leased = r->leased;
    p->tokens = r->tokens;
    p->tokens_per_min = r->tokens_per_min;
    p->stream_pt = p->stream_ct = -1;
    /* The body goes to the runtime as it came: the proxy, which may outlive the request, takes
     * the request's buffer (given back if it cannot start). */
    struct buf taken = req->body;
    p->body = taken.data;
    p->body_len = taken.len;
    req->body = (struct buf){0};
    p->hold_until_ms = util_now_ms() + l->ctl->cfg.hold_s * 1000;
    p->timeout_s = l->ctl->cfg.stream_timeout_s;
    p->last_data_ms = util_now_ms();
    p->loop = self; /* the loop whose daemon holds the connection */

    /* The lock is held until the connection is suspended, so that the loop cannot resume it
     * before. */
    pthread_mutex_lock(&p->lock);
    if (p->route.ncand == 0) {
        if (spawn_detached(hold_thread, p) != 0) {
            pthread_mutex_unlock(&p->lock);
            pthread_mutex_destroy(&p->lock);
            req->body = taken;
            free(p);
            return -1;
        }
    } else { /* started right after the daemon's turn (start_local) */
        proxy_append(&self->local, &self->local_tail, p);
    }
    req->state = p;
    req->state_free = proxy_state_free;
    httpd_suspend(req);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* Content reader for a streaming reply: never returns 0 without suspending first (a reader
 * that returns 0 makes libmicrohttpd poll it in a busy loop). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct proxy *p = cls;
    pthread_mutex_lock(&p->lock);
    ssize_t n;
    int poke = 0;
    size_t avail = p->data.len - p->data_off;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(out, p->data.data + p->data_off, (size_t)n);
        p->data_off += (size_t)n;
        poke = p->paused && p->data.len - p->data_off <= PROXY_MAX_BUFFERED / 2;
    } else if (p->finished || !p->req || httpd_stopping(p->req->srv)) {
        n = p->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        httpd_suspend(p->req);
        n = 0;
    }
    pthread_mutex_unlock(&p->lock);
    if (poke) poke_loop(p->loop);
    return n;
}

void gwp_respond(struct httpd_req *req)
{
    struct proxy *p = req->state;
    pthread_mutex_lock(&p->lock);
    int ready = p->finished || (p->headers_done && p->streaming);
    if (!ready && !httpd_stopping(req->srv)) {
        httpd_suspend(req); /* woken early: wait for more */
        pthread_mutex_unlock(&p->lock);
        return;
    }
    if (p->err_status) {
        unsigned st = p->err_status;
        char code[40], msg[200];
        snprintf(code, sizeof code, "%s", p->err_code);
        snprintf(msg, sizeof msg, "%s", p->err_msg);
        pthread_mutex_unlock(&p->lock);
        req->retry_after = 5;
        httpd_error(req, st, code, "model", "%s", msg);
        return;
    }
    if (!ready || (p->failed && !p->headers_done)) {
        pthread_mutex_unlock(&p->lock);
        req->retry_after = 2;
        httpd_error(req, 502, "replica_unavailable", NULL,
                    "the endpoint's replica did not answer; retry shortly");
        return;
    }
    char fp[sizeof p->fingerprint];
    util_strlcpy(fp, p->fingerprint, sizeof fp);
    struct MHD_Response *r;
    long status = 200;
    if (p->streaming) {
        pthread_mutex_unlock(&p->lock);
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, p, NULL);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
    } else {
        status = p->status ? p->status : 502;
        char ct[128];
        util_strlcpy(ct, p->content_type, sizeof ct);
        /* The transfer is over: the reply's buffer is handed to libmicrohttpd, not copied. */
        size_t n = p->data.len - p->data_off;
        char *d = p->data.data;
        if (p->data_off == 0 && d) {
            p->data = (struct buf){0};
            r = MHD_create_response_from_buffer_with_free_callback(n, d, free);
            if (!r) free(d);
        } else {
            r = MHD_create_response_from_buffer(n, d ? d + p->data_off : "", MHD_RESPMEM_MUST_COPY);
        }
        pthread_mutex_unlock(&p->lock);
        if (!r) {
            httpd_error(req, 500, "internal_error", NULL, "out of memory");
            return;
        }
        MHD_add_response_header(r, "Content-Type", ct);
    }
    if (fp[0]) MHD_add_response_header(r, "OpenRunPod-Fingerprint", fp);
    httpd_reply_response(req, (unsigned)status, r);
}
