/* test_hf_golden: the CPU forward pass against Hugging Face transformers itself. The fixtures in
 * tests/golden/hf/ come from ops/gpu/hf_golden.py run by ops/gpu/run.sh on a GPU machine (where
 * transformers is installed) and imported by ops/gpu/import-fixtures.sh: per variant a checkpoint
 * saved by transformers' save_pretrained (F32) with make-model's tokenizer, and the float32 logits
 * transformers computed at every position of fixed prompts; and, where the `tokenizers` package
 * was there, its token ids for a multilingual corpus under a Llama-3-style and a Qwen2-style
 * tokenizer.json.
 *
 * Skipped (77) while tests/golden/hf/MANIFEST.json is absent. ORP_HF_GOLDEN_DIR=DIR reads another
 * directory (hf_golden.py's output before import); only there is a "standin" manifest accepted,
 * since a stand-in is not transformers and must never pass for it in the committed fixtures.
 * Tolerance: 2e-4 absolute on logits of magnitude ~1 (relative beyond): float32 against float32
 * in a different summation order over 2 layers of width 64, whose rounding is ~1e-6. */
#include <libgen.h>
#include <math.h>

#include "model.h"
#include "rt_test.h"
#include "safetensors.h"
#include "tokenizer.h"

#define HF_TOL 2e-4

static char gdir[512];

static json_t *load_json(const char *rel)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", gdir, rel);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fprintf(stderr, "test_hf_golden: %s: %s\n", path, je.text);
    return j;
}

/* Every position's logits of every prompt, through the KV cache one token at a time. */
static void check_variant(json_t *v, json_t *prompts)
{
    const char *name = json_string_value(json_object_get(v, "name"));
    char mdir[700], path[800], err[1024];
    snprintf(mdir, sizeof mdir, "%s/models/%s", gdir, name);
    struct model *m = model_load(mdir, 1, err, sizeof err);
    if (!m) fprintf(stderr, "%s: %s\n", name, err);
    CHECK(m != NULL);
    CHECK_STR_EQ(model_arch_name(model_cfg(m)->arch),
                 json_string_value(json_object_get(v, "arch")));
    int vocab = model_cfg(m)->vocab;
    CHECK_INT_EQ(vocab, json_integer_value(json_object_get(v, "vocab")));
    snprintf(path, sizeof path, "%s/logits.safetensors", mdir);
    struct st_set *st = st_open(path, err, sizeof err);
    if (!st) fprintf(stderr, "%s\n", err);
    CHECK(st != NULL);
    double worst = 0;
    size_t pi;
    json_t *p;
    json_array_foreach(prompts, pi, p)
    {
        int n = (int)json_array_size(p);
        char tname[32];
        snprintf(tname, sizeof tname, "prompt.%zu", pi);
        const struct st_tensor *t = st_find(st, tname);
        CHECK(t != NULL);
        CHECK(t->ndim == 2 && t->shape[0] == n && t->shape[1] == vocab);
        float *want = malloc((size_t)t->numel * sizeof *want);
        CHECK(want != NULL);
        st_to_f32(t, want);
        struct model_ctx *c = model_ctx_new(m, n);
        CHECK(c != NULL);
        for (int pos = 0; pos < n; pos++) {
            const float *l = model_forward(m, c, (int)json_integer_value(json_array_get(p, pos)));
            CHECK(l != NULL);
            for (int i = 0; i < vocab; i++) {
                double w = want[(size_t)pos * vocab + i], d = fabs(l[i] - w);
                double tol = HF_TOL * (fabs(w) > 1 ? fabs(w) : 1);
                if (d / tol > worst) worst = d / tol;
                if (d > tol)
                    fprintf(stderr, "%s: prompt %zu position %d logit %d: %g, transformers %g\n",
                            name, pi, pos, i, l[i], w);
                CHECK_NEAR(l[i], w, tol);
            }
        }
        model_ctx_free(c);
        free(want);
    }
    st_close(st);
    model_free(m);
    printf("test_hf_golden: %s ok (worst error %.2f of the tolerance)\n", name, worst);
}

/* Our tokenizer's ids against the `tokenizers` package's for each string of the corpus. */
static void check_tokenizers(void)
{
    json_t *g = load_json("tokenizers/golden.json");
    CHECK(g != NULL);
    json_t *corpus = json_object_get(g, "corpus"), *ids = json_object_get(g, "ids");
    const char *name;
    json_t *want_all;
    json_object_foreach(ids, name, want_all)
    {
        char path[700], err[512];
        snprintf(path, sizeof path, "%s/tokenizers/%s.json", gdir, name);
        struct tok *t = tok_load(path, err, sizeof err);
        if (!t) fprintf(stderr, "%s\n", err);
        CHECK(t != NULL);
        for (size_t i = 0; i < json_array_size(corpus); i++) {
            const char *s = json_string_value(json_array_get(corpus, i));
            json_t *want = json_array_get(want_all, i);
            struct tok_ids got = {0};
            CHECK(tok_encode(t, s, strlen(s), 0, &got, err, sizeof err) == 0);
            int same = got.n == json_array_size(want);
            for (size_t k = 0; same && k < got.n; k++)
                same = got.v[k] == json_integer_value(json_array_get(want, k));
            if (!same) fprintf(stderr, "%s: string %zu \"%s\": ids differ\n", name, i, s);
            CHECK_INT_EQ(got.n, json_array_size(want));
            CHECK(same);
            tok_ids_free(&got);
        }
        tok_free(t);
        printf("test_hf_golden: tokenizer %s ok (%zu strings)\n", name, json_array_size(corpus));
    }
    json_decref(g);
}

int main(void)
{
    const char *env = getenv("ORP_HF_GOLDEN_DIR");
    if (env && env[0]) {
        snprintf(gdir, sizeof gdir, "%s", env);
    } else { /* tests/golden/hf beside this file's tests/unit/runtime (CMake passes full paths) */
        char src[512];
        snprintf(src, sizeof src, "%s", __FILE__);
        snprintf(gdir, sizeof gdir, "%s/../../golden/hf", dirname(src));
    }
    char mpath[600];
    snprintf(mpath, sizeof mpath, "%s/MANIFEST.json", gdir);
    if (access(mpath, R_OK) != 0) {
        printf("test_hf_golden: skipped: no %s (made by ops/gpu/run.sh on a GPU machine)\n", mpath);
        return 77;
    }
    json_t *man = load_json("MANIFEST.json");
    CHECK(man != NULL);
    const char *gen = json_string_value(json_object_get(man, "generator"));
    CHECK(gen != NULL);
    if (strcmp(gen, "transformers") != 0) {
        fprintf(stderr, "test_hf_golden: %s was made by \"%s\", not transformers%s\n", mpath, gen,
                env && env[0] ? " (accepted: ORP_HF_GOLDEN_DIR)" : "");
        CHECK(env && env[0]);
    }
    json_t *prompts = json_object_get(man, "prompts"), *v;
    CHECK(json_array_size(prompts) > 0);
    size_t i;
    json_array_foreach(json_object_get(man, "variants"), i, v) check_variant(v, prompts);
    CHECK(i > 0);
    if (json_is_object(json_object_get(man, "tokenizers")))
        check_tokenizers();
    else
        printf("test_hf_golden: no tokenizer goldens (the run had no `tokenizers` package)\n");
    printf("test_hf_golden: all ok (%s %s)\n", gen,
           json_string_value(json_object_get(man, "transformers_version")) ?: "");
    json_decref(man);
    return 0;
}
