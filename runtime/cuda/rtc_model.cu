/* rtc_model: owns a model on the GPUs (see rtc_model.h): the ranks' weights, KV pools, buffers,
 * streams and communicators, the rank threads and the watchdog.
 *
 * A step (model_forward_batch through model.c's device hook): the caller's thread packs the
 * batch into one pinned buffer (rtc_plan_step: tokens, positions, KV slots, page tables,
 * attention items), wakes the rank threads and waits. Each rank copies the plan to its GPU and
 * runs, on its own stream:
 *
 *   x = embed[tokens]                      xb = bf16(rmsnorm(x) * attn_norm[0])
 *   per layer l:
 *     qkv = xb Wqkv^T                      (q, k, v rows of this rank's heads, one GEMM)
 *     q, cache[slot] <- rope(norm(qkv + b)) (Qwen2 bias, Qwen3 q/k norm, llama3 RoPE, BF16 KV)
 *     att = attention(q, paged cache)      (flash-style, split over the sequence when long)
 *     o = att Wo^T ; all-reduce(o)         (row-parallel o_proj)
 *     x += o ; xb = bf16(rmsnorm(x) * ffn_norm)
 *     gu = xb Wgu^T ; h = bf16(silu(g) * u) ; o = h Wdown^T ; all-reduce(o)
 *     x += o ; xb = bf16(rmsnorm(x) * (attn_norm[l+1] or the final norm))
 *   rank 0: logits = xb[rows wanting them] lm_head^T; rows sampled on the device: rtc_sample ->
 *           token ids copied back; logits copied to pinned memory only for the rows the host
 *           wants them for (logprobs, penalties: the engine samples those)
 *
 * The residual stream x is replicated on every rank and stays identical there: both all-reduces
 * give every rank the same bits (NCCL's sum, or the device collective's rank-order sum).
 *
 * Memory: every buffer is sized at load for max_rows rows; a longer batch runs in pieces of
 * max_rows (its earlier rows' KV is in the cache before the next piece reads it). The warm-up
 * step at load runs every kernel once, so cuBLAS and the lazily loaded modules have taken what
 * they take; no step allocates device memory.
 *
 * Failure: every CUDA, cuBLAS and NCCL call is checked (file:line logged). A rank that fails, a
 * step that outlives step_timeout_ms, or an NCCL communicator reporting an asynchronous error
 * leads to abort_all(): the host barriers open, ncclCommAbort releases ranks waiting in a
 * collective, and the process exits (the agent restarts the replica). */
#include "cuda_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" {
#include "rtc_model.h"
#include "safetensors.h"
}

#ifdef ORP_HAVE_NCCL
#include <nccl.h>
#define NCCL_CHECK(call)                                                                           \
    do {                                                                                           \
        ncclResult_t nr_ = (call);                                                                 \
        if (nr_ != ncclSuccess) {                                                                  \
            log_error("NCCL: %s failed: %s", #call, ncclGetErrorString(nr_));                      \
            return RTC_ECUDA;                                                                      \
        }                                                                                          \
    } while (0)
#endif

/* Pinned staging buffers per rank for the weight upload: two, so the CPU fills one while the
 * copy engine drains the other. */
#define STAGE_BYTES ((size_t)64 << 20)
/* Device memory left out of the KV cache for NCCL, cuBLAS and the driver's own needs. */
#define KV_RESERVE_BYTES ((size_t)512 << 20)
/* Attention blocks a step aims for before splitting sequences: two waves of 132 SMs. */
#define ATTN_TARGET_BLOCKS 264

#define RTC(call)                                                                                  \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != RTC_OK) {                                                                       \
            log_error("rtc: %s failed: %s", #call, rtc_strerror(rc_));                             \
            return rc_;                                                                            \
        }                                                                                          \
    } while (0)

/* What the rank threads are asked to do. */
enum job { JOB_LOAD, JOB_KV, JOB_STEP, JOB_FREE };

/* A layer on one rank: the device tensors of rtc_plan's slots (rtc_plan_layer_copies fills
 * them); BF16 matrices, F32 vectors, NULL where the architecture has none. */
struct dev_layer {
    void *w[RTC_W_NSLOTS];
};
#define W16(L, slot) ((const uint16_t *)(L)->w[slot])
#define W32(L, slot) ((const float *)(L)->w[slot])

/* A host barrier that an abort opens for good. */
struct hbar {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, count, aborted;
    uint64_t phase;
};

struct rank {
    struct rtc_model *m;
    int rank, device;
    struct rtc_shard sh;
    int qkv_rows;
    struct rtc_ctx *ctx;
    struct dev_layer *layer;
    uint16_t *embed, *lm_head; /* lm_head == embed when tied; NULL on ranks > 0 */
    float *final_norm, *inv_freq;
    uint16_t *kc, *vc;
    /* activations, [max_rows, ...] */
    float *x, *qkv, *q, *o, *gu, *part, *logits;
    uint16_t *xb, *att, *h, *xl;
    int32_t *d_tok; /* rank 0: the sampled tokens, [max_logits] */
    int32_t *d_step;
    /* upload staging */
    void *stage[2];
    cudaEvent_t stage_ev[2];
    int stage_next;
    cudaEvent_t ev_ready; /* device collective: this rank's buffer is complete */
    double uploaded;
    pthread_t th;
    int started;
    int rc;
    int stall_ms;
#ifdef ORP_HAVE_NCCL
    ncclComm_t comm;
#endif
};

