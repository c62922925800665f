/* test_model: make-model's checkpoint loads (BF16, F16 and F32), the forward pass gives finite
 * logits that do not depend on the run, the thread count or the cache (a fresh context replaying
 * the same tokens), greedy generation repeats itself, and broken configs are refused with errors
 * naming the file and the field or tensor. */
#include <math.h>

#include "gen.h"
#include "model.h"
#include "rt_test.h"
#include "tokenizer.h"

static char dir[256];

static struct model *load(const char *mdir, int threads)
{
    char err[1024];
    struct model *m = model_load(mdir, threads, err, sizeof err);
    if (!m) fprintf(stderr, "model_load: %s\n", err);
    CHECK(m != NULL);
    return m;
}

/* Runs tokens and copies the last logits into out. */
static void run(const struct model *m, const int *tokens, int n, float *out)
{
    struct model_ctx *c = model_ctx_new(m, 64);
    CHECK(c != NULL);
    const float *l = NULL;
    for (int i = 0; i < n; i++) {
        l = model_forward(m, c, tokens[i]);
        CHECK(l != NULL);
    }
    CHECK_INT_EQ(model_ctx_pos(c), n);
    memcpy(out, l, (size_t)model_cfg(m)->vocab * sizeof *out);
    model_ctx_free(c);
}

static void test_forward(const char *mdir)
{
    struct model *m = load(mdir, 1);
    const struct model_config *c = model_cfg(m);
    CHECK_INT_EQ(c->dim, 64);
    CHECK_INT_EQ(c->layers, 2);
    CHECK_INT_EQ(c->heads, 4);
    CHECK_INT_EQ(c->kv_heads, 2);
    CHECK_INT_EQ(c->head_dim, 16);
    CHECK_INT_EQ(c->vocab, 561);
    CHECK_INT_EQ(c->max_pos, 1024);
    CHECK_INT_EQ(c->neos, 2);
    CHECK(model_is_eos(m, 560) && model_is_eos(m, 557) && !model_is_eos(m, 0));

    const int toks[] = {556, 72, 101, 108, 108, 111};
    int v = c->vocab;
    float *a = malloc((size_t)v * sizeof *a), *b = malloc((size_t)v * sizeof *b);
    run(m, toks, 6, a);
    double spread = 0;
    for (int i = 0; i < v; i++) {
        CHECK(isfinite(a[i]));
        spread += fabs(a[i] - a[0]);
    }
    CHECK(spread > 0); /* not a constant */
    run(m, toks, 6, b);
    CHECK(memcmp(a, b, (size_t)v * sizeof *a) == 0);
    /* Another prefix gives other logits: the cache really holds the earlier positions. */
    const int other[] = {556, 50, 101, 108, 108, 111};
    run(m, other, 6, b);
    CHECK(memcmp(a, b, (size_t)v * sizeof *a) != 0);

    /* Out of range: a token past the vocab, or a full context. */
    struct model_ctx *x = model_ctx_new(m, 1);
    CHECK(model_forward(m, x, v) == NULL);
    CHECK(model_forward(m, x, 1) != NULL);
    CHECK(model_forward(m, x, 1) == NULL);
    model_ctx_free(x);
    CHECK(model_ctx_new(m, c->max_pos + 1) == NULL);
    free(a);
    free(b);
    model_free(m);
}

/* The same numbers with the matrix products split over three threads (a model big enough for
 * the split to happen): each row is still summed in the same order, so they are identical. */
static void test_threads(void)
{
    char mdir[300], err[512];
    snprintf(mdir, sizeof mdir, "%s/wide", dir);
    struct mm_opts o;
    mm_defaults(&o);
    o.out = mdir;
    o.dim = 128;
    o.ffn = 512;
    CHECK(mm_make(&o, err, sizeof err) == 0);
    struct model *m1 = load(mdir, 1), *m3 = load(mdir, 3);
    int v = model_cfg(m1)->vocab;
    float *a = malloc((size_t)v * sizeof *a), *b = malloc((size_t)v * sizeof *b);
    const int toks[] = {556, 72, 101, 108};
    run(m1, toks, 4, a);
    run(m3, toks, 4, b);
    CHECK(memcmp(a, b, (size_t)v * sizeof *a) == 0);
    free(a);
    free(b);
    model_free(m1);
    model_free(m3);
}

