/* model_check: the logit checks test_cuda_model (the CUDA backend on a GPU) and
 * test_rtc_pipeline (the same step on the CPU, as a model.h device backend) share: small random
 * checkpoints per architecture, one backend against another through model.h exactly as the
 * engine drives them, and the Hugging Face goldens. Header-only (static): each test is one file.
 *
 * Tolerance ("bf16 tolerance"): the GPU rounds every GEMM input (activations, and weights that
 * are F32 on disk) and the KV cache to BF16, 2^-9 relative each, which over 2 layers moves
 * logits of size ~1 by ~1e-2, and a logit's error grows with the size of its terms, which the
 * row's largest logit reflects (tied embeddings give logits near 100): |got - ref| <= 0.06 +
 * 0.03 |ref| + 0.03 / 8 max |ref row| (one BF16 step of the largest). Top-1 must agree on
 * >= 99 % of the rows whose reference top-2 margin exceeds 0.2 (where rounding cannot swap
 * them). */
#ifndef ORP_TEST_MODEL_CHECK_H
#define ORP_TEST_MODEL_CHECK_H

#include <jansson.h>
#include <libgen.h>
#include <math.h>

#include "model.h"
#include "runtime/rt_test.h"
#include "safetensors.h"
#include "sampler.h"

#define TOL_ABS 0.06
#define TOL_REL 0.03
#define MARGIN 0.2

static int rows_checked, top1_total, top1_same;

