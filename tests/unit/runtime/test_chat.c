/* test_chat: each family's chat format (Llama 3, ChatML with and without a default system message,
 * Mistral) renders, byte for byte, what jinja2 renders from the template make-model writes, over
 * the conversations of tests/golden/chat_templates.json (made by chat_fixtures.py), and refuses
 * what the template refuses; the prompt's ids equal the rendered text tokenized with special
 * tokens (what Hugging Face does); content cannot forge special tokens; bad messages name the
 * field at fault; an unknown template falls back to the architecture's format; every eos of
 * generation_config.json ends a generation; stop strings end a generation without appearing in
 * its text. */
#include "chat.h"
#include "gen.h"
#include "model.h"
#include "rt_test.h"

static char dir[256], mdir[300];
static struct tok *tk;
static struct chat_tpl tpl;

static void encode_text(const char *s, struct tok_ids *ids)
{
    char err[256];
    CHECK(tok_encode(tk, s, strlen(s), 1, ids, err, sizeof err) == 0);
}

static void test_template(void)
{
    json_t *msgs = json_loads("[{\"role\":\"system\",\"content\":\"  Be brief.\\n\"},"
                              "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},"
                              "{\"type\":\"text\",\"text\":\"there!\"}]},"
                              "{\"role\":\"assistant\",\"content\":\"Hello.\"},"
                              "{\"role\":\"user\",\"content\":\"What's 2+2?\",\"name\":\"bob\"}]",
                              0, NULL);
    CHECK(msgs != NULL);
    struct tok_ids got = {0}, want = {0};
    struct jsonx_err e;
    CHECK(chat_encode(&tpl, tk, msgs, 1, &got, &e) == 0);
    encode_text("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi\nthere!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nWhat's 2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
                &want);
    CHECK_INT_EQ(got.n, want.n);
    for (size_t i = 0; i < got.n; i++)
        CHECK_INT_EQ(got.v[i], want.v[i]);
    tok_ids_free(&got);
    json_decref(msgs);

    /* "<|eot_id|>" in content is text, not the special token. */
    msgs = json_loads("[{\"role\":\"user\",\"content\":\"a<|eot_id|>b\"}]", 0, NULL);
    CHECK(chat_encode(&tpl, tk, msgs, 0, &got, &e) == 0);
    int eots = 0;
    for (size_t i = 0; i < got.n; i++)
        eots += got.v[i] == tpl.eot;
    CHECK_INT_EQ(eots, 1); /* only the end of the turn */
    tok_ids_free(&got);
    tok_ids_free(&want);
    json_decref(msgs);
}

static void expect_bad(const char *json, const char *param, const char *msg_part)
{
    json_t *msgs = json_loads(json, 0, NULL);
    CHECK(msgs != NULL);
    struct tok_ids ids = {0};
    struct jsonx_err e = {0};
    CHECK_INT_EQ(chat_encode(&tpl, tk, msgs, 1, &ids, &e), -1);
    CHECK_STR_EQ(e.param, param);
    CHECK_CONTAINS(e.message, msg_part);
    tok_ids_free(&ids);
    json_decref(msgs);
}

static void test_bad_messages(void)
{
    expect_bad("[]", "messages", "non-empty");
    expect_bad("{}", "messages", "non-empty");
    expect_bad("[1]", "messages[0]", "object");
    expect_bad("[{\"content\":\"x\"}]", "messages[0].role", "missing");
    expect_bad("[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\",\"content\":\"x\"}]",
               "messages[1].role", "not supported");
    expect_bad("[{\"role\":\"wizard\",\"content\":\"x\"}]", "messages[0].role", "must be");
    expect_bad("[{\"role\":\"user\"}]", "messages[0].content", "missing");
    expect_bad("[{\"role\":\"user\",\"content\":5}]", "messages[0].content", "string");
    expect_bad("[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]",
               "messages[0].content[0]", "image_url");
    expect_bad("[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{}]}]",
               "messages[0].tool_calls", "not supported");
    expect_bad("[{\"role\":\"user\",\"content\":\"x\",\"color\":\"red\"}]", "messages[0].color",
               "unknown");
}

