/* gateway: see gateway.h.
 *
 * The life of a proxied request:
 *   1. handler (MHD thread): auth, rate limit, resolve the endpoint and up to 8 ready replicas
 *      of its current epochs, make the request id, start the proxy thread, suspend.
 *   2. proxy thread: picks the candidate with the fewest requests outstanding from this gateway
 *      and POSTs to its runtime; a refused connection or a runtime 503 (before any byte reached
 *      the client) moves on to the next candidate. With no ready replica, it holds the request
 *      (re-resolving every 250 ms, a pooled connection only for the query) up to --hold-s, then
 *      answers 503. When the status line and first bytes arrive (or the transfer ends) it resumes
 *      the connection.
 *   3. handler again: a streaming 200 is answered with a content-reader response that drains the
 *      proxy buffer and suspends itself when the buffer is empty; anything else waits until the
 *      transfer is complete and is answered in one piece with the runtime's status and body.
 *   4. the client leaves or the transfer ends: whoever is last frees the proxy.
 * Limits: the buffer between the runtime and a slow client is bounded (the proxy thread waits);
 * a stream has a deadline (stream_timeout_s); a quiet stream gets ": ping" comments so a departed
 * client is noticed on the next write. */
#include "gateway.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "ctl.h"
#include "jsonx.h"
#include "lease.h"
#include "log.h"
#include "ratelimit.h"
#include "util.h"

/* Bytes buffered between the runtime and the client before the proxy thread waits for the
 * client: enough for thousands of SSE chunks, small enough that 10 000 slow streams fit in RAM. */
#define PROXY_MAX_BUFFERED (256 * 1024)
/* Non-streaming replies larger than this are refused: the runtime's replies are a few KB. */
#define PROXY_MAX_REPLY (8 * 1024 * 1024)
#define PROXY_PING_MS 10000
#define GW_MAX_CANDIDATES 8 /* replicas tried per request: more would only delay the error */
#define GW_HOLD_POLL_MS 250

struct candidate {
    char replica_id[40];
    char url[256]; /* the runtime's base URL; the request's path is appended */
    char secret[80];
    int tried;
};

/* What the routing query found. */
enum route_rc { ROUTE_OK, ROUTE_DB, ROUTE_NOT_FOUND, ROUTE_STOPPED, ROUTE_NO_FUNDS };

struct route {
    char endpoint_id[40];
    char reason[200];
    struct candidate cand[GW_MAX_CANDIDATES];
    int ncand;
    int value; /* billing_mode 'value': admitted against a balance lease (lease.h) */
    int64_t in_price, out_price, context_length; /* micros per million tokens; tokens */
};

struct proxy {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int refs;              /* the MHD side and the proxy thread */
    struct httpd_req *req; /* NULL once the client's request is gone */
    struct ctl_listener *lis;
    struct route route; /* candidates; re-resolved while held */
    char account_id[24];
    int64_t account_num;
    int leased; /* a lease reservation to end (lease_end) when the transfer is over */
    int sent;   /* some runtime may have received the request */
    char model[208];
    int64_t hold_until_ms;
    char url[320];    /* the candidate being tried: its base URL + path */
    const char *path; /* the runtime route: /v1/chat/completions or /v1/completions (static) */
    char request_id[40];
    char *body;
    size_t body_len;
    long timeout_s;

    long status;
    char content_type[128];
    int headers_done; /* status and first bytes known */
    int streaming;    /* a 200 event stream: answered incrementally */
    int finished;     /* transfer over */
    int failed;       /* transport error */
    int swallow;      /* a runtime 503 that another candidate may still fix: not relayed */
    char error[256];
    unsigned err_status; /* the gateway's own answer (after holding), when non-zero */
    char err_code[40], err_msg[200];
    struct buf data; /* bytes not yet sent to the client start at data_off */
    size_t data_off;
    int64_t last_data_ms;
};

static void proxy_unref(struct proxy *p)
{
    pthread_mutex_lock(&p->lock);
    int left = --p->refs;
    pthread_mutex_unlock(&p->lock);
    if (left) return;
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cv);
    buf_free(&p->data);
    free(p->body);
    free(p);
}

/* MHD side lets go (completion callback): the client is gone or was answered. */
static void proxy_state_free(void *state)
{
    struct proxy *p = state;
    pthread_mutex_lock(&p->lock);
    p->req = NULL;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->lock);
    proxy_unref(p);
}

