/* test_rtc_pipeline: the CUDA backend's step, run on the CPU as a model.h device backend (the
 * "twin"): the same weight copies (rtc_plan_layer_copies: fused QKV and gate/up, column slices of
 * o_proj and down_proj, per TP rank), the same step plans (rtc_plan_step: KV slots in the pool's
 * pages, page tables, runs), the same sequence of operations as rtc_model.cu's rank_step, each
 * done by the kernel's C twin in cpu_ref.c (BF16 GEMM inputs, BF16 KV cache, BF16 attention
 * output, F32 residual), the all-reduce as a rank-order sum, all driven through model.c's device
 * hook (model_new_dev) like the GPU backend. Its logits must match the CPU backend's for every
 * architecture at TP 1, 2 and 4, and the Hugging Face goldens when present, within the BF16
 * tolerance test_cuda_model uses on the GPU (model_check.h). So what the GPU runs is checked
 * here as a whole, and kernel by kernel against the same twins by test_cuda_kernels; only the
 * CUDA code itself is not. Needs no GPU. */
#include "cpu_ref.h"
#include "engine.h"
#include "model_check.h"
#include "rtc_plan.h"

#define MAX_TP 4
#define NBLOCKS 64

struct hlayer {
    void *w[RTC_W_NSLOTS];
};

struct hrank {
    struct rtc_shard sh;
    int qkv_rows;
    struct hlayer *L;
    uint16_t *kc, *vc;
};

struct twin {
    struct model_config c;
    int tp;
    struct hrank rk[MAX_TP];
    uint16_t *embed, *lm_head; /* [vocab, dim] */
    float *final_norm, *inv_freq;
};

/* Copies one rtc_copy from the checkpoint (any dtype) into host memory, as the GPU load does. */
static void run_copy(const struct st_set *st, int l, const struct rtc_copy *k, void *slot)
{
    char name[200];
    snprintf(name, sizeof name, "model.layers.%d.%s", l, k->suffix);
    const struct st_tensor *t = st_find(st, name);
    CHECK(t != NULL);
    CHECK(t->shape[0] == k->d0 && (k->d1 == 0 ? t->ndim == 1 : t->shape[1] == k->d1));
    float *all = malloc((size_t)t->numel * sizeof *all);
    CHECK(all);
    st_to_f32(t, all);
    int64_t cols = k->d1 ? k->d1 : 1;
    for (int64_t r = 0; r < k->nr; r++)
        for (int64_t c = 0; c < k->nc; c++) {
            float v = all[(k->r0 + r) * cols + k->c0 + c];
            if (rtc_plan_slot_is_matrix(k->slot))
                ((uint16_t *)slot)[k->dst + r * k->nc + c] = ref_f32_to_bf16(v);
            else
                ((float *)slot)[k->dst + r] = v;
        }
    free(all);
}

static uint16_t *whole_bf16(const struct st_set *st, const char *name, size_t n)
{
    const struct st_tensor *t = st_find(st, name);
    CHECK(t != NULL && (size_t)t->numel == n);
    float *f = malloc(n * sizeof *f);
    uint16_t *b = malloc(n * sizeof *b);
    CHECK(f && b);
    st_to_f32(t, f);
    for (size_t i = 0; i < n; i++)
        b[i] = ref_f32_to_bf16(f[i]);
    free(f);
    return b;
}