static void make(const char *dir, const char *arch)
{
    struct mm_opts o;
    mm_defaults(&o);
    o.out = dir, o.arch = arch, o.dim = 128, o.heads = 4, o.kv_heads = 2, o.ffn = 256;
    o.layers = 2, o.context = 512, o.seed = 7;
    o.head_dim = !strcmp(arch, "qwen3") ? 64 : 32;
    char err[512];
    if (mm_make(&o, err, sizeof err) != 0) {
        fprintf(stderr, "make-model: %s\n", err);
        exit(1);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *c = json_load_file(path, 0, NULL);
    CHECK(c != NULL);
    if (!strcmp(arch, "llama")) /* all three bands of llama3 scaling in a short context */
        json_object_set_new(c, "rope_scaling",
                            json_pack("{s:s,s:f,s:f,s:f,s:i}", "rope_type", "llama3", "factor", 8.0,
                                      "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                      "original_max_position_embeddings", 64));
    if (!strcmp(arch, "mistral")) json_object_set_new(c, "sliding_window", json_integer(24));
    CHECK(json_dump_file(c, path, JSON_INDENT(1)) == 0);
    json_decref(c);
}

/* Compares one row of logits; returns the largest error as a fraction of the bound. */
static double cmp_row(const char *what, const float *got, const float *ref, int vocab, double ta,
                      double tr)
{
    double worst = 0, rowmax = 0;
    int best = 0, second = -1, gbest = 0;
    for (int i = 0; i < vocab; i++)
        if (fabs(ref[i]) > rowmax) rowmax = fabs(ref[i]);
    for (int i = 0; i < vocab; i++) {
        double b = ta + tr * fabs(ref[i]) + tr / 8 * rowmax, e = fabs((double)got[i] - ref[i]);
        if (!(e <= b)) {
            fprintf(stderr, "%s: logit %d: cuda %g, reference %g (row max %g)\n", what, i, got[i],
                    ref[i], rowmax);
            exit(1);
        }
        if (e / b > worst) worst = e / b;
        if (ref[i] > ref[best])
            second = best, best = i;
        else if (i != best && (second < 0 || ref[i] > ref[second]))
            second = i;
        if (got[i] > got[gbest]) gbest = i;
    }
    rows_checked++;
    if (second >= 0 && ref[best] - ref[second] > MARGIN) {
        top1_total++;
        top1_same += gbest == best;
    }
    return worst;
}

/* Runs the same steps on a and b (b: the reference) and compares every logit row. */
static void run_pair(const char *what, struct model *a, struct model *b, double ta, double tr)
{
    int vocab = model_cfg(b)->vocab;
    struct model_kv *ka = model_kv_new(a, 32), *kb = model_kv_new(b, 32);
    CHECK(ka && kb);
    struct model_ctx *ca[2] = {model_ctx_new_in(a, ka, 200), model_ctx_new_in(a, ka, 100)};
    struct model_ctx *cb[2] = {model_ctx_new_in(b, kb, 200), model_ctx_new_in(b, kb, 100)};
    CHECK(ca[0] && ca[1] && cb[0] && cb[1]);
    float *la = malloc(2 * (size_t)vocab * 4), *lb = malloc(2 * (size_t)vocab * 4);
    CHECK(la && lb);
    struct model_row ra[64], rb[64];
    /* Step 1: 53 prompt tokens of context 0 with the 7 of context 1 in their midst (rows 20 to
     * 26: positions resolve per context), logits on each one's last. */
    int n = 0;
    for (int i = 0; i < 60; i++, n++) {
        int c = i >= 20 && i < 27 ? 1 : 0, tok = (i * 37 + 11) % (vocab - 10) + 3;
        int last = i == 26 || i == 59;
        ra[n] = (struct model_row){ca[c], tok, last ? la + (size_t)c * vocab : NULL};
        rb[n] = (struct model_row){cb[c], tok, last ? lb + (size_t)c * vocab : NULL};
    }
    CHECK(model_forward_batch(a, ra, n) == 0);
    CHECK(model_forward_batch(b, rb, n) == 0);
    double worst = 0;
    for (int step = 0; step < 30; step++) {
        for (int c = 0; c < 2; c++) {
            double w = cmp_row(what, la + (size_t)c * vocab, lb + (size_t)c * vocab, vocab, ta, tr);
            if (w > worst) worst = w;
        }
        /* Teacher-forced: both run the reference's argmax. */
        for (int c = 0; c < 2; c++) {
            int tok = sampler_argmax(lb + (size_t)c * vocab, vocab);
            ra[c] = (struct model_row){ca[c], tok, la + (size_t)c * vocab};
            rb[c] = (struct model_row){cb[c], tok, lb + (size_t)c * vocab};
        }
        CHECK(model_forward_batch(a, ra, 2) == 0);
        CHECK(model_forward_batch(b, rb, 2) == 0);
    }
    printf("  %-40s ok  (worst error %.2f of the bound)\n", what, worst);
    for (int c = 0; c < 2; c++)
        model_ctx_free(ca[c]), model_ctx_free(cb[c]);
    model_kv_free(ka), model_kv_free(kb);
    free(la), free(lb);
}

/* The Hugging Face goldens: every prompt as one prefill chunk, and again token by token. */
static void test_hf(struct model *(*open)(const char *dir))
{
    char gdir[700], path[1000];
    const char *env = getenv("ORP_HF_GOLDEN_DIR");
    if (env && *env) {
        snprintf(gdir, sizeof gdir, "%s", env);
    } else {
        char src[600];
        snprintf(src, sizeof src, "%s", __FILE__); /* this header, in tests/unit/cuda */
        snprintf(gdir, sizeof gdir, "%s/../../golden/hf", dirname(src));
    }
    snprintf(path, sizeof path, "%s/MANIFEST.json", gdir);
    json_t *man = json_load_file(path, 0, NULL);
    if (!man) {
        printf("  hf goldens: none at %s (ops/gpu/run.sh makes them)\n", gdir);
        return;
    }
    json_t *prompts = json_object_get(man, "prompts"), *v;
    size_t vi;
    json_array_foreach(json_object_get(man, "variants"), vi, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        char mdir[800], err[1024];
        snprintf(mdir, sizeof mdir, "%s/models/%s", gdir, name);
        struct model *m = open(mdir);
        int vocab = model_cfg(m)->vocab;
        snprintf(path, sizeof path, "%s/logits.safetensors", mdir);
        struct st_set *st = st_open(path, err, sizeof err);
        CHECK(st != NULL);
        double worst = 0;
        size_t pi;
        json_t *p;
        json_array_foreach(prompts, pi, p)
        {
            int n = (int)json_array_size(p);
            char tn[32];
            snprintf(tn, sizeof tn, "prompt.%zu", pi);
            const struct st_tensor *t = st_find(st, tn);
            CHECK(t != NULL && t->shape[1] == vocab);
            float *want = malloc((size_t)t->numel * 4), *got = malloc((size_t)n * vocab * 4);
            CHECK(want && got);
            st_to_f32(t, want);
            for (int mode = 0; mode < 2; mode++) { /* 0: one chunk, 1: token by token */
                struct model_kv *kv = model_kv_new(m, 8);
                struct model_ctx *c = model_ctx_new_in(m, kv, n);
                CHECK(kv && c);
                struct model_row rows[64];
                CHECK(n <= 64);
                for (int i = 0; i < n; i++)
                    rows[i] = (struct model_row){c, (int)json_integer_value(json_array_get(p, i)),
                                                 got + (size_t)i * vocab};
                if (mode == 0) {
                    CHECK(model_forward_batch(m, rows, n) == 0);
                } else {
                    for (int i = 0; i < n; i++)
                        CHECK(model_forward_batch(m, &rows[i], 1) == 0);
                }
                for (int i = 0; i < n; i++) {
                    char what[160];
                    snprintf(what, sizeof what, "hf %s prompt %zu pos %d (%s)", name, pi, i,
                             mode ? "decode" : "prefill");
                    double w = cmp_row(what, got + (size_t)i * vocab, want + (size_t)i * vocab,
                                       vocab, TOL_ABS, TOL_REL);
                    if (w > worst) worst = w;
                }
                model_ctx_free(c);
                model_kv_free(kv);
            }
            free(want), free(got);
        }
        st_close(st);
        model_free(m);
        printf("  hf %-37s ok  (worst error %.2f of the bound)\n", name, worst);
    }
    json_decref(man);
}

/* The top-1 agreement over every row compared so far (>= 99 %). */
static void check_top1(const char *test)
{
    printf("%s: top-1 agreement %d / %d rows with a clear reference margin (%d rows compared)\n",
           test, top1_same, top1_total, rows_checked);
    CHECK(top1_total > 0 && top1_same * 100 >= top1_total * 99);
}

#endif
