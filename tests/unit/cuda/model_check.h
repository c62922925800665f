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
static int sampled_runs, sampled_off_argmax; /* check_device_sampling's, over every model */

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
        ra[n] = (struct model_row){ca[c], tok, last ? la + (size_t)c * vocab : NULL, NULL, NULL};
        rb[n] = (struct model_row){cb[c], tok, last ? lb + (size_t)c * vocab : NULL, NULL, NULL};
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
            ra[c] = (struct model_row){ca[c], tok, la + (size_t)c * vocab, NULL, NULL};
            rb[c] = (struct model_row){cb[c], tok, lb + (size_t)c * vocab, NULL, NULL};
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
                                                 got + (size_t)i * vocab, NULL, NULL};
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
/* Sampling on the device (model.h's sample rows) against sampling on the host, for a model that
 * samples on its device (the GPU backend, or its CPU twin). Three contexts run the same tokens
 * with samplers of the same parameters and seed: A the host path (logits back, sampler_sample),
 * B the device path (only a token back, its u from B's own generator: gen_device_sample's
 * contract), C both (logits and the device's token, which must be sampler_pick of those logits
 * with C's u). A, B and C must pick the same tokens at every step, for greedy and for
 * temperature, top-k and top-p (the host's and the device's rules agree away from exact ties and
 * rounding, see sampler.h; these logits have neither), and their generators end in the same
 * state. Rows are rotated in the batch so the plan's logit rows (host rows first) are reordered.
 * check_top1 then checks that some sampled tokens were not the argmax (the draw is not vacuous;
 * tied-embedding models have peaked logits, so it is counted over every model). Returns the
 * tokens compared. */
static int check_device_sampling(const char *what, struct model *m)
{
    CHECK(model_samples_on_device(m));
    const struct model_config *c = model_cfg(m);
    int vocab = c->vocab, compared = 0, off_argmax = 0;
    const struct sampler_params sets[] = {{0, 1, 0, 0, 0, 0},        {0.9f, 1, 0, 0, 0, 0},
                                          {1.0f, 1, 8, 0, 0, 0},     {0.8f, 0.9f, 0, 0, 0, 0},
                                          {1.3f, 0.7f, 40, 0, 0, 0}, {1.0f, 0.5f, 3, 0, 0, 0},
                                          {6.0f, 0.95f, 0, 0, 0, 0}, {6.0f, 1, 0, 0, 0, 0}};
    float *la = malloc((size_t)vocab * sizeof *la), *lc = malloc((size_t)vocab * sizeof *lc);
    CHECK(la && lc);
    struct model_kv *kv = model_kv_new(m, 9); /* three contexts of 40 positions */
    CHECK(kv != NULL);
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++)
        for (uint64_t seed = 1; seed <= 2; seed++) {
            struct sampler_params p = sets[k];
            p.seed = seed * 1000 + k;
            struct sampler sa, sb, sc, chk;
            CHECK(sampler_init(&sa, vocab, &p) == 0 && sampler_init(&sb, vocab, &p) == 0);
            CHECK(sampler_init(&sc, vocab, &p) == 0 && sampler_init(&chk, vocab, &p) == 0);
            struct model_ctx *ca = model_ctx_new_in(m, kv, 40), *cb = model_ctx_new_in(m, kv, 40),
                             *cc = model_ctx_new_in(m, kv, 40);
            CHECK(ca && cb && cc);
            struct model_row rows[24];
            struct model_sample mb, mc;
            int tb = -1, tc = -1, next = -1;
            for (int step = 0; step < 10; step++) {
                int plen = step == 0 ? 6 : 1, n = 0;
                /* u for B and C drawn as the engine does (temperature > 0 only). */
                mb = (struct model_sample){p.temperature, p.top_p, p.top_k,
                                           p.temperature > 0 ? sampler_next_u(&sb) : 0.0f};
                mc = (struct model_sample){p.temperature, p.top_p, p.top_k,
                                           p.temperature > 0 ? sampler_next_u(&sc) : 0.0f};
                for (int q = 0; q < 3; q++) {
                    int who = (q + step) % 3; /* 0 A, 1 B, 2 C */
                    for (int i = 0; i < plen; i++) {
                        int tok = step == 0
                                      ? (int)((seed * 131 + (uint64_t)i * 37) % (vocab - 8)) + 3
                                      : next;
                        int last = i == plen - 1;
                        struct model_row r = {who == 0   ? ca
                                              : who == 1 ? cb
                                                         : cc,
                                              tok, NULL, NULL, NULL};
                        if (last && who == 0) r.logits = la;
                        if (last && who == 1) r.sample = &mb, r.token_out = &tb;
                        if (last && who == 2) r.logits = lc, r.sample = &mc, r.token_out = &tc;
                        rows[n++] = r;
                    }
                }
                CHECK(model_forward_batch(m, rows, n) == 0);
                int ta = sampler_sample(&sa, la);
                int want_c = sampler_pick(&chk, lc, mc.u);
                if (ta != tb || tb != tc || tc != want_c)
                    fprintf(stderr,
                            "%s: params %zu seed %llu step %d: host %d, device %d, "
                            "device+logits %d (host pick %d)\n",
                            what, k, (unsigned long long)seed, step, ta, tb, tc, want_c);
                CHECK_INT_EQ(tb, ta);
                CHECK_INT_EQ(tc, ta);
                CHECK_INT_EQ(want_c, ta);
                off_argmax += p.temperature > 0 && ta != sampler_argmax(la, vocab);
                compared++;
                next = ta;
            }
            CHECK(sa.rng == sb.rng && sb.rng == sc.rng);
            model_ctx_free(ca), model_ctx_free(cb), model_ctx_free(cc);
            sampler_free(&sa), sampler_free(&sb), sampler_free(&sc), sampler_free(&chk);
        }
    sampled_runs++, sampled_off_argmax += off_argmax;
    model_kv_free(kv);
    free(la), free(lc);
    printf("%s: %d tokens sampled on the device = on the host (%d not the argmax)\n", what,
           compared, off_argmax);
    return compared;
}

static void check_top1(const char *test)
{
    printf("%s: top-1 agreement %d / %d rows with a clear reference margin (%d rows compared)\n",
           test, top1_same, top1_total, rows_checked);
    CHECK(top1_total > 0 && top1_same * 100 >= top1_total * 99);
    if (sampled_runs) {
        printf("%s: %d sampled tokens were not the argmax\n", test, sampled_off_argmax);
        CHECK(sampled_off_argmax > 0);
    }
}

#endif