static void twin_load(struct twin *tw, const char *dir, int tp)
{
    char err[1024];
    CHECK(model_config_load(dir, &tw->c, err, sizeof err) == 0);
    const struct model_config *c = &tw->c;
    tw->tp = tp;
    struct st_set *st = st_open(dir, err, sizeof err);
    CHECK(st != NULL);
    size_t vd = (size_t)c->vocab * c->dim;
    tw->embed = whole_bf16(st, "model.embed_tokens.weight", vd);
    tw->lm_head = c->tied ? tw->embed : whole_bf16(st, "lm_head.weight", vd);
    tw->final_norm = malloc((size_t)c->dim * 4);
    tw->inv_freq = malloc((size_t)c->head_dim / 2 * 4);
    CHECK(tw->final_norm && tw->inv_freq);
    st_to_f32(st_find(st, "model.norm.weight"), tw->final_norm);
    rtc_plan_inv_freq(c, tw->inv_freq);
    for (int r = 0; r < tp; r++) {
        struct hrank *rk = &tw->rk[r];
        rtc_plan_shard(c, tp, r, &rk->sh);
        rk->qkv_rows = (rk->sh.heads + 2 * rk->sh.kv_heads) * c->head_dim;
        rk->L = calloc((size_t)c->layers, sizeof *rk->L);
        size_t cache = (size_t)NBLOCKS * c->layers * 16 * rk->sh.kv_heads * c->head_dim;
        rk->kc = calloc(cache, 2), rk->vc = calloc(cache, 2);
        CHECK(rk->L && rk->kc && rk->vc);
        for (int l = 0; l < c->layers; l++) {
            for (int sl = 0; sl < RTC_W_NSLOTS; sl++) {
                int64_t n = rtc_plan_slot_elems(c, &rk->sh, (enum rtc_wslot)sl);
                rk->L[l].w[sl] = n ? malloc((size_t)n * 4) : NULL;
                CHECK(!n || rk->L[l].w[sl]);
            }
            struct rtc_copy cp[RTC_MAX_COPIES];
            int ncp = rtc_plan_layer_copies(c, &rk->sh, cp);
            for (int i = 0; i < ncp; i++)
                run_copy(st, l, &cp[i], rk->L[l].w[cp[i].slot]);
        }
    }
    st_close(st);
}

static void twin_free(struct twin *tw)
{
    for (int r = 0; r < tw->tp; r++) {
        for (int l = 0; l < tw->c.layers; l++)
            for (int sl = 0; sl < RTC_W_NSLOTS; sl++)
                free(tw->rk[r].L[l].w[sl]);
        free(tw->rk[r].L), free(tw->rk[r].kc), free(tw->rk[r].vc);
    }
    if (tw->lm_head != tw->embed) free(tw->lm_head);
    free(tw->embed), free(tw->final_norm), free(tw->inv_freq);
}

/* y[n, rows] = BF16 x[n, cols] W^T (ref_gemm_bf16 rounds x, which is BF16 already: exact). */
static void gemm(float *y, const void *w, const uint16_t *x, int n, int rows, int cols)
{
    float *xf = malloc((size_t)n * cols * sizeof *xf);
    CHECK(xf);
    for (size_t i = 0; i < (size_t)n * cols; i++)
        xf[i] = ref_bf16_to_f32(x[i]);
    ref_gemm_bf16(y, w, xf, n, rows, cols);
    free(xf);
}

/* Sums bufs[r] over the ranks in rank order into every one (the device collective's rule). */
static void allreduce(float **bufs, int tp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float s = bufs[0][i];
        for (int r = 1; r < tp; r++)
            s += bufs[r][i];
        for (int r = 0; r < tp; r++)
            bufs[r][i] = s;
    }
}