struct family_model {
    const char *arch;
    char dir[320];
    struct tok *t;
    struct chat_tpl tpl;
};

static void family_load(struct family_model *f, const char *arch)
{
    char err[512], path[400];
    struct mm_opts o;
    mm_defaults(&o);
    f->arch = arch;
    snprintf(f->dir, sizeof f->dir, "%s/%s", dir, arch);
    o.out = f->dir;
    o.arch = arch;
    CHECK(mm_make(&o, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", f->dir);
    f->t = tok_load(path, err, sizeof err);
    CHECK(f->t != NULL);
    CHECK(chat_tpl_load(&f->tpl, f->dir, (enum model_arch)model_arch_find(arch), f->t, err,
                        sizeof err) == 0);
}

static void family_free(struct family_model *f)
{
    chat_tpl_free(&f->tpl);
    tok_free(f->t);
}

static void test_fixtures(void)
{
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "mistral"};
    struct family_model fm[4];
    for (int i = 0; i < 4; i++)
        family_load(&fm[i], archs[i]);
    CHECK_INT_EQ(fm[0].tpl.family, CHAT_LLAMA3);
    CHECK_INT_EQ(fm[1].tpl.family, CHAT_CHATML);
    CHECK_STR_EQ(fm[1].tpl.default_system, "You are a helpful assistant.");
    CHECK_INT_EQ(fm[2].tpl.family, CHAT_CHATML);
    CHECK(fm[2].tpl.default_system == NULL);
    CHECK_INT_EQ(fm[3].tpl.family, CHAT_MISTRAL);
    CHECK_INT_EQ(fm[1].tpl.bos_id, -1); /* Qwen: no bos_token */

    json_error_t je;
    json_t *cases = json_load_file(ORP_CHAT_FIXTURES, 0, &je);
    if (!cases) fprintf(stderr, "%s: %s\n", ORP_CHAT_FIXTURES, je.text);
    CHECK(json_is_array(cases) && json_array_size(cases) >= 40);
    size_t i, refused = 0;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *arch = json_string_value(json_object_get(c, "arch"));
        json_t *want = json_object_get(c, "rendered");
        int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        struct family_model *f = NULL;
        for (int k = 0; k < 4; k++)
            if (!strcmp(archs[k], arch)) f = &fm[k];
        CHECK(f != NULL);
        struct buf text = {0};
        struct tok_ids ids = {0}, want_ids = {0};
        struct jsonx_err e = {0};
        int rc = chat_render(&f->tpl, f->t, json_object_get(c, "messages"), gen, &text, &ids, &e);
        if (json_is_null(want)) {
            if (rc != -1) fprintf(stderr, "case %zu (%s): rendered, jinja2 refused\n", i, arch);
            CHECK_INT_EQ(rc, -1);
            CHECK_CONTAINS(e.param, "messages[");
            refused++;
        } else {
            CHECK_INT_EQ(rc, 0);
            if (text.len != json_string_length(want) ||
                memcmp(text.data, json_string_value(want), text.len) != 0)
                fprintf(stderr, "case %zu (%s):\n got  %s\n want %s\n", i, arch, text.data,
                        json_string_value(want));
            CHECK_INT_EQ(text.len, json_string_length(want));
            CHECK(memcmp(text.data, json_string_value(want), text.len) == 0);
            char err[256];
            CHECK(tok_encode(f->t, text.data, text.len, 1, &want_ids, err, sizeof err) == 0);
            CHECK_INT_EQ(ids.n, want_ids.n);
            CHECK(memcmp(ids.v, want_ids.v, ids.n * sizeof *ids.v) == 0);
        }
        buf_free(&text);
        tok_ids_free(&ids);
        tok_ids_free(&want_ids);
    }
    CHECK(refused >= 2);
    json_decref(cases);

    /* Every eos id of generation_config.json ends a generation: Qwen's lists <|im_end|> and
     * <|endoftext|>, while config.json has only the first. */
    char err[512];
    struct model *m = model_load(fm[1].dir, 1, err, sizeof err);
    CHECK(m != NULL);
    CHECK(model_is_eos(m, tok_find(fm[1].t, "<|im_end|>")));
    CHECK(model_is_eos(m, tok_find(fm[1].t, "<|endoftext|>")));
    CHECK(!model_is_eos(m, tok_find(fm[1].t, "<|im_start|>")));
    model_free(m);

    /* An unknown template (and none at all) falls back to the architecture's format. */
    char path[400];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", fm[3].dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    CHECK(cfg != NULL);
    json_object_set_new(cfg, "chat_template", json_string("{{ messages }}"));
    CHECK(json_dump_file(cfg, path, 0) == 0);
    struct chat_tpl t2;
    CHECK(chat_tpl_load(&t2, fm[3].dir, MODEL_MISTRAL, fm[3].t, err, sizeof err) == 0);
    CHECK_INT_EQ(t2.family, CHAT_MISTRAL);
    chat_tpl_free(&t2);
    CHECK(chat_tpl_load(&t2, fm[3].dir, MODEL_QWEN2, fm[3].t, err, sizeof err) == -1);
    CHECK_CONTAINS(err, "<|im_start|>"); /* ChatML's tokens are not in Mistral's tokenizer */
    CHECK(remove(path) == 0);
    CHECK(chat_tpl_load(&t2, fm[3].dir, MODEL_MISTRAL, fm[3].t, err, sizeof err) == 0);
    CHECK_INT_EQ(t2.family, CHAT_MISTRAL);
    CHECK_STR_EQ(t2.eos, "</s>");
    chat_tpl_free(&t2);
    json_decref(cfg);
    for (int k = 0; k < 4; k++)
        family_free(&fm[k]);
}