/* Generates with gen and returns the token count; text into out. */
static int generate(const struct model *m, const struct tok *t, float temp, uint64_t seed,
                    int max_new, struct buf *out)
{
    const int prompt[] = {556, 72, 101, 108, 108, 111, 44, 32};
    struct gen_params p = {.max_new = max_new, .temperature = temp, .top_p = 0.9f, .seed = seed};
    struct gen g;
    CHECK(gen_init(&g, m, t, prompt, 8, &p) == 0);
    CHECK(gen_prefill(&g) == 0);
    while (g.finish == GEN_RUNNING)
        CHECK(gen_step(&g, out) == 0);
    CHECK(g.produced <= max_new);
    int produced = g.produced;
    gen_free(&g);
    return produced;
}

static void test_generation(const char *mdir)
{
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
    struct tok *t = tok_load(path, err, sizeof err);
    CHECK(t != NULL);
    struct model *m = load(mdir, 1);
    struct buf a = {0}, b = {0};
    int na = generate(m, t, 0, 1, 40, &a), nb = generate(m, t, 0, 99, 40, &b);
    CHECK_INT_EQ(na, nb);
    CHECK_STR_EQ(a.data, b.data); /* greedy ignores the seed */
    a.len = b.len = 0;
    na = generate(m, t, 1.0f, 7, 40, &a);
    nb = generate(m, t, 1.0f, 7, 40, &b);
    CHECK_INT_EQ(na, nb);
    CHECK_STR_EQ(a.data, b.data); /* a fixed seed reproduces a sampled completion */
    int differs = 0;
    for (uint64_t s = 8; s < 12 && !differs; s++) {
        b.len = 0;
        generate(m, t, 1.0f, s, 40, &b);
        differs = strcmp(a.data, b.data) != 0;
    }
    CHECK(differs);
    buf_free(&a);
    buf_free(&b);
    model_free(m);
    tok_free(t);
}

/* Rewrites config.json with one change made by the callback, then expects load to fail. */
static void expect_config_error(const char *mdir, const char *key, json_t *value, const char *part1,
                                const char *part2)
{
    char path[400], err[1024];
    snprintf(path, sizeof path, "%s/config.json", mdir);
    json_t *cfg = json_load_file(path, 0, NULL);
    CHECK(cfg != NULL);
    json_t *orig = json_deep_copy(cfg);
    if (value)
        json_object_set_new(cfg, key, value);
    else
        json_object_del(cfg, key);
    CHECK(json_dump_file(cfg, path, 0) == 0);
    struct model *m = model_load(mdir, 1, err, sizeof err);
    if (m) fprintf(stderr, "loaded despite %s\n", key);
    CHECK(m == NULL);
    CHECK_CONTAINS(err, part1);
    CHECK_CONTAINS(err, part2);
    CHECK(json_dump_file(orig, path, 0) == 0);
    json_decref(cfg);
    json_decref(orig);
}

static void test_bad_configs(const char *mdir)
{
    expect_config_error(mdir, "hidden_size", NULL, "config.json", "\"hidden_size\"");
    expect_config_error(mdir, "rms_norm_eps", NULL, "config.json", "\"rms_norm_eps\"");
    expect_config_error(mdir, "num_key_value_heads", json_integer(3), "config.json",
                        "num_key_value_heads");
    expect_config_error(mdir, "vocab_size", json_string("many"), "config.json", "\"vocab_size\"");
    expect_config_error(mdir, "model_type", json_string("gpt2"), "config.json", "gpt2");
    /* An unknown architecture: the error lists the supported ones. */
    expect_config_error(mdir, "architectures", json_pack("[s]", "GPT2LMHeadModel"),
                        "GPT2LMHeadModel", "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM");
    expect_config_error(mdir, "model_type", json_string("qwen2"), "qwen2", "does not match");
    expect_config_error(mdir, "attention_bias", json_true(), "attention_bias", "llama");
    /* A third layer the checkpoint does not have: the error names the tensor and the file. */
    expect_config_error(mdir, "num_hidden_layers", json_integer(3), "model.safetensors",
                        "model.layers.2.input_layernorm.weight");
    expect_config_error(mdir, "intermediate_size", json_integer(177),
                        "model.layers.0.mlp.gate_proj.weight", "[176, 64]");
    /* And the restored config loads again. */
    model_free(load(mdir, 1));
}