/* Called with p->lock held. */
static void wake_client(struct proxy *p)
{
    if (p->req) httpd_resume(p->req);
}

/* Requests outstanding from this gateway per replica, for least-outstanding routing. A fixed
 * open-addressed table: a slot whose count is 0 carries no information and may be reused. */
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
 * request of that second to one replica). -1 when none is left. */
static int pick_candidate(struct route *rt)
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
    return best;
}

static int untried_left(const struct route *rt)
{
    for (int i = 0; i < rt->ncand; i++)
        if (!rt->cand[i].tried) return 1;
    return 0;
}

static void note_headers(struct proxy *p, CURL *c)
{
    if (p->headers_done || p->swallow) return;
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    /* A busy or dying runtime says 503: another replica may serve it, and the client has seen
     * nothing yet. */
    if (status == 503 && untried_left(&p->route)) {
        p->swallow = 1;
        return;
    }
    p->status = status;
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(p->content_type, sizeof p->content_type, "%s", ct ? ct : "application/json");
    p->streaming = p->status == 200 && strstr(p->content_type, "text/event-stream") != NULL;
    p->headers_done = 1;
}

struct xfer {
    struct proxy *p;
    CURL *c;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    struct proxy *p = x->p;
    size_t n = size * nmemb;
    pthread_mutex_lock(&p->lock);
    note_headers(p, x->c);
    if (p->swallow) {
        pthread_mutex_unlock(&p->lock);
        return n;
    }
    /* Wait for a slow client rather than buffering without bound. */
    while (p->req && p->streaming && p->data.len - p->data_off > PROXY_MAX_BUFFERED)
        pthread_cond_wait(&p->cv, &p->lock);
    int ok = p->req != NULL && (p->streaming || p->data.len + n <= PROXY_MAX_REPLY);
    if (ok) {
        if (p->data_off > 0 && p->data_off == p->data.len) p->data.len = p->data_off = 0;
        ok = buf_append(&p->data, ptr, n) == 0;
        p->last_data_ms = util_now_ms();
        if (p->streaming) wake_client(p);
    }
    pthread_mutex_unlock(&p->lock);
    return ok ? n : 0; /* 0 aborts the transfer: the runtime sees the disconnect */
}

/* Called about once a second by curl: aborts when the client left, and keeps a quiet stream
 * alive with an SSE comment so that a departed client is detected on the next write. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    struct proxy *p = ((struct xfer *)ud)->p;
    pthread_mutex_lock(&p->lock);
    int gone = p->req == NULL;
    if (!gone && p->streaming && util_now_ms() - p->last_data_ms > PROXY_PING_MS) {
        buf_append(&p->data, ": ping\n\n", 8);
        p->last_data_ms = util_now_ms();
        wake_client(p);
    }
    pthread_mutex_unlock(&p->lock);
    return gone;
}

static enum route_rc resolve_db(PGconn *c, const char *account_id, const char *model,
                                struct route *rt);

/* ---- caches: no database round trip on the request path of a busy key ----
 *
 * A key's authentication and an (account, model) route are kept for GW_CACHE_MS after they were
 * read: a revoked key, a stopped endpoint, a drained balance or a replica that stopped being ready
 * take effect within that time (a replica that died in between is skipped on a refused
 * connection anyway). Entries are slots in fixed tables, overwritten by hash: the memory is
 * bounded whatever the number of keys. */
#define GW_CACHE_MS 1000
#define GW_CACHE_SLOTS 1024

struct auth_slot {
    char key_hash[65];
    struct auth_ctx a;
    int64_t until_ms;
};

struct route_slot {
    char account_id[24];
    char model[208];
    enum route_rc rc;
    struct route rt;
    int64_t until_ms;
};

static struct auth_slot *gw_auth_cache;
static struct route_slot *gw_route_cache;
static pthread_mutex_t gw_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t gw_once = PTHREAD_ONCE_INIT;

/* One connection cache shared by every proxy thread, so that requests to a runtime reuse
 * keep-alive connections instead of opening one each (libcurl's documented way across threads:
 * a share object with lock callbacks). */
