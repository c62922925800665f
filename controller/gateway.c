/* gateway: see gateway.h.
 *
 * The life of a proxied request:
 *   1. handler (MHD thread): auth, route, make the request id, start the proxy thread, suspend.
 *   2. proxy thread: POST to the runtime; when the status line and first bytes arrive (or the
 *      transfer ends) it resumes the connection.
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
#include "log.h"
#include "ratelimit.h"
#include "util.h"

/* Bytes buffered between the runtime and the client before the proxy thread waits for the
 * client: enough for thousands of SSE chunks, small enough that 10 000 slow streams fit in RAM. */
#define PROXY_MAX_BUFFERED (256 * 1024)
/* Non-streaming replies larger than this are refused: the runtime's replies are a few KB. */
#define PROXY_MAX_REPLY (8 * 1024 * 1024)
#define PROXY_PING_MS 10000

struct proxy {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int refs;              /* the MHD side and the proxy thread */
    struct httpd_req *req; /* NULL once the client's request is gone */
    char url[256];
    char auth_header[128];
    char rid_header[96];
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
    char error[256];
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

static void note_headers(struct proxy *p, CURL *c)
{
    if (p->headers_done) return;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &p->status);
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

static void *proxy_thread(void *arg)
{
    struct proxy *p = arg;
    CURL *c = curl_easy_init();
    struct xfer x = {p, c};
    struct curl_slist *hl = NULL;
    hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, p->auth_header);
    hl = curl_slist_append(hl, p->rid_header);
    hl = curl_slist_append(hl, "Expect:");
    CURLcode rc = CURLE_FAILED_INIT;
    if (c) {
        curl_easy_setopt(c, CURLOPT_URL, p->url);
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)p->body_len);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, p->timeout_s);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &x);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        rc = curl_easy_perform(c);
    }
    pthread_mutex_lock(&p->lock);
    if (c && rc == CURLE_OK) note_headers(p, c);
    if (rc != CURLE_OK) {
        p->failed = 1;
        snprintf(p->error, sizeof p->error, "%s", curl_easy_strerror(rc));
        if (p->req) log_warn("request %s: replica %s: %s", p->request_id, p->url, p->error);
    }
    p->finished = 1;
    wake_client(p);
    pthread_mutex_unlock(&p->lock);
    curl_slist_free_all(hl);
    if (c) curl_easy_cleanup(c);
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

struct route_target {
    char url[256];
    char secret[80];
    char endpoint_id[40];
};

/* Finds the caller's endpoint named model and one ready replica of it. 0, or -1 with a reply. */
static int resolve(struct httpd_req *req, PGconn *c, const struct auth_ctx *a, const char *model,
                   struct route_target *t)
{
    const char *p[] = {a->account_id_str, model};
    PGresult *r;
    /* Only the current epoch's state is 'ready'; a replica being moved is not routed to. */
    enum db_status st = db_exec(
        c,
        "SELECT e.id, h.address, r.port, r.secret, "
        "  (SELECT COALESCE(sum(l.amount_micros), 0) FROM ledger_entries l "
        "   WHERE l.account_id = $1::bigint), e.state, e.state_reason FROM endpoints e "
        "LEFT JOIN replicas r ON r.endpoint_id = e.id AND r.state = 'ready' AND r.port IS NOT NULL "
        "LEFT JOIN hosts h ON h.id = r.host_id AND h.state = 'ready' "
        "WHERE e.account_id = $1::bigint AND e.name = $2 AND e.state IN ('active', 'stopped') "
        "ORDER BY (h.id IS NULL), random() LIMIT 1",
        2, p, &r, NULL);
    if (st < 0) {
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not route the request");
        return -1;
    }
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 404, "model_not_found", "model",
                    "the model '%s' does not exist: it must be the name of one of your endpoints",
                    model);
        return -1;
    }
    snprintf(t->endpoint_id, sizeof t->endpoint_id, "%s", PQgetvalue(r, 0, 0));
    if (!strcmp(PQgetvalue(r, 0, 5), "stopped")) {
        httpd_error(req, 409, "endpoint_stopped", "model", "endpoint '%s' is stopped (%s)", model,
                    PQgetvalue(r, 0, 6));
        PQclear(r);
        return -1;
    }
    /* Admission: an account with nothing left is refused before any work is done. (Balance
     * leases, which bound concurrent spending by each request's maximum cost, are next.) */
    if (db_int(r, 0, 4) <= 0) {
        PQclear(r);
        httpd_error(req, 402, "insufficient_balance", NULL,
                    "your balance is used up; add credit to continue");
        return -1;
    }
    if (PQgetisnull(r, 0, 1)) {
        PQclear(r);
        req->retry_after = 5;
        httpd_error(req, 503, "endpoint_not_ready", "model",
                    "endpoint '%s' has no ready replica yet; retry shortly", model);
        return -1;
    }
    snprintf(t->url, sizeof t->url, "http://%s:%s/v1/chat/completions", PQgetvalue(r, 0, 1),
             PQgetvalue(r, 0, 2));
    snprintf(t->secret, sizeof t->secret, "%s", PQgetvalue(r, 0, 3));
    PQclear(r);
    return 0;
}