/* rank_step on the CPU. */
static void twin_step(struct twin *tw, const struct model_dev_row *rows, int n)
{
    const struct model_config *c = &tw->c;
    int dim = c->dim, hd = c->head_dim, tp = tw->tp;
    int group = tw->rk[0].sh.heads / tw->rk[0].sh.kv_heads;
    size_t cap = rtc_plan_step_words(n, NBLOCKS, group);
    int32_t *buf = malloc(cap * sizeof *buf);
    CHECK(buf);
    struct rtc_step st;
    CHECK(rtc_plan_step(rows, n, group, tw->rk[0].sh.kv_heads, 264, 4096, buf, cap, &st) == 0);
    const int32_t *tok = buf + st.off_tokens, *pos = buf + st.off_pos, *slot = buf + st.off_slot;
    float *x[MAX_TP], *o[MAX_TP];
    uint16_t *xb[MAX_TP];
    size_t nd = (size_t)n * dim;
    for (int r = 0; r < tp; r++) {
        x[r] = malloc(nd * 4), o[r] = malloc(nd * 4), xb[r] = malloc(nd * 2);
        CHECK(x[r] && o[r] && xb[r]);
        for (int t = 0; t < n; t++)
            for (int i = 0; i < dim; i++)
                x[r][(size_t)t * dim + i] = ref_bf16_to_f32(tw->embed[(size_t)tok[t] * dim + i]);
        ref_add_rmsnorm(x[r], NULL, tw->rk[r].L[0].w[RTC_W_ATTN_NORM], xb[r], n, dim, c->eps);
    }
    for (int l = 0; l < c->layers; l++) {
        for (int r = 0; r < tp; r++) {
            struct hrank *rk = &tw->rk[r];
            struct hlayer *L = &rk->L[l];
            int ql = rk->sh.heads * hd, f = rk->sh.ffn;
            float *qkv = malloc((size_t)n * rk->qkv_rows * 4), *q = malloc((size_t)n * ql * 4);
            float *att = malloc((size_t)n * ql * 4);
            uint16_t *attb = malloc((size_t)n * ql * 2);
            CHECK(qkv && q && att && attb);
            gemm(qkv, L->w[RTC_W_QKV], xb[r], n, rk->qkv_rows, dim);
            ref_qkv_rope_cache(q, qkv, L->w[RTC_W_BQKV], L->w[RTC_W_QNORM], L->w[RTC_W_KNORM],
                               tw->inv_freq, pos, slot, rk->kc, rk->vc, rk->sh.heads,
                               rk->sh.kv_heads, hd, c->layers, l, c->eps, n);
            ref_attention_paged(att, q, rk->kc, rk->vc, pos, buf + st.off_row_seq,
                                buf + st.off_seq_off, buf + st.off_blocks, n, rk->sh.heads,
                                rk->sh.kv_heads, hd, c->layers, l, c->sliding_window,
                                1.0f / sqrtf((float)hd));
            for (size_t i = 0; i < (size_t)n * ql; i++)
                attb[i] = ref_f32_to_bf16(att[i]);
            gemm(o[r], L->w[RTC_W_O], attb, n, dim, ql);
            (void)f;
            free(qkv), free(q), free(att), free(attb);
        }
        allreduce(o, tp, nd);
        for (int r = 0; r < tp; r++) {
            struct hrank *rk = &tw->rk[r];
            struct hlayer *L = &rk->L[l];
            int f = rk->sh.ffn;
            ref_add_rmsnorm(x[r], o[r], L->w[RTC_W_FFN_NORM], xb[r], n, dim, c->eps);
            float *gu = malloc((size_t)n * 2 * f * 4);
            uint16_t *h = malloc((size_t)n * f * 2);
            CHECK(gu && h);
            gemm(gu, L->w[RTC_W_GU], xb[r], n, 2 * f, dim);
            ref_silu_mul(h, gu, n, f);
            gemm(o[r], L->w[RTC_W_DOWN], h, n, dim, f);
            free(gu), free(h);
        }
        allreduce(o, tp, nd);
        for (int r = 0; r < tp; r++) {
            const float *next =
                l + 1 < c->layers ? tw->rk[r].L[l + 1].w[RTC_W_ATTN_NORM] : tw->final_norm;
            ref_add_rmsnorm(x[r], o[r], next, xb[r], n, dim, c->eps);
        }
    }
    /* Rank 0's logits for the logit rows; the sampled ones drawn by rtc_sample's twin with the
     * parameters the plan packed (as rank_step does), only the first nhost rows' logits kept. */
    float *lg = malloc((size_t)st.nlogits * c->vocab * sizeof *lg + 1);
    int32_t *tok_out = malloc((size_t)st.nlogits * sizeof *tok_out + 1);
    CHECK(lg && tok_out);
    for (int i = 0; i < st.nlogits; i++) {
        int t = buf[st.off_logit_idx + i];
        gemm(lg + (size_t)i * c->vocab, tw->lm_head, xb[0] + (size_t)t * dim, 1, c->vocab, dim);
    }
    if (st.nsample > 0) {
        struct ref_sample_param *sp = malloc((size_t)st.nlogits * sizeof *sp);
        CHECK(sp != NULL);
        CHECK(sizeof *sp == sizeof(struct rtc_sample_param));
        memcpy(sp, buf + st.off_sample, (size_t)st.nlogits * sizeof *sp);
        ref_sample(tok_out, lg, sp, st.nlogits, c->vocab);
        free(sp);
    }
    for (int i = 0; i < st.nlogits; i++) {
        const struct model_dev_row *row = &rows[buf[st.off_logit_idx + i]];
        CHECK((i < st.nhost) == (row->logits != NULL));
        if (row->logits) memcpy(row->logits, lg + (size_t)i * c->vocab, c->vocab * sizeof *lg);
        if (row->sample) *row->token_out = tok_out[i];
    }
    free(lg), free(tok_out);
    for (int r = 0; r < tp; r++)
        free(x[r]), free(o[r]), free(xb[r]);
    free(buf);
}