struct rtc_model {
    struct model_config cfg;
    struct rtc_model_opts o;
    char dir[4096];
    int tp, ngpus;
    struct rank *rk;
    int kv_blocks;
    size_t block_bytes; /* one rank's */
    int part_rows;
    size_t step_words;
    int32_t *h_step; /* pinned */
    float *h_logits; /* pinned [max_logits, vocab] */
    int32_t *h_tok;  /* pinned [max_logits]: the tokens sampled on the device */
    struct rtc_step st;
    /* the rank threads' work */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    uint64_t gen;
    int pending, stop;
    int job; /* enum job */
    const struct st_set *set;
    /* device collective */
    struct hbar bar;
    float *red[RTC_MAX_RANKS];
    cudaEvent_t ev_sum;
    /* watchdog */
    pthread_t wd;
    int wd_started;
    int aborted, wd_stop;    /* __atomic builtins: read and written by several threads */
    long long step_start_ms; /* 0 when no step runs */
    double load_s, step_weight_bytes;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- barrier, abort, watchdog ------------------------------------------------------------- */

static void hbar_init(struct hbar *b, int n)
{
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->n = n;
}

static int hbar_wait(struct hbar *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t ph = b->phase;
    if (!b->aborted && ++b->count == b->n) {
        b->count = 0;
        b->phase++;
        pthread_cond_broadcast(&b->cv);
    }
    while (b->phase == ph && !b->aborted)
        pthread_cond_wait(&b->cv, &b->mu);
    int rc = b->aborted ? -1 : 0;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static void abort_all(struct rtc_model *m, const char *why)
{
    if (__atomic_exchange_n(&m->aborted, 1, __ATOMIC_SEQ_CST)) return;
    log_error("CUDA backend: %s: aborting the communicators", why);
    pthread_mutex_lock(&m->bar.mu);
    m->bar.aborted = 1;
    pthread_cond_broadcast(&m->bar.cv);
    pthread_mutex_unlock(&m->bar.mu);
#ifdef ORP_HAVE_NCCL
    for (int r = 0; r < m->tp; r++)
        if (m->rk[r].comm) {
            ncclResult_t nr = ncclCommAbort(m->rk[r].comm);
            if (nr != ncclSuccess) log_error("NCCL: ncclCommAbort: %s", ncclGetErrorString(nr));
            m->rk[r].comm = NULL;
        }
#endif
    if (m->o.on_abort) {
        m->o.on_abort(m->o.abort_arg, why);
        return;
    }
    log_error("CUDA backend: exiting so the agent restarts this replica");
    fflush(stderr);
    _exit(1);
}

/* Polls every 50 ms: the running step's age, and each communicator's asynchronous error. */
static void *watchdog(void *arg)
{
    struct rtc_model *m = (struct rtc_model *)arg;
    while (!__atomic_load_n(&m->wd_stop, __ATOMIC_SEQ_CST) &&
           !__atomic_load_n(&m->aborted, __ATOMIC_SEQ_CST)) {
        usleep(50 * 1000);
        long long t0 = __atomic_load_n(&m->step_start_ms, __ATOMIC_SEQ_CST);
        int limit = __atomic_load_n(&m->o.step_timeout_ms, __ATOMIC_SEQ_CST);
        if (t0 && now_ms() - t0 > limit) {
            char why[128];
            snprintf(why, sizeof why, "a step has run for more than %d ms", limit);
            abort_all(m, why);
            break;
        }
#ifdef ORP_HAVE_NCCL
        for (int r = 0; r < m->tp; r++) {
            ncclResult_t ae = ncclSuccess;
            if (m->rk[r].comm && ncclCommGetAsyncError(m->rk[r].comm, &ae) == ncclSuccess &&
                ae != ncclSuccess && ae != ncclInProgress) {
                char why[160];
                snprintf(why, sizeof why, "NCCL reports an asynchronous error on rank %d: %s", r,
                         ncclGetErrorString(ae));
                abort_all(m, why);
                break;
            }
        }
#endif
    }
    return NULL;
}

/* ---- the collective ----------------------------------------------------------------------- */

/* Sums buf (count floats, on this rank's device) over the ranks, in place, stream-ordered. */
static int allreduce(struct rank *rk, float *buf, size_t count)
{
    struct rtc_model *m = rk->m;
    if (m->tp == 1) return RTC_OK;
    if (rk->stall_ms) {
        usleep((useconds_t)rk->stall_ms * 1000);
        rk->stall_ms = 0;
    }
    if (__atomic_load_n(&m->aborted, __ATOMIC_SEQ_CST)) return RTC_ECUDA;
    cudaStream_t s = rtc_stream(rk->ctx);
    if (m->o.coll == RTC_COLL_NCCL) {
#ifdef ORP_HAVE_NCCL
        NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, rk->comm, s));
        return RTC_OK;
#else
        return RTC_EINVAL;
#endif
    }
    /* Device collective: every rank's buffer and readiness to rank 0, whose stream waits for all
     * of them, sums in rank order into every buffer, and signals ev_sum, which the others'
     * streams wait for. The host barriers only exchange pointers and events; no stream is
     * synchronised with the host. */
    m->red[rk->rank] = buf;
    CUDA_CHECK(cudaEventRecord(rk->ev_ready, s));
    if (hbar_wait(&m->bar) != 0) return RTC_ECUDA;
    if (rk->rank == 0) {
        for (int r = 1; r < m->tp; r++)
            CUDA_CHECK(cudaStreamWaitEvent(s, m->rk[r].ev_ready, 0));
        RTC(rtc_sum_ranks(rk->ctx, m->red, m->tp, count));
        CUDA_CHECK(cudaEventRecord(m->ev_sum, s));
    }
    if (hbar_wait(&m->bar) != 0) return RTC_ECUDA;
    if (rk->rank != 0) CUDA_CHECK(cudaStreamWaitEvent(s, m->ev_sum, 0));
    return RTC_OK;
}

/* ---- loading ------------------------------------------------------------------------------ */

static void *stage_buf(struct rank *rk, int *which)
{
    int i = rk->stage_next;
    rk->stage_next ^= 1;
    /* The copy that last used this buffer must have drained it. */
    if (cudaEventSynchronize(rk->stage_ev[i]) != cudaSuccess) return NULL;
    *which = i;
    return rk->stage[i];
}