static CURLSH *gw_share;
static pthread_mutex_t gw_share_locks[CURL_LOCK_DATA_LAST];

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *u)
{
    (void)h;
    (void)access;
    (void)u;
    pthread_mutex_lock(&gw_share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *u)
{
    (void)h;
    (void)u;
    pthread_mutex_unlock(&gw_share_locks[data]);
}

static void gw_init(void)
{
    gw_auth_cache = calloc(GW_CACHE_SLOTS, sizeof *gw_auth_cache);
    gw_route_cache = calloc(GW_CACHE_SLOTS, sizeof *gw_route_cache);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&gw_share_locks[i], NULL);
    gw_share = curl_share_init();
    if (gw_share) {
        curl_share_setopt(gw_share, CURLSHOPT_LOCKFUNC, share_lock);
        curl_share_setopt(gw_share, CURLSHOPT_UNLOCKFUNC, share_unlock);
        curl_share_setopt(gw_share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    }
}

/* Easy handles are kept for reuse (curl_easy_reset() in attempt() clears their options): creating
 * one costs more than the rest of a small request. At most GW_IDLE_HANDLES wait idle. */
#define GW_IDLE_HANDLES 256
static CURL *gw_idle[GW_IDLE_HANDLES];
static int gw_nidle;

static CURL *handle_get(void)
{
    CURL *c = NULL;
    pthread_mutex_lock(&gw_cache_lock);
    if (gw_nidle > 0) c = gw_idle[--gw_nidle];
    pthread_mutex_unlock(&gw_cache_lock);
    return c ? c : curl_easy_init();
}

static void handle_put(CURL *c)
{
    if (!c) return;
    pthread_mutex_lock(&gw_cache_lock);
    if (gw_nidle < GW_IDLE_HANDLES) {
        gw_idle[gw_nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&gw_cache_lock);
    if (c) curl_easy_cleanup(c);
}

static uint32_t hash_str(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* 0 with *a filled, from the cache or the database; -1 after answering. */
static int gw_authenticate(struct httpd_req *req, struct auth_ctx *a)
{
    const char *key = auth_bearer(req);
    char kh[65] = "";
    if (key && gw_auth_cache) {
        util_sha256_hex(key, strlen(key), kh);
        struct auth_slot *sl = &gw_auth_cache[hash_str(2166136261u, kh) % GW_CACHE_SLOTS];
        pthread_mutex_lock(&gw_cache_lock);
        int hit = !strcmp(sl->key_hash, kh) && sl->until_ms > util_now_ms();
        if (hit) *a = sl->a;
        pthread_mutex_unlock(&gw_cache_lock);
        if (hit) {
            char ctx[128];
            snprintf(ctx, sizeof ctx, "req=%s acct=%lld", req->id, (long long)a->account_id);
            log_set_context(ctx);
            return 0;
        }
    }
    PGconn *c = auth_db(req, a);
    if (!c) return -1;
    ctl_db_done(req, c);
    if (kh[0]) {
        struct auth_slot *sl = &gw_auth_cache[hash_str(2166136261u, kh) % GW_CACHE_SLOTS];
        pthread_mutex_lock(&gw_cache_lock);
        snprintf(sl->key_hash, sizeof sl->key_hash, "%s", kh);
        sl->a = *a;
        sl->until_ms = util_now_ms() + GW_CACHE_MS;
        pthread_mutex_unlock(&gw_cache_lock);
    }
    return 0;
}

/* resolve_db through the route cache; ROUTE_DB is never cached. */
static enum route_rc gw_resolve(struct ctl_listener *l, const char *account_id, const char *model,
                                struct route *rt, int *db_busy)
{
    struct route_slot *sl =
        &gw_route_cache[hash_str(hash_str(2166136261u, account_id), model) % GW_CACHE_SLOTS];
    pthread_mutex_lock(&gw_cache_lock);
    int hit = !strcmp(sl->account_id, account_id) && !strcmp(sl->model, model) &&
              sl->until_ms > util_now_ms();
    enum route_rc rc = sl->rc;
    if (hit) *rt = sl->rt;
    pthread_mutex_unlock(&gw_cache_lock);
    if (hit) return rc;
    PGconn *c = db_acquire(l->pool);
    if (!c) {
        *db_busy = 1;
        return ROUTE_DB;
    }
    rc = resolve_db(c, account_id, model, rt);
    db_release(l->pool, c);
    if (rc == ROUTE_DB) return rc;
    pthread_mutex_lock(&gw_cache_lock);
    snprintf(sl->account_id, sizeof sl->account_id, "%s", account_id);
    snprintf(sl->model, sizeof sl->model, "%s", model);
    sl->rc = rc;
    sl->rt = *rt;
    sl->until_ms = util_now_ms() + GW_CACHE_MS;
    pthread_mutex_unlock(&gw_cache_lock);
    return rc;
}

/* One attempt at candidate i. Returns the curl result; p->swallow says a 503 was held back. */
static CURLcode attempt(struct proxy *p, CURL *c, int i)
{
    struct candidate *cd = &p->route.cand[i];
    char auth[128], rid[96];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", cd->secret);
    snprintf(rid, sizeof rid, "X-ORP-Request-Id: %s", p->request_id);
    struct curl_slist *hl = NULL;
    hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, auth);
    hl = curl_slist_append(hl, rid);
    hl = curl_slist_append(hl, "Expect:");
    struct xfer x = {p, c};
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, p->url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)p->body_len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (gw_share) curl_easy_setopt(c, CURLOPT_SHARE, gw_share);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, p->timeout_s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &x);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    load_add(cd->replica_id, 1);
    CURLcode rc = curl_easy_perform(c);
    load_add(cd->replica_id, -1);
    curl_slist_free_all(hl);
    pthread_mutex_lock(&p->lock);
    if (rc == CURLE_OK) note_headers(p, c);
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* While the endpoint has no ready replica: wait and look again, until the hold deadline or the
 * client leaves. 1 when candidates appeared, 0 when the caller should give up (error set). */
static int hold(struct proxy *p)
{
    for (;;) {
        pthread_mutex_lock(&p->lock);
        int gone = p->req == NULL;
        pthread_mutex_unlock(&p->lock);
        if (gone) return 0;
        if (util_now_ms() >= p->hold_until_ms) break;
        util_sleep_ms(GW_HOLD_POLL_MS);
        PGconn *c = db_acquire(p->lis->pool);
        if (!c) continue;
        struct route rt;
        enum route_rc rc = resolve_db(c, p->account_id, p->model, &rt);
        db_release(p->lis->pool, c);
        if (rc == ROUTE_OK && rt.ncand > 0) {
            p->route = rt;
            return 1;
        }
        if (rc == ROUTE_NOT_FOUND || rc == ROUTE_STOPPED) break; /* deleted meanwhile */
    }
    pthread_mutex_lock(&p->lock);
    p->err_status = 503;
    snprintf(p->err_code, sizeof p->err_code, "endpoint_not_ready");
    snprintf(p->err_msg, sizeof p->err_msg, "endpoint '%.100s' has no ready replica; retry shortly",
             p->model);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* Ends the request's lease reservation: returned whole when no runtime received the request or
 * the runtime refused it (4xx), reduced to the actual cost when the reply carried usage;
 * otherwise it stays reserved until the usage event arrives (lease.h). */
static void lease_return(struct proxy *p)
{
    int64_t actual = -1;
    pthread_mutex_lock(&p->lock);
    int not_sent = !p->sent || (p->headers_done && p->status >= 400 && p->status < 500);
    if (!not_sent && p->headers_done && !p->streaming && p->status == 200 && !p->failed) {
        json_t *j = json_loadb(p->data.data, p->data.len, 0, NULL);
        json_t *u = json_object_get(j, "usage");
        json_t *pt = json_object_get(u, "prompt_tokens"),
               *ct = json_object_get(u, "completion_tokens");
        if (json_is_integer(pt) && json_is_integer(ct))
            actual = lease_cost(json_integer_value(pt), json_integer_value(ct), p->route.in_price,
                                p->route.out_price);
        json_decref(j);
    }
    pthread_mutex_unlock(&p->lock);
    lease_end(p->lis->ctl->lease, p->account_num, p->request_id, actual, not_sent);
}

static void *proxy_thread(void *arg)
{
    struct proxy *p = arg;
    CURL *c = handle_get();
    CURLcode rc = CURLE_FAILED_INIT;
    while (c) {
        int i = pick_candidate(&p->route);
        if (i < 0) {
            if (p->route.ncand > 0 || !hold(p)) break; /* all tried, or nothing came up */
            continue;
        }
        p->route.cand[i].tried = 1;
        snprintf(p->url, sizeof p->url, "%s%s", p->route.cand[i].url, p->path);
        rc = attempt(p, c, i);
        pthread_mutex_lock(&p->lock);
        if (rc != CURLE_COULDNT_CONNECT && !p->swallow) p->sent = 1; /* it may have run */
        /* Nothing reached the client: a refused connection or a held-back 503 may be retried
         * on another replica (the runtime never saw the request, or refused it whole). */
        int retry = !p->headers_done && untried_left(&p->route) &&
                    (p->swallow || rc == CURLE_COULDNT_CONNECT);
        if (retry) {
            log_warn("request %s: replica %s %s; trying another", p->request_id, p->url,
                     p->swallow ? "is busy (503)" : "refused the connection");
            p->swallow = 0;
            p->data.len = p->data_off = 0;
        }
        pthread_mutex_unlock(&p->lock);
        if (!retry) break;
    }
    if (p->leased) lease_return(p);
    pthread_mutex_lock(&p->lock);
    if (rc != CURLE_OK && !p->err_status) {
        p->failed = 1;
        snprintf(p->error, sizeof p->error, "%s", curl_easy_strerror(rc));
        if (p->req) log_warn("request %s: replica %s: %s", p->request_id, p->url, p->error);
    }
    p->finished = 1;
    wake_client(p);
    pthread_mutex_unlock(&p->lock);
    handle_put(c);
    proxy_unref(p);
    return NULL;
}

/* Content reader for a streaming reply: never returns 0 without suspending first (a reader
 * that returns 0 makes libmicrohttpd poll it in a busy loop). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct proxy *p = cls;
    pthread_mutex_lock(&p->lock);
    ssize_t n;
    size_t avail = p->data.len - p->data_off;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(out, p->data.data + p->data_off, (size_t)n);
        p->data_off += (size_t)n;
        pthread_cond_broadcast(&p->cv);
    } else if (p->finished || !p->req || httpd_stopping(p->req->srv)) {
        n = p->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        httpd_suspend(p->req);
        n = 0;
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

static void respond(struct httpd_req *req, struct proxy *p)
{
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
    if (p->streaming) {
        pthread_mutex_unlock(&p->lock);
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, p, NULL);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        httpd_reply_response(req, 200, r);
        return;
    }
    long status = p->status ? p->status : 502;
    char ct[128];
    snprintf(ct, sizeof ct, "%s", p->content_type);
    struct MHD_Response *r = MHD_create_response_from_buffer(
        p->data.len - p->data_off, p->data.data + p->data_off, MHD_RESPMEM_MUST_COPY);
    pthread_mutex_unlock(&p->lock);
    MHD_add_response_header(r, "Content-Type", ct);
    httpd_reply_response(req, (unsigned)status, r);
}

/* The caller's endpoint named model, its state, the account's balance, and up to
 * GW_MAX_CANDIDATES ready replicas of it in random order. Only the current epoch's state is
 * 'ready', so a replica being moved is never a candidate. */
static enum route_rc resolve_db(PGconn *c, const char *account_id, const char *model,
                                struct route *rt)
{
    const char *p[] = {account_id, model};
    PGresult *r;
    enum db_status st = db_exec(
        c,
        "SELECT e.id, e.state, e.state_reason, "
        "  (SELECT COALESCE(sum(l.amount_micros), 0) FROM ledger_entries l "
        "   WHERE l.account_id = $1::bigint), x.id, x.address, x.port, x.secret, "
        "  e.billing_mode, m.input_price_micros_per_mtok, m.output_price_micros_per_mtok, "
        "  m.context_length "
        "FROM endpoints e JOIN models m ON m.id = e.model_id LEFT JOIN LATERAL ("
        "  SELECT r.id, h.address, r.port, r.secret FROM replicas r "
        "  JOIN hosts h ON h.id = r.host_id AND h.state = 'ready' "
        "  WHERE r.endpoint_id = e.id AND r.state = 'ready' AND r.port IS NOT NULL "
        "  ORDER BY random() LIMIT 8) x ON true "
        "WHERE e.account_id = $1::bigint AND e.name = $2 AND e.state IN ('active', 'stopped')",
        2, p, &r, NULL);
    memset(rt, 0, sizeof *rt);
    if (st < 0) return ROUTE_DB;
    enum route_rc rc = ROUTE_OK;
    if (st == DB_NONE) {
        rc = ROUTE_NOT_FOUND;
    } else {
        snprintf(rt->endpoint_id, sizeof rt->endpoint_id, "%s", PQgetvalue(r, 0, 0));
        snprintf(rt->reason, sizeof rt->reason, "%s", PQgetvalue(r, 0, 2));
        rt->value = !strcmp(PQgetvalue(r, 0, 8), "value");
        rt->in_price = db_int(r, 0, 9);
        rt->out_price = db_int(r, 0, 10);
        rt->context_length = db_int(r, 0, 11);
        /* Time-billed: an account with nothing left is refused. Value-billed requests are
         * admitted against a balance lease instead (lease.h), by their maximum cost. */
        if (!strcmp(PQgetvalue(r, 0, 1), "stopped"))
            rc = ROUTE_STOPPED;
        else if (!rt->value && db_int(r, 0, 3) <= 0)
            rc = ROUTE_NO_FUNDS;
        for (int i = 0; rc == ROUTE_OK && i < PQntuples(r) && i < GW_MAX_CANDIDATES; i++) {
            if (PQgetisnull(r, i, 4)) continue;
            struct candidate *cd = &rt->cand[rt->ncand++];
            snprintf(cd->replica_id, sizeof cd->replica_id, "%s", PQgetvalue(r, i, 4));
            snprintf(cd->url, sizeof cd->url, "http://%s:%s", PQgetvalue(r, i, 5),
                     PQgetvalue(r, i, 6));
            snprintf(cd->secret, sizeof cd->secret, "%s", PQgetvalue(r, i, 7));
        }
    }
    PQclear(r);
    return rc;
}

/* Routes a request (through the cache): 0, or -1 after answering. */
static int resolve(struct httpd_req *req, const struct auth_ctx *a, const char *model,
                   struct route *rt)
{
    int busy = 0;
    switch (gw_resolve(req->app, a->account_id_str, model, rt, &busy)) {
    case ROUTE_OK:
        return 0;
    case ROUTE_DB:
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not route the request%s",
                    busy ? ": the database is busy" : "");
        return -1;
    case ROUTE_NOT_FOUND:
        httpd_error(req, 404, "model_not_found", "model",
                    "the model '%s' does not exist: it must be the name of one of your endpoints",
                    model);
        return -1;
    case ROUTE_STOPPED:
        httpd_error(req, 409, "endpoint_stopped", "model", "endpoint '%s' is stopped (%s)", model,
                    rt->reason);
        return -1;
    case ROUTE_NO_FUNDS:
        /* Admission (time-billed): an account with nothing left is refused before any work. */
        httpd_error(req, 402, "insufficient_balance", NULL,
                    "your balance is used up; add credit to continue");
        return -1;
    }
    return -1;
}

/* Adds the IETF draft RateLimit headers to every reply of this request. */
/* Appends one "Name: value" line to the reply's extra headers (dropped if it does not fit). */
static void add_header(struct httpd_req *req, const char *name, const char *value)
{
    size_t n = strlen(req->extra_headers);
    int w = snprintf(req->extra_headers + n, sizeof req->extra_headers - n, "%s%s: %s",
                     n ? "\r\n" : "", name, value);
    if (w < 0 || (size_t)w >= sizeof req->extra_headers - n) req->extra_headers[n] = '\0';
}

static void rate_headers(struct httpd_req *req, const struct rl_result *r)
{
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)r->limit);
    add_header(req, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%lld", (long long)r->remaining);
    add_header(req, "RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)r->reset_s);
    add_header(req, "RateLimit-Reset", v);
}

/* CORS for the console's playground, which runs on the API listener's origin and calls this
 * listener with the session cookie. Allowed: the origins listed in --cors-origins (exact match),
 * or, when that is unset, the API listener's own (http://<listen-host>:<api-port> and
 * http://localhost:<api-port>), which serves the console. Any other origin gets no Allow headers,
 * and the browser keeps the reply from its page. 1 when the request's origin is allowed. */
static int origin_listed(const char *origin, const char *list)
{
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, origin, n)) return 1;
        p += len + (end ? 1 : 0);
    }
    return 0;
}

