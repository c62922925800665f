/* engine: owns the scheduler thread, the request queue, the KV block pool and the serving
 * metrics (see engine.h).
 *
 * Locking: one mutex guards the lists, each request's state, its undelivered text and the
 * metrics. The scheduler holds it only to admit, to build a step and to publish its results; the
 * forward pass and sampling run unlocked, on generations no other thread touches while they run
 * (an HTTP thread reads a request's gen only once the request is done).
 *
 * A request's life: QUEUED (in the FIFO) -> RUNNING (holds its KV blocks; prefilling until its
 * whole prompt has run, then one token per step) -> DONE (blocks returned; finished, cancelled or
 * failed). Only req_done() moves a request to DONE. */
#include "engine.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Text a consumer has not taken yet, beyond which its request skips steps: a slow client must not
 * make the runtime buffer a whole completion, and a client that went away is noticed (on the
 * next write) before its completion is done, not after. */
#define ENG_MAX_PENDING 1024

enum req_state { REQ_QUEUED = 0, REQ_RUNNING, REQ_DONE };

struct eng_req {
    struct engine *e;
    struct gen g;
    enum req_state state;
    int cancel;             /* asked by the consumer */
    int failed;             /* ended without finishing (shutdown, out of memory) */
    int prefilled;          /* prompt tokens run */
    int whole;              /* the consumer takes the text once, at the end (not streaming) */
    float *logits;          /* [vocab] while running */
    struct model_sample ms; /* this step's token sampled on the device (e->dev_sample) */
    int dev_tok;            /* the token it drew */
    struct buf out;         /* text not yet taken by eng_wait */
    int published; /* tokens sampled whose records (text, logprobs) the consumer may read */
    int64_t t_submit, t_first, t_last, t_done; /* us; 0: not yet */
    struct eng_req *next;                      /* in the queue or the running list */
    pthread_cond_t cv;                         /* the consumer waits on it */
};

/* Seconds; the last bucket is +Inf. */
static const double hist_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                     0.5,   1,     2.5,  5,     10,   30};
#define NBOUNDS (sizeof hist_bounds / sizeof hist_bounds[0])

struct hist {
    uint64_t bucket[NBOUNDS + 1];
    double sum;
    uint64_t count;
};

struct engine {
    const struct model *m;
    struct eng_config cfg;
    struct model_kv *kv;
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the scheduler waits on it when idle */
    int stop;
    struct eng_req *queue, *queue_tail, *running;
    int nqueue, nrunning;
    /* metrics */
    uint64_t prompt_tokens, generation_tokens, finished, cancelled, failed, rejected, steps;
    uint64_t device_sampled; /* of generation_tokens, those the device sampled */
    int batch_max;
    int dev_sample; /* the model samples on its device (model_samples_on_device) */
    struct hist ttft, tpot;
};

/* CLOCK_MONOTONIC in microseconds: token times on a small model are well under a millisecond. */
static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void hist_add(struct hist *h, double v)
{
    size_t i = 0;
    while (i < NBOUNDS && v > hist_bounds[i])
        i++;
    h->bucket[i]++;
    h->sum += v;
    h->count++;
}

/* ---- state changes (under e->mu) ---- */

static void req_done(struct eng_req *r, int failed)
{
    struct engine *e = r->e;
    if (r->state == REQ_RUNNING) {
        model_ctx_free(r->g.ctx); /* gives the blocks back */
        r->g.ctx = NULL;
        free(r->logits);
        r->logits = NULL;
        e->nrunning--;
    } else if (r->state == REQ_QUEUED) {
        e->nqueue--;
    }
    r->state = REQ_DONE;
    r->failed = failed;
    r->t_done = now_us();
    if (r->cancel)
        e->cancelled++;
    else if (failed)
        e->failed++;
    else {
        e->finished++;
        if (r->g.produced > 1)
            hist_add(&e->tpot, (double)(r->t_last - r->t_first) / 1e6 / (r->g.produced - 1));
    }
    pthread_cond_broadcast(&r->cv);
}

/* Removes the requests that are done from the running list. */
static void sweep_running(struct engine *e)
{
    struct eng_req **pp = &e->running;
    while (*pp) {
        struct eng_req *r = *pp;
        if (r->cancel && r->state != REQ_DONE) req_done(r, 1);
        if (r->state == REQ_DONE)
            *pp = r->next;
        else
            pp = &r->next;
    }
}