static void to_bf16(const struct st_tensor *t, int64_t at, int64_t n, uint16_t *out)
{
    const unsigned char *src = t->data + (size_t)at * st_dtype_size(t->dtype);
    if (t->dtype == ST_BF16) {
        memcpy(out, src, (size_t)n * 2);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == ST_F16) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = st_f32_to_bf16(st_f16_to_f32(h));
        } else {
            float f;
            memcpy(&f, src + 4 * i, 4);
            out[i] = st_f32_to_bf16(f);
        }
    }
}

/* Rows [r0, r0 + nr) x columns [c0, c0 + nc) of 2-D tensor t, as BF16, to dst ([nr, nc]). */
static int up_bf16(struct rank *rk, uint16_t *dst, const struct st_tensor *t, int64_t r0,
                   int64_t nr, int64_t c0, int64_t nc)
{
    int64_t cols = t->ndim == 2 ? t->shape[1] : t->shape[0];
    int64_t per = (int64_t)(STAGE_BYTES / (2 * (size_t)nc));
    if (per < 1) return RTC_EINVAL;
    cudaStream_t s = rtc_stream(rk->ctx);
    for (int64_t r = 0; r < nr; r += per) {
        int64_t k = nr - r < per ? nr - r : per;
        int which;
        uint16_t *buf = (uint16_t *)stage_buf(rk, &which);
        if (!buf) {
            log_error("CUDA: waiting for a staging copy failed: %s",
                      cudaGetErrorString(cudaGetLastError()));
            return RTC_ECUDA;
        }
        for (int64_t i = 0; i < k; i++)
            to_bf16(t, (r0 + r + i) * cols + c0, nc, buf + i * nc);
        CUDA_CHECK(
            cudaMemcpyAsync(dst + r * nc, buf, (size_t)(k * nc) * 2, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaEventRecord(rk->stage_ev[which], s));
    }
    rk->uploaded += 2.0 * (double)(nr * nc);
    return RTC_OK;
}

/* n floats from element off of 1-D tensor t, to dst (F32). Small: a synchronous copy. */
static int up_f32(struct rank *rk, float *dst, const struct st_tensor *t, int64_t off, int64_t n)
{
    float *h = (float *)malloc((size_t)n * sizeof *h);
    if (!h) return RTC_ENOMEM;
    size_t es = st_dtype_size(t->dtype);
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *p = t->data + (size_t)(off + i) * es;
        uint16_t u;
        if (t->dtype == ST_F32) {
            memcpy(&h[i], p, 4);
        } else {
            memcpy(&u, p, 2);
            h[i] = t->dtype == ST_BF16 ? st_bf16_to_f32(u) : st_f16_to_f32(u);
        }
    }
    int rc = rtc_upload(rk->ctx, dst, h, (size_t)n * sizeof *h);
    free(h);
    rk->uploaded += 4.0 * (double)n;
    return rc;
}

static int dalloc(void *pp, size_t bytes)
{
    return rtc_malloc((void **)pp, bytes ? bytes : 16);
}

/* The tensor `name` (layer l when l >= 0) with the shape config.json implies. */
static const struct st_tensor *need(const struct rtc_model *m, int l, const char *name, int64_t d0,
                                    int64_t d1)
{
    char full[200];
    if (l >= 0)
        snprintf(full, sizeof full, "model.layers.%d.%s", l, name);
    else
        snprintf(full, sizeof full, "%s", name);
    const struct st_tensor *t = st_find(m->set, full);
    if (!t) {
        log_error("%s: tensor '%s' is missing", m->dir, full);
        return NULL;
    }
    if (t->ndim != (d1 ? 2 : 1) || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        log_error("%s: tensor '%s' does not have the shape config.json implies", t->file, full);
        return NULL;
    }
    return t;
}

#define NEED(var, l, name, d0, d1)                                                                 \
    const struct st_tensor *var = need(m, l, name, d0, d1);                                        \
    if (!var) return RTC_EINVAL

static int load_layer(struct rank *rk, int l)
{
    struct rtc_model *m = rk->m;
    const struct model_config *c = &m->cfg;
    struct dev_layer *L = &rk->layer[l];
    for (int sl = 0; sl < RTC_W_NSLOTS; sl++) {
        int64_t n = rtc_plan_slot_elems(c, &rk->sh, (enum rtc_wslot)sl);
        if (n)
            RTC(dalloc(&L->w[sl],
                       (size_t)n * (rtc_plan_slot_is_matrix((enum rtc_wslot)sl) ? 2 : 4)));
    }
    struct rtc_copy cp[RTC_MAX_COPIES];
    int ncp = rtc_plan_layer_copies(c, &rk->sh, cp);
    for (int i = 0; i < ncp; i++) {
        const struct rtc_copy *k = &cp[i];
        NEED(t, l, k->suffix, k->d0, k->d1);
        if (rtc_plan_slot_is_matrix(k->slot))
            RTC(up_bf16(rk, (uint16_t *)L->w[k->slot] + k->dst, t, k->r0, k->nr, k->c0, k->nc));
        else
            RTC(up_f32(rk, (float *)L->w[k->slot] + k->dst, t, k->r0, k->nr));
    }
    return RTC_OK;
}