/* The twin as a model.h device backend: model.c's hook drives it as it drives the GPU's. */
static size_t twin_block_bytes(void *self)
{
    struct twin *tw = self;
    return rtc_plan_block_bytes(&tw->c, &tw->rk[0].sh) * (size_t)tw->tp;
}

static int twin_blocks(void *self)
{
    (void)self;
    return NBLOCKS;
}

static int twin_forward(void *self, const struct model_dev_row *rows, int n)
{
    twin_step(self, rows, n);
    return 0;
}

static void twin_release(void *self)
{
    twin_free(self);
    free(self);
}

/* Samples like the GPU backend; twin_host_ops leaves sampling to the host (as the CPU does), so
 * the engine over each shows the two paths' tokens for the same seeds. */
static const struct model_dev_ops twin_ops = {"cpu-twin",   twin_block_bytes, twin_blocks,
                                              twin_forward, twin_release,     1};
static const struct model_dev_ops twin_host_ops = {"cpu-twin-host", twin_block_bytes, twin_blocks,
                                                   twin_forward,    twin_release,     0};

static struct model *twin_open_ops(const char *dir, int tp, const struct model_dev_ops *ops)
{
    struct twin *tw = calloc(1, sizeof *tw);
    CHECK(tw != NULL);
    twin_load(tw, dir, tp);
    char err[256];
    struct model *m = model_new_dev(&tw->c, tp, ops, tw, err, sizeof err);
    CHECK(m != NULL);
    CHECK_INT_EQ(model_kv_blocks_max(m), NBLOCKS);
    CHECK(model_kv_new(m, NBLOCKS + 1) == NULL); /* more than the backend holds */
    return m;
}

static struct model *twin_open(const char *dir, int tp)
{
    return twin_open_ops(dir, tp, &twin_ops);
}

static struct model *twin_open_hf(const char *dir)
{
    return twin_open(dir, 1);
}

/* The engine over a twin that samples (device path) and over one that does not (host path):
 * the same requests with the same seeds give the same text, and the device sampled what it may
 * (not the requests with penalties or logprobs, which the host samples on both). */