static int cors(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    const struct ctl_config *cfg = &l->ctl->cfg;
    const char *origin = httpd_header(req, "Origin");
    if (!origin || strlen(origin) > 200) return 0;
    int ok;
    if (cfg->cors_origins && *cfg->cors_origins) {
        ok = origin_listed(origin, cfg->cors_origins);
    } else {
        char own[160];
        snprintf(own, sizeof own, "http://%s:%lld,http://localhost:%lld", cfg->listen_host,
                 (long long)cfg->api_port, (long long)cfg->api_port);
        ok = origin_listed(origin, own);
    }
    if (!ok) return 0;
    add_header(req, "Access-Control-Allow-Origin", origin);
    add_header(req, "Access-Control-Allow-Credentials", "true");
    add_header(req, "Access-Control-Expose-Headers",
               "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset");
    add_header(req, "Vary", "Origin");
    return 1;
}

static void h_preflight(struct httpd_req *req)
{
    if (cors(req)) {
        add_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        add_header(req, "Access-Control-Allow-Headers",
                   "authorization, content-type, x-csrf-token, idempotency-key");
        add_header(req, "Access-Control-Max-Age", "600");
    }
    httpd_reply_raw(req, 204, NULL, "", 0);
}

/* The account's request rate (quotas.requests_per_min, burst requests_burst): 0, or -1 after
 * answering 429 with Retry-After. */