/* Buffers for max_rows rows, the step plan, and rank 0's logits. */
static int alloc_buffers(struct rank *rk)
{
    struct rtc_model *m = rk->m;
    const struct model_config *c = &m->cfg;
    size_t R = (size_t)m->o.max_rows, dim = (size_t)c->dim, hd = (size_t)c->head_dim;
    size_t qdl = (size_t)rk->sh.heads * hd, f = (size_t)rk->sh.ffn;
    RTC(dalloc(&rk->x, R * dim * 4));
    RTC(dalloc(&rk->xb, R * dim * 2));
    RTC(dalloc(&rk->qkv, R * (size_t)rk->qkv_rows * 4));
    RTC(dalloc(&rk->q, R * qdl * 4));
    RTC(dalloc(&rk->att, R * qdl * 2));
    RTC(dalloc(&rk->o, R * dim * 4));
    RTC(dalloc(&rk->gu, R * 2 * f * 4));
    RTC(dalloc(&rk->h, R * f * 2));
    RTC(dalloc(&rk->part, (size_t)m->part_rows * rk->sh.heads * (hd + 2) * 4));
    RTC(dalloc(&rk->d_step, m->step_words * 4));
    RTC(dalloc(&rk->inv_freq, hd / 2 * 4));
    float *h = (float *)malloc(hd / 2 * sizeof *h);
    if (!h) return RTC_ENOMEM;
    rtc_plan_inv_freq(c, h);
    int rc = rtc_upload(rk->ctx, rk->inv_freq, h, hd / 2 * 4);
    free(h);
    if (rc != RTC_OK) return rc;
    if (rk->rank == 0) {
        RTC(dalloc(&rk->xl, (size_t)m->o.max_logits * dim * 2));
        RTC(dalloc(&rk->logits, (size_t)m->o.max_logits * c->vocab * 4));
        RTC(dalloc(&rk->d_tok, (size_t)m->o.max_logits * 4));
    }
    CUDA_CHECK(cudaEventCreateWithFlags(&rk->ev_ready, cudaEventDisableTiming));
    return RTC_OK;
}