static void engine_text(struct model *m, const struct tok *t, struct buf *texts, int nreq,
                        uint64_t *dev_sampled)
{
    char err[256];
    struct eng_config ec = {
        .max_batch = 8, .queue_limit = 16, .prefill_chunk = 32, .kv_blocks = NBLOCKS};
    struct engine *e = eng_new(m, &ec, err, sizeof err);
    CHECK(e != NULL);
    struct eng_req *r[8];
    for (int i = 0; i < nreq; i++) {
        int prompt[5] = {3 + i, 10 + 2 * i, 20, 31 + i, 7};
        struct gen_params p = {.max_new = 14,
                               .temperature = i == 0 ? 0.0f : 0.6f + 0.15f * i,
                               .top_p = i % 3 == 1 ? 0.85f : 1.0f,
                               .top_k = i % 2 ? 12 : 0,
                               .ignore_eos = 1,
                               .seed = (uint64_t)i + 11};
        if (i == 5) p.presence_penalty = 0.5f; /* the host samples these two */
        if (i == 6) p.logprobs = 1, p.top_logprobs = 2;
        struct gen g;
        CHECK(gen_init(&g, m, t, prompt, 5, &p) == 0);
        CHECK(eng_submit(e, &g, 1, &r[i]) == ENG_OK);
    }
    for (int i = 0; i < nreq; i++) {
        texts[i] = (struct buf){0};
        CHECK_INT_EQ(eng_wait(r[i], &texts[i]), 1);
        CHECK_INT_EQ(eng_gen(r[i])->produced, 14);
    }
    struct buf met = {0};
    CHECK(eng_metrics(e, &met) == 0);
    const char *k = strstr(met.data, "\norp_runtime_device_sampled_tokens_total ");
    CHECK(k != NULL);
    *dev_sampled = strtoull(k + strlen("\norp_runtime_device_sampled_tokens_total "), NULL, 10);
    buf_free(&met);
    eng_stop(e);
    for (int i = 0; i < nreq; i++)
        eng_release(r[i]);
    eng_free(e);
}

static void test_engine_sampling(const char *dir)
{
    char path[800], err[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct tok *t = tok_load(path, err, sizeof err);
    CHECK(t != NULL);
    enum { NREQ = 7 };
    struct buf dev[NREQ], host[NREQ];
    uint64_t ndev = 0, nhost = 0;
    struct model *md = twin_open_ops(dir, 1, &twin_ops),
                 *mh = twin_open_ops(dir, 1, &twin_host_ops);
    engine_text(md, t, dev, NREQ, &ndev);
    engine_text(mh, t, host, NREQ, &nhost);
    for (int i = 0; i < NREQ; i++) {
        CHECK(dev[i].len > 0);
        CHECK_INT_EQ((int)dev[i].len, (int)host[i].len);
        CHECK(memcmp(dev[i].data, host[i].data, dev[i].len) == 0);
        buf_free(&dev[i]), buf_free(&host[i]);
    }
    CHECK_INT_EQ((int)nhost, 0);
    CHECK_INT_EQ((int)ndev, (NREQ - 2) * 14); /* all but the penalties' and the logprobs' */
    model_free(md), model_free(mh);
    tok_free(t);
    printf("test_rtc_pipeline: the engine's text with device sampling = host sampling (%d "
           "requests, %llu tokens sampled on the device)\n",
           NREQ, (unsigned long long)ndev);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char tmp[512];
    rt_tmpdir(tmp, sizeof tmp);
    const char *archs[] = {"llama", "qwen2", "qwen3", "mistral"};
    for (int a = 0; a < 4; a++) {
        char dir[700], err[512], what[96];
        snprintf(dir, sizeof dir, "%s/%s", tmp, archs[a]);
        make(dir, archs[a]);
        struct model *cpu = model_load(dir, 1, err, sizeof err);
        CHECK(cpu != NULL);
        for (int tp = 1; tp <= MAX_TP; tp *= 2) {
            struct model *tw = twin_open(dir, tp);
            snprintf(what, sizeof what, "%s: the step on the CPU, tp %d, vs model.c", archs[a], tp);
            run_pair(what, tw, cpu, TOL_ABS, TOL_REL);
            model_free(tw);
            /* The draw follows the logits whatever the architecture, and is rank 0's: Llama at
             * TP 1 and 2, Qwen3 (its own head_dim) at TP 1 (ref_sample is slow under ASan). */
            if ((a == 0 && tp <= 2) || (a == 2 && tp == 1)) {
                tw = twin_open(dir, tp);
                snprintf(what, sizeof what, "%s: sampling in the step, tp %d", archs[a], tp);
                check_device_sampling(what, tw);
                model_free(tw);
            }
        }
        model_free(cpu);
    }
    {
        char dir[700];
        snprintf(dir, sizeof dir, "%s/llama", tmp);
        test_engine_sampling(dir);
    }
    test_hf(twin_open_hf);
    check_top1("test_rtc_pipeline");
    rt_rmtree(tmp);
    printf("test_rtc_pipeline: ok\n");
    return 0;
}