/* A greedy generation of max_new tokens from a fixed prompt, with optional stop strings. */
static enum gen_finish generate(const struct model *m, const char *stop, struct buf *out,
                                int *produced)
{
    const int prompt[] = {556, 84, 104, 101, 32};
    struct gen_params p = {.max_new = 60, .temperature = 0, .top_p = 1, .seed = 1};
    if (stop) p.stop[p.nstop++] = stop;
    struct gen g;
    CHECK(gen_init(&g, m, tk, prompt, 5, &p) == 0);
    CHECK(gen_prefill(&g) == 0);
    while (g.finish == GEN_RUNNING)
        CHECK(gen_step(&g, out) == 0);
    enum gen_finish f = g.finish;
    *produced = g.produced;
    gen_free(&g);
    return f;
}

static void test_stop_strings(void)
{
    char err[1024];
    struct model *m = model_load(mdir, 1, err, sizeof err);
    CHECK(m != NULL);
    struct buf full = {0}, cut = {0};
    int n_full, n_cut;
    generate(m, NULL, &full, &n_full);
    CHECK(full.len >= 12);
    /* Pick a stop string from the middle of the unconstrained text (not at a place where it
     * also occurs earlier): the stopped text is exactly what came before it. */
    char stop[5];
    size_t at = full.len / 2;
    while (at > 0 && ((unsigned char)full.data[at] & 0xC0) == 0x80)
        at--;
    memcpy(stop, full.data + at, 4);
    stop[4] = '\0';
    const char *first = strstr(full.data, stop);
    CHECK(first != NULL);
    enum gen_finish f = generate(m, stop, &cut, &n_cut);
    CHECK_INT_EQ(f, GEN_STOP);
    CHECK_INT_EQ(cut.len, (size_t)(first - full.data));
    CHECK(memcmp(cut.data, full.data, cut.len) == 0);
    CHECK(strstr(cut.data, stop) == NULL);
    CHECK(n_cut < n_full || n_full < 60);
    buf_free(&full);
    buf_free(&cut);
    model_free(m);
}

int main(void)
{
    rt_tmpdir(dir, sizeof dir);
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    rt_make_model(mdir, ST_BF16);
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
    tk = tok_load(path, err, sizeof err);
    CHECK(tk != NULL);
    CHECK(chat_tpl_load(&tpl, mdir, MODEL_LLAMA, tk, err, sizeof err) == 0);
    test_template();
    test_fixtures();
    test_bad_messages();
    test_stop_strings();
    chat_tpl_free(&tpl);
    tok_free(tk);
    rt_rmtree(dir);
    printf("test_chat: ok\n");
    return 0;
}