static int rank_load(struct rank *rk)
{
    struct rtc_model *m = rk->m;
    const struct model_config *c = &m->cfg;
    RTC(rtc_ctx_new(rk->device, &rk->ctx));
    for (int i = 0; i < 2; i++) {
        CUDA_CHECK(cudaMallocHost(&rk->stage[i], STAGE_BYTES));
        CUDA_CHECK(cudaEventCreateWithFlags(&rk->stage_ev[i], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(rk->stage_ev[i], rtc_stream(rk->ctx)));
    }
    rk->layer = (struct dev_layer *)calloc((size_t)c->layers, sizeof *rk->layer);
    if (!rk->layer) return RTC_ENOMEM;
    {
        NEED(emb, -1, "model.embed_tokens.weight", c->vocab, c->dim);
        RTC(dalloc(&rk->embed, (size_t)c->vocab * c->dim * 2));
        RTC(up_bf16(rk, rk->embed, emb, 0, c->vocab, 0, c->dim));
    }
    for (int l = 0; l < c->layers; l++)
        RTC(load_layer(rk, l));
    NEED(norm, -1, "model.norm.weight", c->dim, 0);
    RTC(dalloc(&rk->final_norm, (size_t)c->dim * 4));
    RTC(up_f32(rk, rk->final_norm, norm, 0, c->dim));
    if (rk->rank == 0) {
        if (c->tied) {
            rk->lm_head = rk->embed;
        } else {
            NEED(lm, -1, "lm_head.weight", c->vocab, c->dim);
            RTC(dalloc(&rk->lm_head, (size_t)c->vocab * c->dim * 2));
            RTC(up_bf16(rk, rk->lm_head, lm, 0, c->vocab, 0, c->dim));
        }
    }
    RTC(alloc_buffers(rk));
    RTC(rtc_sync(rk->ctx));
    for (int i = 0; i < 2; i++) {
        CUDA_LOG(cudaFreeHost(rk->stage[i]));
        rk->stage[i] = NULL;
    }
    return RTC_OK;
}

static int rank_alloc_kv(struct rank *rk)
{
    RTC(rtc_ctx_use(rk->ctx));
    size_t each = (size_t)rk->m->kv_blocks * rk->m->block_bytes / 2;
    RTC(dalloc(&rk->kc, each));
    RTC(dalloc(&rk->vc, each));
    return RTC_OK;
}

/* ---- a step on one rank -------------------------------------------------------------------- */

static int rank_step(struct rank *rk)
{
    struct rtc_model *m = rk->m;
    const struct model_config *c = &m->cfg;
    const struct rtc_step *st = &m->st;
    const struct rtc_shard *sh = &rk->sh;
    struct rtc_ctx *ctx = rk->ctx;
    cudaStream_t s = rtc_stream(ctx);
    int n = st->n, dim = c->dim, hd = c->head_dim, qdl = sh->heads * hd, f = sh->ffn;
    const int32_t *d = rk->d_step;
    RTC(rtc_ctx_use(ctx));
    CUDA_CHECK(cudaMemcpyAsync(rk->d_step, m->h_step, st->words * 4, cudaMemcpyHostToDevice, s));
    RTC(rtc_embed(ctx, rk->x, rk->embed, d + st->off_tokens, n, dim));
    RTC(rtc_add_rmsnorm(ctx, rk->x, NULL, W32(&rk->layer[0], RTC_W_ATTN_NORM), rk->xb, n, dim,
                        c->eps));
    struct rtc_attn_args a;
    memset(&a, 0, sizeof a);
    a.q = rk->q, a.kc = rk->kc, a.vc = rk->vc, a.pos = d + st->off_pos;
    a.row_seq = d + st->off_row_seq, a.seq_off = d + st->off_seq_off, a.blocks = d + st->off_blocks;
    a.items = d + st->off_items, a.part = rk->part, a.out = rk->att, a.n = n;
    a.nitems = st->nitems, a.heads = sh->heads, a.kv_heads = sh->kv_heads, a.head_dim = hd;
    a.layers = c->layers, a.window = c->sliding_window, a.nsplit = st->nsplit, a.qpw = st->qpw;
    a.scale = 1.0f / sqrtf((float)hd);
    struct rtc_qkv_shape qs = {sh->heads, sh->kv_heads, hd, c->layers, 0, c->eps};
    for (int l = 0; l < c->layers; l++) {
        const struct dev_layer *L = &rk->layer[l];
        RTC(rtc_gemm_bf16x(ctx, rk->qkv, W16(L, RTC_W_QKV), rk->xb, n, rk->qkv_rows, dim));
        qs.layer = l;
        RTC(rtc_qkv_rope_cache(ctx, rk->q, rk->qkv, W32(L, RTC_W_BQKV), W32(L, RTC_W_QNORM),
                               W32(L, RTC_W_KNORM), rk->inv_freq, d + st->off_pos, d + st->off_slot,
                               rk->kc, rk->vc, &qs, n));
        a.layer = l;
        RTC(rtc_attention_paged(ctx, &a));
        RTC(rtc_gemm_bf16x(ctx, rk->o, W16(L, RTC_W_O), rk->att, n, dim, qdl));
        RTC(allreduce(rk, rk->o, (size_t)n * dim));
        RTC(rtc_add_rmsnorm(ctx, rk->x, rk->o, W32(L, RTC_W_FFN_NORM), rk->xb, n, dim, c->eps));
        RTC(rtc_gemm_bf16x(ctx, rk->gu, W16(L, RTC_W_GU), rk->xb, n, 2 * f, dim));
        RTC(rtc_silu_mul(ctx, rk->h, rk->gu, n, f));
        RTC(rtc_gemm_bf16x(ctx, rk->o, W16(L, RTC_W_DOWN), rk->h, n, dim, f));
        RTC(allreduce(rk, rk->o, (size_t)n * dim));
        const float *next =
            l + 1 < c->layers ? W32(&rk->layer[l + 1], RTC_W_ATTN_NORM) : rk->final_norm;
        RTC(rtc_add_rmsnorm(ctx, rk->x, rk->o, next, rk->xb, n, dim, c->eps));
    }
    if (rk->rank == 0 && st->nlogits > 0) {
        RTC(rtc_gather_rows(ctx, rk->xl, rk->xb, d + st->off_logit_idx, st->nlogits, dim));
        RTC(rtc_gemm_bf16x(ctx, rk->logits, rk->lm_head, rk->xl, st->nlogits, c->vocab, dim));
        /* Sampled rows come back as token ids; only the first nhost rows' logits are copied. */
        if (st->nsample > 0) {
            RTC(rtc_sample(ctx, rk->d_tok, rk->logits,
                           (const struct rtc_sample_param *)(d + st->off_sample), st->nlogits,
                           c->vocab));
            CUDA_CHECK(cudaMemcpyAsync(m->h_tok, rk->d_tok, (size_t)st->nlogits * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, s));
        }
        if (st->nhost > 0)
            CUDA_CHECK(cudaMemcpyAsync(m->h_logits, rk->logits,
                                       (size_t)st->nhost * c->vocab * sizeof(float),
                                       cudaMemcpyDeviceToHost, s));
    }
    RTC(rtc_sync(ctx));
    return RTC_OK;
}

static void rank_free(struct rank *rk)
{
    if (!rk->ctx) return;
    rtc_ctx_use(rk->ctx);
    for (int l = 0; rk->layer && l < rk->m->cfg.layers; l++) {
        for (int sl = 0; sl < RTC_W_NSLOTS; sl++)
            rtc_free(rk->layer[l].w[sl]);
    }
    free(rk->layer);
    if (rk->lm_head != rk->embed) rtc_free(rk->lm_head);
    void *ps[] = {rk->embed, rk->final_norm, rk->inv_freq, rk->kc, rk->vc,     rk->x,
                  rk->qkv,   rk->q,          rk->o,        rk->gu, rk->part,   rk->logits,
                  rk->xb,    rk->att,        rk->h,        rk->xl, rk->d_step, rk->d_tok};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        rtc_free(ps[i]);
    for (int i = 0; i < 2; i++) {
        if (rk->stage[i]) CUDA_LOG(cudaFreeHost(rk->stage[i]));
        if (rk->stage_ev[i]) CUDA_LOG(cudaEventDestroy(rk->stage_ev[i]));
    }
    if (rk->ev_ready) CUDA_LOG(cudaEventDestroy(rk->ev_ready));
#ifdef ORP_HAVE_NCCL
    if (rk->comm && ncclCommDestroy(rk->comm) != ncclSuccess)
        log_error("NCCL: ncclCommDestroy failed");
#endif
    rtc_ctx_free(rk->ctx);
    rk->ctx = NULL;
}

/* ---- the rank threads ---------------------------------------------------------------------- */

static void *rank_thread(void *arg)
{
    struct rank *rk = (struct rank *)arg;
    struct rtc_model *m = rk->m;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&m->mu);
        while (m->gen == seen && !m->stop)
            pthread_cond_wait(&m->cv_work, &m->mu);
        if (m->stop) {
            pthread_mutex_unlock(&m->mu);
            break;
        }
        seen = m->gen;
        int job = m->job;
        pthread_mutex_unlock(&m->mu);
        int rc = job == JOB_LOAD   ? rank_load(rk)
                 : job == JOB_KV   ? rank_alloc_kv(rk)
                 : job == JOB_STEP ? rank_step(rk)
                                   : (rank_free(rk), RTC_OK);
        rk->rc = rc;
        if (rc != RTC_OK && job == JOB_STEP) {
            char why[96];
            snprintf(why, sizeof why, "rank %d failed a step (%s)", rk->rank, rtc_strerror(rc));
            abort_all(m, why); /* the other ranks may be waiting for this one */
        }
        pthread_mutex_lock(&m->mu);
        if (--m->pending == 0) pthread_cond_signal(&m->cv_done);
        pthread_mutex_unlock(&m->mu);
    }
    return NULL;
}

/* Runs job on every rank thread and waits; 0 when every rank succeeded. */
static int run_job(struct rtc_model *m, int job)
{
    pthread_mutex_lock(&m->mu);
    m->job = job;
    m->pending = m->tp;
    m->gen++;
    pthread_cond_broadcast(&m->cv_work);
    while (m->pending > 0)
        pthread_cond_wait(&m->cv_done, &m->mu);
    pthread_mutex_unlock(&m->mu);
    int rc = RTC_OK;
    for (int r = 0; r < m->tp; r++)
        if (m->rk[r].rc != RTC_OK) rc = m->rk[r].rc;
    return rc;
}