static int rate_limit(struct httpd_req *req, const struct auth_ctx *a)
{
    struct ctl_listener *l = req->app;
    if (a->requests_per_min <= 0 || !l->ctl->rl) return 0;
    struct rl_result r;
    int ok = rl_admit(l->ctl->rl, a->account_id, util_now_ms() * 1000, a->requests_per_min,
                      a->requests_burst, &r);
    rate_headers(req, &r);
    if (ok) return 0;
    req->retry_after = (int)r.retry_after;
    httpd_error(req, 429, "rate_limit_exceeded", NULL,
                "rate limit of %lld requests per minute reached; retry in %lld s",
                (long long)r.limit, (long long)r.retry_after);
    return -1;
}

/* The most a value-billed request can cost: every byte of the body counted as a prompt token
 * (byte-level BPE never makes more tokens than bytes, and a chat template adds fewer tokens per
 * message than the message's JSON syntax has bytes), and max_tokens (or the model's context
 * length when absent) completion tokens, at the model's prices, rounded up. */
static int64_t max_cost(const struct httpd_req *req, json_t *body, const struct route *rt)
{
    int64_t ctx = rt->context_length > 0 ? rt->context_length : INT32_MAX;
    int64_t ct = ctx;
    json_t *mt = json_object_get(body, "max_tokens");
    if (!json_is_integer(mt)) mt = json_object_get(body, "max_completion_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0 && json_integer_value(mt) < ctx)
        ct = json_integer_value(mt);
    return lease_cost((int64_t)req->body.len, ct, rt->in_price, rt->out_price);
}

/* Both generation routes: the same admission, routing and proxying; the runtime does the rest. */
static void proxy_generation(struct httpd_req *req, const char *path)
{
    if (req->state) {
        respond(req, req->state);
        return;
    }
    pthread_once(&gw_once, gw_init);
    cors(req);
    struct ctl_listener *l = req->app;
    struct auth_ctx a;
    if (gw_authenticate(req, &a) != 0) return;
    if (rate_limit(req, &a) != 0) return;
    /* The body goes to the runtime as it came; only `model` is read here. The runtime
     * validates the rest and its 400s are passed through. */
    struct jsonx_err je = {0};
    json_t *body = httpd_body_object(req);
    if (!body) return;
    const char *model;
    enum jsonx_rc rc = jsonx_get_string(body, "model", 1, &model, 200, &je);
    if (rc != JSONX_OK) {
        json_decref(body);
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    "model", "%s", je.message);
        return;
    }
    struct route rt;
    int ok = resolve(req, &a, model, &rt); /* no connection is held while waiting on a runtime */
    if (ok == 0) ok = auth_endpoint_allowed(req, &a, rt.endpoint_id, model); /* key's limit */
    if (ok == 0 && rt.ncand == 0 && l->ctl->cfg.hold_s <= 0) {
        req->retry_after = 5;
        httpd_error(req, 503, "endpoint_not_ready", "model",
                    "endpoint '%s' has no ready replica yet; retry shortly", model);
        ok = -1;
    }
    if (ok != 0) {
        json_decref(body);
        return;
    }
    int64_t cost = rt.value ? max_cost(req, body, &rt) : 0;

    struct proxy *p = calloc(1, sizeof *p);
    char hex[25];
    if (!p || util_random_hex(hex, 12) != 0) {
        free(p);
        json_decref(body);
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        return;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->refs = 2;
    p->req = req;
    p->lis = l;
    p->route = rt;
    p->path = path;
    snprintf(p->account_id, sizeof p->account_id, "%s", a.account_id_str);
    snprintf(p->model, sizeof p->model, "%s", model);
    p->hold_until_ms = util_now_ms() + l->ctl->cfg.hold_s * 1000;
    json_decref(body); /* model was borrowed from it */
    p->timeout_s = l->ctl->cfg.stream_timeout_s;
    p->last_data_ms = util_now_ms();
    snprintf(p->request_id, sizeof p->request_id, "req_%s", hex);
    p->account_num = a.account_id;
    if (rt.value) {
        /* Value-billed: the request's maximum cost is reserved from this process's lease on the
         * account's balance (no database round trip while the lease has room). */
        enum lease_rc lr = lease_admit(l->ctl->lease, a.account_id, p->request_id, cost);
        if (lr != LEASE_OK) {
            pthread_mutex_destroy(&p->lock);
            pthread_cond_destroy(&p->cv);
            free(p);
            if (lr == LEASE_SHORT) {
                httpd_error(req, 402, "insufficient_balance", NULL,
                            "your balance cannot cover this request (up to %lld micro-units: "
                            "its prompt and max_tokens at the model's prices); add credit or "
                            "lower max_tokens",
                            (long long)cost);
            } else {
                req->retry_after = 1;
                httpd_error(req, 503, "database_unavailable", NULL,
                            "could not reserve the request's cost; retry shortly");
            }
            return;
        }
        p->leased = 1;
    }
    snprintf(req->id, sizeof req->id, "%s", p->request_id);
    p->body = malloc(req->body.len + 1);
    if (p->body) memcpy(p->body, req->body.data, req->body.len + 1);
    p->body_len = req->body.len;
    req->state = p;
    req->state_free = proxy_state_free;
    log_info("request %s -> endpoint %s (%d ready replica%s)", p->request_id, rt.endpoint_id,
             rt.ncand, rt.ncand == 1 ? "" : "s");

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t th;
    pthread_mutex_lock(&p->lock);
    int err = p->body ? pthread_create(&th, &attr, proxy_thread, p) : -1;
    pthread_attr_destroy(&attr);
    if (err != 0) {
        p->refs--; /* no thread */
        pthread_mutex_unlock(&p->lock);
        if (p->leased) lease_end(l->ctl->lease, p->account_num, p->request_id, -1, 1);
        req->retry_after = 1;
        httpd_error(req, 503, "overloaded", NULL, "the gateway cannot take more requests now");
        return;
    }
    httpd_suspend(req);
    pthread_mutex_unlock(&p->lock);
}

static void h_chat(struct httpd_req *req)
{
    proxy_generation(req, "/v1/chat/completions");
}

static void h_completions(struct httpd_req *req)
{
    proxy_generation(req, "/v1/completions");
}

static void h_models(struct httpd_req *req)
{
    cors(req);
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *p[] = {a.account_id_str};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT name, extract(epoch FROM created_at)::bigint, id FROM "
                                "endpoints WHERE account_id = $1::bigint AND state = 'active' "
                                "ORDER BY name",
                                1, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not list models");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        /* A key limited to some endpoints sees only those. */
        int listed = !a.endpoint_limited;
        for (int k = 0; k < a.n_endpoint_ids && !listed; k++)
            listed = !strcmp(a.endpoint_ids[k], PQgetvalue(r, i, 2));
        if (!listed) continue;
        json_array_append_new(
            data, json_pack("{s:s, s:s, s:I, s:s}", "id", PQgetvalue(r, i, 0), "object", "model",
                            "created", (json_int_t)db_int(r, i, 1), "owned_by", a.account_id_str));
    }
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route gateway_routes[] = {
    {"POST", "/v1/chat/completions", h_chat},
    {"POST", "/v1/completions", h_completions},
    {"GET", "/v1/models", h_models},
    {"OPTIONS", "/v1/chat/completions", h_preflight},
    {"OPTIONS", "/v1/completions", h_preflight},
    {"OPTIONS", "/v1/models", h_preflight},
};
const size_t gateway_nroutes = sizeof gateway_routes / sizeof gateway_routes[0];