static void sweep_queue(struct engine *e)
{
    struct eng_req **pp = &e->queue, *last = NULL;
    while (*pp) {
        struct eng_req *r = *pp;
        if (r->cancel || e->stop) {
            req_done(r, 1);
            *pp = r->next;
        } else {
            last = r;
            pp = &r->next;
        }
    }
    e->queue_tail = last;
}

/* Moves queued requests to running while there is room in the batch and the pool. FIFO: the
 * head waits for blocks rather than being overtaken, so a long request is not starved. */
static void admit(struct engine *e)
{
    while (e->queue && e->nrunning < e->cfg.max_batch) {
        struct eng_req *r = e->queue;
        int len = r->g.n_prompt + r->g.max_new;
        struct model_ctx *ctx = model_ctx_new_in(e->m, e->kv, len);
        if (!ctx) return; /* not enough free blocks yet */
        r->logits = malloc((size_t)model_cfg(e->m)->vocab * sizeof(float));
        if (!r->logits) {
            model_ctx_free(ctx);
            return;
        }
        r->g.ctx = ctx;
        e->queue = r->next;
        if (!e->queue) e->queue_tail = NULL;
        e->nqueue--;
        r->state = REQ_RUNNING;
        r->next = NULL;
        struct eng_req **pp = &e->running; /* appended: the order of admission */
        while (*pp)
            pp = &(*pp)->next;
        *pp = r;
        e->nrunning++;
    }
}

/* ---- the scheduler ---- */

struct step {
    struct model_row *rows;
    struct eng_req **owner; /* [n] the request of each row */
    int n, cap;
};

/* A row; want: it samples the request's next token: on the device when the model samples there
 * and the request allows it (gen_device_sample), else on the host from r->logits. */
static int step_add(struct step *s, struct eng_req *r, int token, int want)
{
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        struct model_row *nr = realloc(s->rows, (size_t)cap * sizeof *nr);
        if (!nr) return -1;
        s->rows = nr;
        struct eng_req **no = realloc(s->owner, (size_t)cap * sizeof *no);
        if (!no) return -1;
        s->owner = no;
        s->cap = cap;
    }
    struct model_row row = {.ctx = r->g.ctx, .token = token};
    if (want && r->e->dev_sample && gen_device_sample(&r->g, &r->ms))
        row.sample = &r->ms, row.token_out = &r->dev_tok;
    else if (want)
        row.logits = r->logits;
    s->rows[s->n] = row;
    s->owner[s->n++] = r;
    return 0;
}

/* Builds the step's rows from the running requests (under e->mu). */
static int build_step(struct engine *e, struct step *s)
{
    s->n = 0;
    int budget = e->cfg.prefill_chunk;
    for (struct eng_req *r = e->running; r; r = r->next) {
        if (r->prefilled < r->g.n_prompt) {
            int k = r->g.n_prompt - r->prefilled;
            if (k > budget) k = budget;
            for (int i = 0; i < k; i++) {
                int last = r->prefilled + i == r->g.n_prompt - 1;
                if (step_add(s, r, r->g.prompt[r->prefilled + i], last)) return -1;
            }
            budget -= k;
        } else if ((r->whole || r->out.len < ENG_MAX_PENDING) && step_add(s, r, r->g.next, 1)) {
            return -1;
        }
    }
    return 0;
}