/* ---- the model.h backend ----------------------------------------------------------------- */

/* One device step of at most max_rows rows and max_logits logit rows. */
static int step_piece(struct rtc_model *m, const struct model_dev_row *rows, int n)
{
    const struct model_config *c = &m->cfg;
    if (rtc_plan_step(rows, n, m->rk[0].sh.heads / m->rk[0].sh.kv_heads, m->rk[0].sh.kv_heads,
                      ATTN_TARGET_BLOCKS, m->part_rows, m->h_step, m->step_words, &m->st) != 0) {
        log_error("CUDA backend: a step of %d rows does not fit its plan (a bug)", n);
        return -1;
    }
    __atomic_store_n(&m->step_start_ms, now_ms(), __ATOMIC_SEQ_CST);
    int rc = __atomic_load_n(&m->aborted, __ATOMIC_SEQ_CST) ? RTC_ECUDA : run_job(m, JOB_STEP);
    __atomic_store_n(&m->step_start_ms, 0, __ATOMIC_SEQ_CST);
    if (rc != RTC_OK) return -1;
    const int32_t *lidx = m->h_step + m->st.off_logit_idx; /* host rows first (rtc_plan_step) */
    for (int i = 0; i < m->st.nlogits; i++) {
        const struct model_dev_row *row = &rows[lidx[i]];
        if (i < m->st.nhost)
            memcpy(row->logits, m->h_logits + (size_t)i * c->vocab,
                   (size_t)c->vocab * sizeof(float));
        if (row->sample) *row->token_out = m->h_tok[i];
    }
    return 0;
}

static int dev_forward(void *self, const struct model_dev_row *rows, int n)
{
    struct rtc_model *m = (struct rtc_model *)self;
    for (int r0 = 0; r0 < n;) {
        int k = 0, nl = 0;
        while (r0 + k < n && k < m->o.max_rows &&
               nl + (rows[r0 + k].logits || rows[r0 + k].sample) <= m->o.max_logits) {
            nl += rows[r0 + k].logits || rows[r0 + k].sample;
            k++;
        }
        if (step_piece(m, rows + r0, k) != 0) return -1;
        r0 += k;
    }
    return 0;
}

static size_t dev_kv_block_bytes(void *self)
{
    struct rtc_model *m = (struct rtc_model *)self;
    return m->block_bytes * (size_t)m->tp;
}

static int dev_kv_blocks(void *self)
{
    return ((struct rtc_model *)self)->kv_blocks;
}

static void dev_free(void *self)
{
    rtc_model_free((struct rtc_model *)self);
}

static const struct model_dev_ops rtc_ops = {"cuda",      dev_kv_block_bytes, dev_kv_blocks,
                                             dev_forward, dev_free,           1};

/* ---- open / free --------------------------------------------------------------------------- */

extern "C" void rtc_model_opts_default(struct rtc_model_opts *o)
{
    memset(o, 0, sizeof *o);
    o->tp = 1;
    o->coll = RTC_COLL_NCCL;
    o->mem_fraction = 0.9;
    o->max_rows = 2112;
    o->max_logits = 64;
    o->step_timeout_ms = 120000;
}

/* Every rank on one GPU with one pinned-host plan; a warm-up prefill of a few rows and a decode
 * row, which loads every kernel this model uses and lets cuBLAS take its memory now. */
static int warm_up(struct rtc_model *m)
{
    int rows = m->kv_blocks * RTC_KV_BLOCK < 32 ? m->kv_blocks * RTC_KV_BLOCK - 1 : 31;
    if (rows > m->o.max_rows - 1) rows = m->o.max_rows - 1;
    if (rows < 1) return 0;
    int nb = rows / RTC_KV_BLOCK + 1;
    int *blocks = (int *)malloc((size_t)nb * sizeof *blocks);
    struct model_dev_row *dr = (struct model_dev_row *)calloc((size_t)rows + 1, sizeof *dr);
    float *lg = (float *)malloc((size_t)m->cfg.vocab * sizeof *lg);
    int rc = blocks && dr && lg ? 0 : -1;
    for (int i = 0; rc == 0 && i < nb; i++)
        blocks[i] = i;
    for (int r = 0; rc == 0 && r <= rows; r++)
        dr[r] = (struct model_dev_row){0, r, blocks, nb, m, r == rows - 1 ? lg : NULL, NULL, NULL};
    /* The decode row is also sampled (top-k and top-p: every branch of the sampling kernel). */
    const struct model_sample ms = {0.7f, 0.9f, 50, 0.5f};
    int tok = 0;
    if (rc == 0) rc = dev_forward(m, dr, rows); /* a prompt chunk */
    if (rc == 0) {
        dr[rows].logits = lg, dr[rows].sample = &ms, dr[rows].token_out = &tok;
        rc = dev_forward(m, dr + rows, 1); /* a decode row */
    }
    free(blocks);
    free(dr);
    free(lg);
    return rc;
}

extern "C" struct rtc_model *rtc_model_open(const char *dir, const struct rtc_model_opts *o,
                                            char *err, size_t errlen)
{
    long long t0 = now_ms();
    struct rtc_model *m = (struct rtc_model *)calloc(1, sizeof *m);
    if (!m) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    m->o = *o;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv_work, NULL);
    pthread_cond_init(&m->cv_done, NULL);
    if (model_config_load(dir, &m->cfg, err, errlen) != 0) {
        free(m);
        return NULL;
    }
    const struct model_config *c = &m->cfg;
    m->ngpus = rtc_device_count();
    m->tp = o->tp;
    if (rtc_plan_check_tp(c, o->tp, m->ngpus, o->coll, err, errlen) != 0) {
        free(m);
        return NULL;
    }