/* A batch of rows from three contexts of a shared pool (two decoding, one reading a prompt chunk)
 * gives, bit for bit, the logits of running each context alone; the pool hands out and takes
 * back whole blocks, and refuses a context it cannot hold. */
static void test_batch(const char *mdir)
{
    struct model *m = load(mdir, 1);
    int v = model_cfg(m)->vocab;
    const int toks[3][6] = {
        {556, 72, 101, 108, 108, 111}, {556, 50, 60, 70, 80, 90}, {556, 200, 201, 202, 203, 204}};
    float *want = malloc(3 * (size_t)v * sizeof *want), *got = malloc(4 * (size_t)v * sizeof *got);
    for (int i = 0; i < 3; i++)
        run(m, toks[i], 6, want + (size_t)i * v);
    struct model_kv *kv = model_kv_new(m, 5);
    CHECK(kv != NULL);
    CHECK_INT_EQ(model_kv_blocks(kv), 5);
    struct model_ctx *c[3];
    for (int i = 0; i < 3; i++)
        c[i] = model_ctx_new_in(m, kv, 20); /* 2 blocks each: the third does not fit */
    CHECK(c[0] && c[1] && !c[2]);
    CHECK_INT_EQ(model_kv_free_blocks(kv), 1);
    model_ctx_free(c[1]);
    CHECK_INT_EQ(model_kv_free_blocks(kv), 3);
    c[1] = model_ctx_new_in(m, kv, 16); /* 1 block */
    c[2] = model_ctx_new_in(m, kv, 32); /* 2 blocks */
    CHECK(c[1] && c[2] && model_kv_free_blocks(kv) == 0);
    /* Contexts 0 and 1 read 5 tokens one by one; then one batch: their 6th tokens, and context
     * 2's whole prompt as a chunk. */
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 5; t++)
            CHECK(model_forward(m, c[i], toks[i][t]) != NULL);
    struct model_row rows[8];
    int n = 0;
    rows[n++] = (struct model_row){c[0], toks[0][5], got, NULL, NULL};
    for (int t = 0; t < 6; t++)
        rows[n++] =
            (struct model_row){c[2], toks[2][t], t == 5 ? got + 2 * (size_t)v : NULL, NULL, NULL};
    rows[n++] = (struct model_row){c[1], toks[1][5], got + (size_t)v, NULL, NULL};
    CHECK(model_forward_batch(m, rows, n) == 0);
    CHECK(memcmp(got, want, 3 * (size_t)v * sizeof *got) == 0);
    CHECK_INT_EQ(model_ctx_pos(c[2]), 6);
    for (int i = 0; i < 3; i++)
        model_ctx_free(c[i]);
    CHECK_INT_EQ(model_kv_free_blocks(kv), 5);
    model_kv_free(kv);
    free(want);
    free(got);
    model_free(m);
}

/* Each architecture's own tensors are required, and make-model refuses an unknown --arch. */
static void test_arch_tensors(void)
{
    char mdir[300], err[512];
    struct mm_opts o;
    mm_defaults(&o);
    o.out = mdir;
    o.arch = "qwen3";
    snprintf(mdir, sizeof mdir, "%s/qwen3", dir);
    CHECK(mm_make(&o, err, sizeof err) == 0);
    struct model *m = load(mdir, 1);
    CHECK_INT_EQ(model_cfg(m)->arch, MODEL_QWEN3);
    CHECK_INT_EQ(model_cfg(m)->head_dim, 32); /* explicit, 2 * dim / heads */
    CHECK(model_cfg(m)->qk_norm && !model_cfg(m)->qkv_bias);
    model_free(m);
    /* The same weights read as Qwen2 (architectures alone names the model) lack the q/k/v
     * biases; the error names one. */
    char path[400];
    snprintf(path, sizeof path, "%s/config.json", mdir);
    json_t *cfg = json_load_file(path, 0, NULL);
    CHECK(cfg && json_object_del(cfg, "model_type") == 0 && json_dump_file(cfg, path, 0) == 0);
    json_decref(cfg);
    expect_config_error(mdir, "architectures", json_pack("[s]", "Qwen2ForCausalLM"),
                        "model.layers.0.self_attn.q_proj.bias", "missing");
    o.arch = "gpt2";
    CHECK(mm_make(&o, err, sizeof err) != 0);
    CHECK_CONTAINS(err, "llama, qwen2, qwen3, mistral");
}

