/* test_golden: the CPU forward pass (with its KV cache) of every architecture against golden logits
 * from an independent implementation: llama_ref.py, a NumPy float64 transcription of Hugging
 * Face's modeling_{llama,qwen2,qwen3,mistral}.py that recomputes full causal attention at every
 * step. Each variant is make-model's checkpoint of one architecture (seed 1, BF16: deterministic)
 * with some config.json fields overridden (llama3 rope scaling, tied embeddings, Mistral's
 * sliding window), so the golden numbers live in tests/golden/rt_golden_logits.h.
 * Tolerance: 2e-4 absolute on logits of magnitude ~1 (relative beyond), float32 accumulation
 * against float64. A variant proves its feature: each one's logits differ from its plain
 * architecture's beyond the tolerance, so a switch that is ignored fails here. */
#include <math.h>

#include "model.h"
#include "rt_golden_logits.h"
#include "sampler.h"
#include "rt_test.h"

#define GOLDEN_TOL 2e-4
#define NPOS ((int)(sizeof golden_pos / sizeof golden_pos[0]))

/* Makes the variant's checkpoint in dir and merges its overrides into config.json. */
static void make_variant(const struct golden_variant *v, const char *mdir)
{
    struct mm_opts o;
    mm_defaults(&o);
    o.out = mdir;
    o.arch = v->arch;
    char err[512], path[400];
    if (mm_make(&o, err, sizeof err) != 0) {
        fprintf(stderr, "mm_make %s: %s\n", v->arch, err);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/config.json", mdir);
    json_t *cfg = json_load_file(path, 0, NULL), *over = json_loads(v->overrides, 0, NULL);
    CHECK(cfg && over);
    CHECK(json_object_update(cfg, over) == 0);
    CHECK(json_dump_file(cfg, path, 0) == 0);
    json_decref(cfg);
    json_decref(over);
}

static void check_variant(const struct golden_variant *v, const char *mdir)
{
    char err[1024];
    struct model *m = model_load(mdir, 1, err, sizeof err);
    if (!m) fprintf(stderr, "%s: %s\n", v->name, err);
    CHECK(m != NULL);
    CHECK_STR_EQ(model_arch_name(model_cfg(m)->arch), v->arch);
    CHECK_INT_EQ(model_cfg(m)->vocab, v->vocab);
    int n = (int)(sizeof golden_tokens / sizeof golden_tokens[0]);
    struct model_ctx *c = model_ctx_new(m, n);
    CHECK(c != NULL);
    int g = 0;
    for (int pos = 0; pos < n; pos++) {
        const float *l = model_forward(m, c, golden_tokens[pos]);
        CHECK(l != NULL);
        if (g < NPOS && golden_pos[g] == pos) {
            for (int i = 0; i < GOLDEN_NLOGITS; i++) {
                float want = v->logits[g][i];
                double tol = GOLDEN_TOL * (fabs(want) > 1 ? fabs(want) : 1);
                if (fabs(l[v->ids[i]] - want) > tol)
                    fprintf(stderr, "%s: position %d, logit %d\n", v->name, pos, v->ids[i]);
                CHECK_NEAR(l[v->ids[i]], want, tol);
            }
            CHECK_INT_EQ(sampler_argmax(l, v->vocab), v->argmax[g]);
            g++;
        }
    }
    CHECK_INT_EQ(g, NPOS);
    model_ctx_free(c);
    model_free(m);
    printf("test_golden: %s ok\n", v->name);
}

/* Two variants whose logits must differ somewhere by more than the tolerance. */
static void check_differ(const char *a, const char *b)
{
    const struct golden_variant *va = NULL, *vb = NULL;
    size_t nv = sizeof golden_variants / sizeof golden_variants[0];
    for (size_t i = 0; i < nv; i++) {
        if (!strcmp(golden_variants[i].name, a)) va = &golden_variants[i];
        if (!strcmp(golden_variants[i].name, b)) vb = &golden_variants[i];
    }
    CHECK(va && vb);
    double most = 0;
    for (int p = 0; p < NPOS; p++)
        for (int i = 0; i < GOLDEN_NLOGITS; i++)
            most = fmax(most, fabs(va->logits[p][i] - vb->logits[p][i]));
    CHECK(most > 100 * GOLDEN_TOL);
}

int main(void)
{
    char dir[256], mdir[300];
    rt_tmpdir(dir, sizeof dir);
    size_t nv = sizeof golden_variants / sizeof golden_variants[0];
    for (size_t i = 0; i < nv; i++) {
        snprintf(mdir, sizeof mdir, "%s/%s", dir, golden_variants[i].name);
        make_variant(&golden_variants[i], mdir);
        check_variant(&golden_variants[i], mdir);
    }
    check_differ("llama", "llama3_scaled_tied");
    check_differ("mistral", "mistral_window5");
    rt_rmtree(dir);
    printf("test_golden: ok\n");
    return 0;
}