#ifndef ORP_HAVE_NCCL
    if (o->coll == RTC_COLL_NCCL && o->tp > 1) {
        seterr(err, errlen, "this build has no NCCL: use the device collective for --tp > 1");
        free(m);
        return NULL;
    }
#endif
    if (c->head_dim > RTC_HEAD_DIM_MAX || o->max_rows < 2 || o->max_logits < 1 ||
        o->mem_fraction <= 0 || o->mem_fraction > 1) {
        seterr(err, errlen,
               "%s: head_dim %d is over %d, or the options are out of range (rows %d, logit rows "
               "%d, memory fraction %g)",
               dir, c->head_dim, RTC_HEAD_DIM_MAX, o->max_rows, o->max_logits, o->mem_fraction);
        free(m);
        return NULL;
    }
    m->rk = (struct rank *)calloc((size_t)m->tp, sizeof *m->rk);
    m->part_rows = o->max_rows > 64 * RTC_ATTN_MAX_SPLIT ? o->max_rows : 64 * RTC_ATTN_MAX_SPLIT;
    hbar_init(&m->bar, m->tp);
    struct st_set *set = st_open(dir, err, errlen);
    if (!m->rk || !set) {
        if (!m->rk) seterr(err, errlen, "out of memory");
        st_close(set);
        free(m->rk);
        free(m);
        return NULL;
    }
    m->set = set;
    int fail = 0;
    for (int r = 0; r < m->tp; r++) {
        struct rank *rk = &m->rk[r];
        rk->m = m;
        rk->rank = r;
        rk->device = rtc_plan_device_of(r, m->ngpus);
        rtc_plan_shard(c, m->tp, r, &rk->sh);
        rk->qkv_rows = (rk->sh.heads + 2 * rk->sh.kv_heads) * c->head_dim;
        if (!fail && pthread_create(&rk->th, NULL, rank_thread, rk) == 0)
            rk->started = 1;
        else
            fail = 1;
    }
    m->block_bytes = rtc_plan_block_bytes(c, &m->rk[0].sh);
    int rc = fail ? RTC_ENOMEM : run_job(m, JOB_LOAD);
    st_close(set);
    m->set = NULL;
    if (rc != RTC_OK) {
        seterr(err, errlen, "%s: loading the weights onto the GPU failed (%s; see the log)", dir,
               rtc_strerror(rc));
        rtc_model_free(m);
        return NULL;
    }
#ifdef ORP_HAVE_NCCL
    if (m->tp > 1 && o->coll == RTC_COLL_NCCL) {
        ncclComm_t comms[RTC_MAX_RANKS];
        int devs[RTC_MAX_RANKS];
        for (int r = 0; r < m->tp; r++)
            devs[r] = m->rk[r].device;
        ncclResult_t nr = ncclCommInitAll(comms, m->tp, devs);
        if (nr != ncclSuccess) {
            seterr(err, errlen, "NCCL: ncclCommInitAll over %d GPUs failed: %s", m->tp,
                   ncclGetErrorString(nr));
            rtc_model_free(m);
            return NULL;
        }
        for (int r = 0; r < m->tp; r++)
            m->rk[r].comm = comms[r];
    }