/* gen's logprobs equal a log-softmax computed here, in double, from the logits of the same
 * tokens run again through a fresh context; the alternatives are the top logits in order. */
static void test_logprobs(const char *mdir)
{
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
    struct tok *t = tok_load(path, err, sizeof err);
    CHECK(t != NULL);
    struct model *m = load(mdir, 1);
    const int prompt[] = {556, 72, 101, 108, 108, 111, 44, 32};
    struct gen_params p = {.max_new = 12,
                           .temperature = 0.9f,
                           .top_p = 1,
                           .seed = 5,
                           .ignore_eos = 1,
                           .logprobs = 1,
                           .top_logprobs = 5};
    struct gen g;
    CHECK(gen_init(&g, m, t, prompt, 8, &p) == 0);
    CHECK(gen_prefill(&g) == 0);
    struct buf text = {0};
    while (g.finish == GEN_RUNNING)
        CHECK(gen_step(&g, &text) == 0);
    CHECK_INT_EQ(g.produced, 12);
    int v = model_cfg(m)->vocab;
    struct model_ctx *c = model_ctx_new(m, 32);
    const float *l = NULL;
    for (int i = 0; i < 8; i++)
        l = model_forward(m, c, prompt[i]);
    double most = 0;
    for (int k = 0; k < g.produced; k++) {
        const struct gen_logprob *e = &g.lp[k];
        double mx = l[0], sum = 0;
        for (int i = 1; i < v; i++)
            mx = fmax(mx, l[i]);
        for (int i = 0; i < v; i++)
            sum += exp((double)l[i] - mx);
        double lse = mx + log(sum);
        most = fmax(most, fabs(e->logprob - ((double)l[e->id] - lse)));
        CHECK_INT_EQ(e->ntop, 5);
        for (int j = 0; j < 5; j++) {
            int id = e->top_id[j], higher = 0;
            for (int i = 0; i < v; i++)
                higher += l[i] > l[id] || (l[i] == l[id] && i < id);
            CHECK_INT_EQ(higher, j); /* the j-th most likely, ties by id */
            most = fmax(most, fabs(e->top_logprob[j] - ((double)l[id] - lse)));
        }
        CHECK(e->logprob <= e->top_logprob[0]);
        l = model_forward(m, c, e->id);
    }
    printf("test_model: logprobs: largest difference from a log-softmax in double: %.2e\n", most);
    CHECK(most < 1e-5);
    model_ctx_free(c);
    buf_free(&text);
    gen_free(&g);
    model_free(m);
    tok_free(t);
}

int main(void)
{
    rt_tmpdir(dir, sizeof dir);
    char mdir[300];
    snprintf(mdir, sizeof mdir, "%s/bf16", dir);
    rt_make_model(mdir, ST_BF16);
    test_forward(mdir);
    test_batch(mdir);
    test_generation(mdir);
    test_logprobs(mdir);
    test_bad_configs(mdir);
    test_threads();
    const enum st_dtype others[] = {ST_F16, ST_F32};
    for (int i = 0; i < 2; i++) {
        snprintf(mdir, sizeof mdir, "%s/%s", dir, st_dtype_name(others[i]));
        rt_make_model(mdir, others[i]);
        test_forward(mdir);
    }
    test_arch_tensors();
    rt_rmtree(dir);
    printf("test_model: ok\n");
    return 0;
}