/* Adds the IETF draft RateLimit headers to every reply of this request. */
static void rate_headers(struct httpd_req *req, const struct rl_result *r)
{
    snprintf(req->extra_headers, sizeof req->extra_headers,
             "RateLimit-Limit: %lld\r\nRateLimit-Remaining: %lld\r\nRateLimit-Reset: %lld",
             (long long)r->limit, (long long)r->remaining, (long long)r->reset_s);
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

static void h_chat(struct httpd_req *req)
{
    if (req->state) {
        respond(req, req->state);
        return;
    }
    struct ctl_listener *l = req->app;
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    if (rate_limit(req, &a) != 0) {
        ctl_db_done(req, c);
        return;
    }
    /* The body goes to the runtime as it came; only `model` is read here. The runtime
     * validates the rest and its 400s are passed through. */
    struct jsonx_err je = {0};
    json_t *body = jsonx_parse_object(req->body.data, req->body.len, &je);
    if (!body) {
        ctl_db_done(req, c);
        httpd_error(req, 400, "invalid_json", NULL, "%s", je.message);
        return;
    }
    const char *model;
    enum jsonx_rc rc = jsonx_get_string(body, "model", 1, &model, 200, &je);
    if (rc != JSONX_OK) {
        ctl_db_done(req, c);
        json_decref(body);
        httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                    "model", "%s", je.message);
        return;
    }
    struct route_target t;
    int ok = resolve(req, c, &a, model, &t);
    ctl_db_done(req, c); /* never held while waiting on a runtime */
    json_decref(body);
    if (ok != 0) return;

    struct proxy *p = calloc(1, sizeof *p);
    char hex[25];
    if (!p || util_random_hex(hex, 12) != 0) {
        free(p);
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        return;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->refs = 2;
    p->req = req;
    p->timeout_s = l->ctl->cfg.stream_timeout_s;
    p->last_data_ms = util_now_ms();
    snprintf(p->request_id, sizeof p->request_id, "req_%s", hex);
    snprintf(req->id, sizeof req->id, "%s", p->request_id);
    snprintf(p->url, sizeof p->url, "%s", t.url);
    snprintf(p->auth_header, sizeof p->auth_header, "Authorization: Bearer %s", t.secret);
    snprintf(p->rid_header, sizeof p->rid_header, "X-ORP-Request-Id: %s", p->request_id);
    p->body = malloc(req->body.len + 1);
    if (p->body) memcpy(p->body, req->body.data, req->body.len + 1);
    p->body_len = req->body.len;
    req->state = p;
    req->state_free = proxy_state_free;
    log_info("request %s -> endpoint %s (%s)", p->request_id, t.endpoint_id, t.url);

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
        req->retry_after = 1;
        httpd_error(req, 503, "overloaded", NULL, "the gateway cannot take more requests now");
        return;
    }
    httpd_suspend(req);
    pthread_mutex_unlock(&p->lock);
}

static void h_models(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *p[] = {a.account_id_str};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT name, extract(epoch FROM created_at)::bigint FROM "
                                "endpoints WHERE account_id = $1::bigint AND state = 'active' "
                                "ORDER BY name",
                                1, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not list models");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(
            data, json_pack("{s:s, s:s, s:I, s:s}", "id", PQgetvalue(r, i, 0), "object", "model",
                            "created", (json_int_t)db_int(r, i, 1), "owned_by", a.account_id_str));
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route gateway_routes[] = {
    {"POST", "/v1/chat/completions", h_chat},
    {"GET", "/v1/models", h_models},
};
const size_t gateway_nroutes = sizeof gateway_routes / sizeof gateway_routes[0];