static void *scheduler(void *arg)
{
    struct engine *e = arg;
    struct step s = {0};
    struct buf *deltas = NULL;
    int ndeltas = 0;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        sweep_running(e);
        sweep_queue(e);
        if (e->stop) break;
        admit(e);
        if (!e->running) {
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        int rc = build_step(e, &s);
        if (rc == 0 && s.n == 0) { /* every running request waits for its consumer */
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        if (e->nrunning > e->batch_max) e->batch_max = e->nrunning;
        e->steps++;
        if (e->nrunning > ndeltas) {
            struct buf *nd = realloc(deltas, (size_t)e->nrunning * sizeof *nd);
            if (nd) {
                memset(nd + ndeltas, 0, (size_t)(e->nrunning - ndeltas) * sizeof *nd);
                deltas = nd, ndeltas = e->nrunning;
            } else {
                rc = -1;
            }
        }
        pthread_mutex_unlock(&e->mu);

        if (rc == 0) rc = model_forward_batch(e->m, s.rows, s.n);
        /* Sample for every row that produced logits: the last prompt token or a decode token.
         * The generations are ours alone until published below. */
        int d = 0;
        for (int i = 0; rc == 0 && i < s.n; i++) {
            struct eng_req *r = s.owner[i];
            if (!s.rows[i].logits && !s.rows[i].sample) continue;
            deltas[d].len = 0;
            if (s.rows[i].sample ? gen_accept_token(&r->g, r->dev_tok, &deltas[d])
                                 : gen_accept(&r->g, r->logits, &deltas[d]))
                rc = -1;
            d++;
        }

        pthread_mutex_lock(&e->mu);
        int64_t now = now_us();
        d = 0;
        for (int i = 0; i < s.n; i++) {
            struct eng_req *r = s.owner[i];
            if (rc != 0) {
                if (r->state != REQ_DONE) req_done(r, 1);
                continue;
            }
            if (r->prefilled < r->g.n_prompt) {
                r->prefilled++;
                e->prompt_tokens++;
            }
            if (!s.rows[i].logits && !s.rows[i].sample) continue;
            e->generation_tokens++;
            e->device_sampled += s.rows[i].sample != NULL;
            if (r->g.produced == 1) {
                r->t_first = now;
                hist_add(&e->ttft, (double)(now - r->t_submit) / 1e6);
            }
            r->t_last = now;
            r->published = r->g.produced;
            if (deltas[d].len && buf_append(&r->out, deltas[d].data, deltas[d].len) != 0) {
                req_done(r, 1);
            } else if (r->g.finish != GEN_RUNNING) {
                req_done(r, 0);
            } else if (!r->whole) { /* a whole-text consumer sleeps until the end */
                pthread_cond_broadcast(&r->cv);
            }
            d++;
        }
        if (rc != 0) log_error("a batched step failed (out of memory): its requests end");
    }
    /* Stopping: every running request ends as failed. */
    for (struct eng_req *r = e->running; r; r = r->next)
        if (r->state != REQ_DONE) req_done(r, 1);
    e->running = NULL;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < ndeltas; i++)
        buf_free(&deltas[i]);
    free(deltas);
    free(s.rows);
    free(s.owner);
    return NULL;
}

/* ---- the interface ---- */

struct engine *eng_new(const struct model *m, const struct eng_config *c, char *err, size_t errlen)
{
    struct engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->m = m;
    e->dev_sample = model_samples_on_device(m);
    e->cfg = *c;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->kv = model_kv_new(m, c->kv_blocks);
    if (!e->kv) {
        snprintf(err, errlen, "cannot allocate %d KV blocks (%zu MiB)", c->kv_blocks,
                 (size_t)c->kv_blocks * model_kv_block_bytes(m) >> 20);
        eng_free(e);
        return NULL;
    }
    if (pthread_create(&e->th, NULL, scheduler, e) != 0) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        eng_free(e);
        return NULL;
    }
    e->started = 1;
    return e;
}

void eng_stop(struct engine *e)
{
    if (!e || !e->started) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->th, NULL);
    e->started = 0;
}

