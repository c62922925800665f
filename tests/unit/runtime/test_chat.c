/* test_chat: the Llama 3 template gives the same ids as rendering the template to text and
 * tokenizing that with special tokens (what Hugging Face does), content cannot forge special
 * tokens, bad messages name the field at fault, and stop strings end a generation without
 * appearing in its text. */
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
    CHECK(chat_tpl_init(&tpl, tk, err, sizeof err) == 0);
    test_template();
    test_bad_messages();
    test_stop_strings();
    tok_free(tk);
    rt_rmtree(dir);
    printf("test_chat: ok\n");
    return 0;
}