#endif
    if (m->tp > 1 && o->coll == RTC_COLL_DEVICE) {
        /* Rank 0's kernel reads and writes every rank's buffer: the other GPUs must be peers. */
        CUDA_LOG(cudaSetDevice(m->rk[0].device));
        for (int r = 1; r < m->tp; r++) {
            int d = m->rk[r].device, ok = 0;
            if (d == m->rk[0].device) continue;
            if (cudaDeviceCanAccessPeer(&ok, m->rk[0].device, d) != cudaSuccess || !ok) {
                seterr(err, errlen, "the device collective needs GPU %d to reach GPU %d",
                       m->rk[0].device, d);
                rtc_model_free(m);
                return NULL;
            }
            cudaError_t pe = cudaDeviceEnablePeerAccess(d, 0);
            if (pe != cudaSuccess && pe != cudaErrorPeerAccessAlreadyEnabled) {
                seterr(err, errlen, "cudaDeviceEnablePeerAccess(%d): %s", d,
                       cudaGetErrorString(pe));
                rtc_model_free(m);
                return NULL;
            }
            cudaGetLastError();
        }
        if (cudaEventCreateWithFlags(&m->ev_sum, cudaEventDisableTiming) != cudaSuccess) {
            seterr(err, errlen, "cudaEventCreate failed");
            rtc_model_free(m);
            return NULL;
        }
    }
    /* The KV cache: what the memory fraction leaves on the fullest GPU, the same count on every
     * rank (the block ids are shared). */
    int64_t blocks = INT32_MAX;
    size_t total = 0, free_b = 0;
    for (int g = 0; g < m->ngpus && g < m->tp; g++) {
        int here = 0;
        for (int r = 0; r < m->tp; r++)
            here += m->rk[r].device == g;
        if (cudaSetDevice(g) != cudaSuccess || cudaMemGetInfo(&free_b, &total) != cudaSuccess) {
            seterr(err, errlen, "cudaMemGetInfo on GPU %d failed", g);
            rtc_model_free(m);
            return NULL;
        }
        int64_t b = rtc_plan_kv_blocks(total, free_b, o->mem_fraction, KV_RESERVE_BYTES,
                                       m->block_bytes, here);
        if (b < blocks) blocks = b;
    }
    if (o->kv_blocks_max > 0 && blocks > o->kv_blocks_max) blocks = o->kv_blocks_max;
    int64_t ctx_blocks = (c->max_pos + RTC_KV_BLOCK - 1) / RTC_KV_BLOCK;
    if (blocks < 1) {
        seterr(err, errlen,
               "no GPU memory is left for the KV cache (--gpu-memory-fraction %.2f of %.1f GiB, "
               "%.1f GiB free after the weights)",
               o->mem_fraction, (double)total / (1 << 30), (double)free_b / (1 << 30));
        rtc_model_free(m);
        return NULL;
    }
    m->kv_blocks = (int)(blocks > INT32_MAX / 2 ? INT32_MAX / 2 : blocks);
    int group = m->rk[0].sh.heads / m->rk[0].sh.kv_heads;
    m->step_words = rtc_plan_step_words(o->max_rows, m->kv_blocks, group);
    CUDA_LOG(cudaSetDevice(m->rk[0].device));
    if (cudaMallocHost((void **)&m->h_step, m->step_words * 4) != cudaSuccess ||
        cudaMallocHost((void **)&m->h_logits, (size_t)o->max_logits * c->vocab * 4) !=
            cudaSuccess ||
        cudaMallocHost((void **)&m->h_tok, (size_t)o->max_logits * 4) != cudaSuccess) {
        seterr(err, errlen, "cannot pin host memory for the step plan and the logits");
        rtc_model_free(m);
        return NULL;
    }
    /* d_step was sized before the pool's size was known: size it now, then the KV. */
    for (int r = 0; r < m->tp; r++) {
        CUDA_LOG(cudaSetDevice(m->rk[r].device));
        rtc_free(m->rk[r].d_step);
        m->rk[r].d_step = NULL;
        if (rtc_malloc((void **)&m->rk[r].d_step, m->step_words * 4) != RTC_OK) {
            seterr(err, errlen, "out of device memory for the step plan");
            rtc_model_free(m);
            return NULL;
        }
    }
    if (run_job(m, JOB_KV) != RTC_OK) {
        seterr(err, errlen, "allocating %d KV blocks failed", m->kv_blocks);
        rtc_model_free(m);
        return NULL;
    }
    log_info("CUDA KV cache: %d blocks of %d positions, %.2f GiB per rank (%.2f of %.1f GiB per "
             "GPU, %.2f GiB free after the weights); %lld full contexts of %d",
             m->kv_blocks, RTC_KV_BLOCK, (double)m->kv_blocks * m->block_bytes / (1 << 30),
             o->mem_fraction, (double)total / (1 << 30), (double)free_b / (1 << 30),
             (long long)(m->kv_blocks / ctx_blocks), c->max_pos);
    if (pthread_create(&m->wd, NULL, watchdog, m) == 0) m->wd_started = 1;
    if (!m->wd_started || warm_up(m) != 0) {
        seterr(err, errlen, "%s: the warm-up step on the GPU failed (see the log)", dir);
        rtc_model_free(m);
        return NULL;
    }
    m->step_weight_bytes = rtc_plan_weight_bytes(c, &m->rk[0].sh, 0);
    m->load_s = (double)(now_ms() - t0) / 1e3;
    double up = 0;
    for (int r = 0; r < m->tp; r++)
        up += m->rk[r].uploaded;
    log_info("CUDA model loaded in %.2f s: %.2f GiB of BF16 weights on %d GPU%s, tp %d (%s)",
             m->load_s, up / (1 << 30), m->ngpus < m->tp ? m->ngpus : m->tp,
             m->ngpus == 1 ? "" : "s", m->tp,
             o->coll == RTC_COLL_NCCL ? "NCCL" : "device collective");
    return m;
}

extern "C" struct model *rtc_model_as_model(struct rtc_model *rm, char *err, size_t errlen)
{
    return model_new_dev(&rm->cfg, rm->tp, &rtc_ops, rm, err, errlen);
}

extern "C" void rtc_model_free(struct rtc_model *m)
{
    if (!m) return;
    if (m->wd_started) {
        __atomic_store_n(&m->wd_stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(m->wd, NULL);
    }
    int all = 1;
    for (int r = 0; r < m->tp; r++)
        all &= m->rk[r].started;
    if (all && !__atomic_load_n(&m->aborted, __ATOMIC_SEQ_CST))
        run_job(m, JOB_FREE); /* each rank frees on its own thread */
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_cond_broadcast(&m->cv_work);
    pthread_mutex_unlock(&m->mu);
    for (int r = 0; r < m->tp; r++)
        if (m->rk[r].started) pthread_join(m->rk[r].th, NULL);
    if (m->ev_sum) CUDA_LOG(cudaEventDestroy(m->ev_sum));
    if (m->h_step) CUDA_LOG(cudaFreeHost(m->h_step));
    if (m->h_logits) CUDA_LOG(cudaFreeHost(m->h_logits));
    if (m->h_tok) CUDA_LOG(cudaFreeHost(m->h_tok));
    free(m->rk);
    free(m);
}

extern "C" void rtc_model_get_info(const struct rtc_model *m, struct rtc_model_info *out)
{
    memset(out, 0, sizeof *out);
    out->load_s = m->load_s;
    for (int r = 0; r < m->tp; r++)
        out->upload_bytes += m->rk[r].uploaded;
    out->step_weight_bytes = m->step_weight_bytes;
    out->kv_blocks = m->kv_blocks;
    out->kv_bytes = (double)m->kv_blocks * m->block_bytes * m->tp;
    out->tp = m->tp;
    out->ngpus = m->ngpus;
}

extern "C" int rtc_model_measure_d2d(struct rtc_model *m, size_t bytes, int reps, double *gbps)
{
    RTC(rtc_ctx_use(m->rk[0].ctx));
    return rtc_measure_d2d(m->rk[0].ctx, bytes, reps, gbps);
}

extern "C" void rtc_model_debug_stall(struct rtc_model *m, int rank, int ms)
{
    if (rank >= 0 && rank < m->tp) m->rk[rank].stall_ms = ms;
}

extern "C" int rtc_model_mem_info(struct rtc_model *m, size_t *free_bytes, size_t *total_bytes)
{
    return rtc_mem_info(m->rk[0].ctx, free_bytes, total_bytes);
}

extern "C" void rtc_model_set_step_timeout(struct rtc_model *m, int ms)
{
    __atomic_store_n(&m->o.step_timeout_ms, ms, __ATOMIC_SEQ_CST);
}