void eng_free(struct engine *e)
{
    if (!e) return;
    eng_stop(e);
    model_kv_free(e->kv);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

enum eng_submit eng_submit(struct engine *e, struct gen *g, int whole, struct eng_req **out)
{
    struct eng_req *r = calloc(1, sizeof *r);
    if (!r || buf_append(&r->out, "", 0) != 0) {
        free(r);
        gen_free(g);
        return ENG_NO_MEMORY;
    }
    r->e = e;
    r->whole = whole;
    r->g = *g;
    memset(g, 0, sizeof *g);
    r->t_submit = now_us();
    pthread_cond_init(&r->cv, NULL);
    pthread_mutex_lock(&e->mu);
    if (e->nqueue >= e->cfg.queue_limit || e->stop) {
        e->rejected++;
        pthread_mutex_unlock(&e->mu);
        r->state = REQ_DONE;
        eng_release(r);
        return ENG_QUEUE_FULL;
    }
    if (e->queue_tail)
        e->queue_tail->next = r;
    else
        e->queue = r;
    e->queue_tail = r;
    e->nqueue++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *out = r;
    return ENG_OK;
}

int eng_wait(struct eng_req *r, struct buf *out)
{
    return eng_wait_tokens(r, out, NULL);
}

int eng_wait_tokens(struct eng_req *r, struct buf *out, int *tokens)
{
    struct engine *e = r->e;
    pthread_mutex_lock(&e->mu);
    while ((r->whole || r->out.len == 0) && r->state != REQ_DONE)
        pthread_cond_wait(&r->cv, &e->mu);
    if (tokens) *tokens = r->published;
    int rc = buf_append(out, r->out.data, r->out.len);
    if (r->out.len >= ENG_MAX_PENDING) pthread_cond_signal(&e->cv); /* it may step again */
    r->out.len = 0;
    if (rc == 0 && r->state == REQ_DONE) rc = r->failed ? -1 : 1;
    pthread_mutex_unlock(&e->mu);
    return rc;
}

const struct gen *eng_gen(const struct eng_req *r)
{
    return &r->g;
}

void eng_times(struct eng_req *r, int64_t *first_us, int64_t *total_us)
{
    pthread_mutex_lock(&r->e->mu); /* the scheduler may still be stepping a cancelled request */
    int64_t end = r->t_done ? r->t_done : now_us();
    *first_us = r->t_first ? r->t_first - r->t_submit : -1;
    *total_us = end - r->t_submit;
    pthread_mutex_unlock(&r->e->mu);
}

void eng_cancel(struct eng_req *r)
{
    struct engine *e = r->e;
    pthread_mutex_lock(&e->mu);
    if (r->state != REQ_DONE) {
        r->cancel = 1;
        pthread_cond_signal(&e->cv);
        while (r->state != REQ_DONE)
            pthread_cond_wait(&r->cv, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
}

void eng_release(struct eng_req *r)
{
    if (!r) return;
    eng_cancel(r);
    pthread_cond_destroy(&r->cv);
    gen_free(&r->g);
    buf_free(&r->out);
    free(r);
}

static int hist_text(struct buf *b, const char *name, const char *help, const struct hist *h)
{
    int rc = buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i <= NBOUNDS && rc == 0; i++) {
        cum += h->bucket[i];
        if (i < NBOUNDS)
            rc = buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, hist_bounds[i],
                            (unsigned long long)cum);
        else
            rc = buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    if (rc == 0)
        rc = buf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
                        (unsigned long long)h->count);
    return rc;
}

int eng_metrics(struct engine *e, struct buf *b)
{
    pthread_mutex_lock(&e->mu);
    int total = model_kv_blocks(e->kv), used = total - model_kv_free_blocks(e->kv);
    /* name, type, help, value */
    struct {
        const char *name, *type, *help;
        double v;
    } m[] = {
        {"orp_runtime_queue_length", "gauge", "requests waiting to run", e->nqueue},
        {"orp_runtime_running_requests", "gauge", "requests in the running batch", e->nrunning},
        {"orp_runtime_batch_requests_max", "gauge", "most requests one step has run", e->batch_max},
        {"orp_runtime_kv_blocks_total", "gauge", "KV cache blocks (16 positions each)", total},
        {"orp_runtime_kv_blocks_used", "gauge", "KV cache blocks held by running requests", used},
        {"orp_runtime_prompt_tokens_total", "counter", "prompt tokens run",
         (double)e->prompt_tokens},
        {"orp_runtime_generation_tokens_total", "counter", "tokens generated",
         (double)e->generation_tokens},
        {"orp_runtime_requests_finished_total", "counter", "requests that finished",
         (double)e->finished},
        {"orp_runtime_requests_cancelled_total", "counter", "requests the client cancelled",
         (double)e->cancelled},
        {"orp_runtime_requests_failed_total", "counter", "requests that failed (shutdown, memory)",
         (double)e->failed},
        {"orp_runtime_requests_rejected_total", "counter", "requests refused: the queue was full",
         (double)e->rejected},
        {"orp_runtime_steps_total", "counter", "batched forward steps", (double)e->steps},
        {"orp_runtime_device_sampled_tokens_total", "counter",
         "tokens sampled on the GPU (the rest on the host: penalties, logprobs, CPU)",
         (double)e->device_sampled},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof m / sizeof m[0] && rc == 0; i++)
        rc = buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.0f\n", m[i].name, m[i].help, m[i].name,
                        m[i].type, m[i].name, m[i].v);
    if (rc == 0)
        rc = hist_text(b, "orp_runtime_time_to_first_token_seconds",
                       "from arrival to the first generated token", &e->ttft);
    if (rc == 0)
        rc = hist_text(b, "orp_runtime_time_per_output_token_seconds",
                       "mean time between a finished request's generated tokens", &e->tpot);
    pthread_mutex_unlock(&e->mu);
    return rc;
}
