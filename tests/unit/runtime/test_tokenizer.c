/* test_tokenizer: byte-level BPE round trips on make-model's tokenizer (ASCII, multi-byte UTF-8,
 * emoji, special tokens, the empty string), merges that really compress, the Llama 3 regex split,
 * merge priority and ignore_merges on a hand-written tokenizer.json (both merge forms), and the
 * streaming UTF-8 repair. */
#include "rt_test.h"
#include "tokenizer.h"

static char dir[256];

/* encode -> decode must give the input back, bytes for bytes. Returns the token count. */
static size_t roundtrip(const struct tok *t, const char *s, int allow_special)
{
    struct tok_ids ids = {0};
    char err[256];
    CHECK(tok_encode(t, s, strlen(s), allow_special, &ids, err, sizeof err) == 0);
    struct buf out = {0};
    CHECK(tok_decode(t, ids.v, ids.n, 0, &out) == 0);
    CHECK_INT_EQ(out.len, strlen(s));
    CHECK_STR_EQ(out.data, s);
    size_t n = ids.n;
    buf_free(&out);
    tok_ids_free(&ids);
    return n;
}

static int count_id(const struct tok *t, const char *s, int allow_special, int id)
{
    struct tok_ids ids = {0};
    char err[256];
    CHECK(tok_encode(t, s, strlen(s), allow_special, &ids, err, sizeof err) == 0);
    int c = 0;
    for (size_t i = 0; i < ids.n; i++)
        c += ids.v[i] == id;
    tok_ids_free(&ids);
    return c;
}

static void test_make_model_tokenizer(void)
{
    char mdir[300], path[400], err[512];
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    rt_make_model(mdir, ST_BF16);
    snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
    struct tok *t = tok_load(path, err, sizeof err);
    if (!t) fprintf(stderr, "%s\n", err);
    CHECK(t != NULL);
    CHECK_INT_EQ(tok_vocab_size(t), 256 + 300 + 5);

    CHECK_INT_EQ(roundtrip(t, "", 1), 0);
    roundtrip(t, "Hello, world!", 0);
    roundtrip(t, "  leading and trailing spaces  \n\n\ttabs\r\n", 0);
    roundtrip(t, "café naïve façade — 日本語のテキスト", 0);
    roundtrip(t, "emoji: 👍🏽 and a family 👨‍👩‍👧 and a flag 🇫🇷", 0);
    roundtrip(t, "digits 1234567890 and $19.99 at 10:30", 0);

    /* Special tokens: one id each when allowed; plain text (and still round-tripping) when not. */
    int eot = tok_find(t, "<|eot_id|>"), bot = tok_find(t, "<|begin_of_text|>");
    CHECK(eot >= 0 && bot >= 0 && tok_is_special(t, eot));
    const char *sp = "<|begin_of_text|>hi there<|eot_id|><|eot_id|>x";
    roundtrip(t, sp, 1);
    roundtrip(t, sp, 0);
    CHECK_INT_EQ(count_id(t, sp, 1, eot), 2);
    CHECK_INT_EQ(count_id(t, sp, 1, bot), 1);
    CHECK_INT_EQ(count_id(t, sp, 0, eot), 0);

    /* Merges learned from English compress English: far fewer tokens than bytes. */
    const char *en = "The weather today is cold and clear, and the children went outside to play.";
    size_t n = roundtrip(t, en, 0);
    if (n * 2 >= strlen(en)) fprintf(stderr, "%zu tokens for %zu bytes\n", n, strlen(en));
    CHECK(n * 2 < strlen(en));
    CHECK(tok_find(t, " the") >= 0);
    CHECK_INT_EQ(roundtrip(t, " the", 0), 1);

    /* skip_special drops special tokens from decoded text. */
    struct tok_ids ids = {0};
    CHECK(tok_encode(t, sp, strlen(sp), 1, &ids, err, sizeof err) == 0);
    struct buf out = {0};
    CHECK(tok_decode(t, ids.v, ids.n, 1, &out) == 0);
    CHECK_STR_EQ(out.data, "hi therex");
    buf_free(&out);
    tok_ids_free(&ids);
    tok_free(t);
}

struct pieces {
    char got[16][32];
    int n;
};

static int collect(void *ctx, const char *p, size_t n)
{
    struct pieces *ps = ctx;
    CHECK(ps->n < 16 && n < 32);
    memcpy(ps->got[ps->n], p, n);
    ps->got[ps->n++][n] = '\0';
    return 0;
}

static void test_llama3_split(void)
{
    char err[256];
    struct tok_regex *re = tok_regex_new(TOK_LLAMA3_PATTERN, 0, err, sizeof err);
    CHECK(re != NULL);
    const char *text = "Hello world's 12345 !!\n\n  x";
    const char *want[] = {"Hello", " world", "'s", " ", "123", "45", " !!\n\n", " ", " x"};
    struct pieces ps = {0};
    CHECK(tok_regex_split(re, text, strlen(text), collect, &ps) == 0);
    CHECK_INT_EQ(ps.n, 9);
    for (int i = 0; i < 9; i++)
        CHECK_STR_EQ(ps.got[i], want[i]);
    /* Case-insensitive contractions, and letters of any script. */
    ps.n = 0;
    text = "I'LL éTé";
    CHECK(tok_regex_split(re, text, strlen(text), collect, &ps) == 0);
    CHECK_INT_EQ(ps.n, 3);
    CHECK_STR_EQ(ps.got[1], "'LL");
    CHECK_STR_EQ(ps.got[2], " éTé");
    tok_regex_free(re);
}

/* A byte-level tokenizer.json with the 256 byte tokens, then extra tokens and merges. */
static struct tok *hand_tokenizer(const char *extra_vocab, const char *merges, int ignore_merges,
                                  int prefix_space)
{
    struct buf j = {0};
    buf_printf(&j,
               "{\"added_tokens\":[{\"id\":300,\"content\":\"<s>\",\"special\":true}],"
               "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":%s},"
               "\"model\":{\"type\":\"BPE\",\"ignore_merges\":%s,\"vocab\":{",
               prefix_space ? "true" : "false", ignore_merges ? "true" : "false");
    for (int b = 0; b < 256; b++) {
        unsigned cp = tok_byte_to_unicode((unsigned char)b);
        char u[8];
        if (cp == '"' || cp == '\\')
            snprintf(u, sizeof u, "\\%c", (char)cp);
        else if (cp < 0x80)
            snprintf(u, sizeof u, "%c", (char)cp);
        else
            snprintf(u, sizeof u, "%c%c", (char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F)));
        buf_printf(&j, "\"%s\":%d,", u, b);
    }
    buf_printf(&j, "%s},\"merges\":%s}}", extra_vocab, merges);
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/hand.json", dir);
    rt_write(path, j.data, j.len);
    buf_free(&j);
    struct tok *t = tok_load(path, err, sizeof err);
    if (!t) fprintf(stderr, "%s\n", err);
    CHECK(t != NULL);
    return t;
}

static void expect_ids(const struct tok *t, const char *s, const int *want, size_t n)
{
    struct tok_ids ids = {0};
    char err[256];
    CHECK(tok_encode(t, s, strlen(s), 1, &ids, err, sizeof err) == 0);
    CHECK_INT_EQ(ids.n, n);
    for (size_t i = 0; i < n; i++)
        CHECK_INT_EQ(ids.v[i], want[i]);
    tok_ids_free(&ids);
}

static void test_merge_rules(void)
{
    /* "b c" outranks "a b": abc -> a + bc, even though "ab" is also a merge. Array form. */
    struct tok *t =
        hand_tokenizer("\"ab\":256,\"bc\":257,\"abc\":258", "[[\"b\",\"c\"],[\"a\",\"b\"]]", 0, 0);
    expect_ids(t, "abc", (int[]){'a', 257}, 2);
    expect_ids(t, "abab<s>", (int[]){256, 256, 300}, 3);
    tok_free(t);

    /* String form; "abc" is in the vocab but no merge makes it: without ignore_merges the merges
     * decide (ab + c), with ignore_merges a whole piece found in the vocab wins. */
    t = hand_tokenizer("\"ab\":256,\"abc\":257", "[\"a b\"]", 0, 0);
    expect_ids(t, "abc", (int[]){256, 'c'}, 2);
    tok_free(t);
    t = hand_tokenizer("\"ab\":256,\"abc\":257", "[\"a b\"]", 1, 0);
    expect_ids(t, "abc", (int[]){257}, 1);
    expect_ids(t, "abcab", (int[]){256, 'c', 256}, 3); /* not in the vocab whole: merged */
    tok_free(t);

    /* A merge table converted from tiktoken ranks lists every split of a token: "abc" is reached
     * through "ab" + "c" even though "a" + "bc" is listed first (tests/e2e/tiktoken.test.js). */
    t = hand_tokenizer("\"ab\":256,\"bc\":257,\"abc\":258",
                       "[[\"a\",\"b\"],[\"b\",\"c\"],[\"a\",\"bc\"],[\"ab\",\"c\"]]", 1, 0);
    expect_ids(t, "abcab", (int[]){258, 256}, 2);
    expect_ids(t, "abc", (int[]){258}, 1);
    tok_free(t);

    /* add_prefix_space: a space before each stretch of text between added tokens. */
    t = hand_tokenizer("\"ab\":256", "[\"a b\"]", 0, 1);
    expect_ids(t, "ab<s>ab", (int[]){' ', 256, 300, ' ', 256}, 5);
    expect_ids(t, " ab", (int[]){' ', 256}, 2);
    tok_free(t);

    /* A merge whose result is not in the vocab is an error naming the file and the merge. */
    struct buf j = {0};
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/hand.json", dir);
    buf_printf(&j, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a a\"]}}");
    rt_write(path, j.data, j.len);
    buf_free(&j);
    CHECK(tok_load(path, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "hand.json");
}

static void feed(struct tok_utf8 *u, struct buf *out, const char *bytes)
{
    CHECK(tok_utf8_feed(u, bytes, strlen(bytes), out) == 0);
}

static void test_utf8_stream(void)
{
    struct tok_utf8 u = {0};
    struct buf out = {0};
    feed(&u, &out, "caf\xC3");
    CHECK_STR_EQ(out.data, "caf"); /* the é waits for its second byte */
    feed(&u, &out, "\xA9!");
    CHECK_STR_EQ(out.data, "café!");
    feed(&u, &out, "\xF0\x9F");
    feed(&u, &out, "\x91");
    CHECK_STR_EQ(out.data, "café!");
    feed(&u, &out, "\x8D");
    CHECK_STR_EQ(out.data, "café!👍");
    feed(&u, &out, "\xFF");
    CHECK_STR_EQ(out.data, "café!👍\xEF\xBF\xBD");
    out.len = 0;
    feed(&u, &out, "\xC0\x80x");     /* overlong: two bad bytes */
    feed(&u, &out, "\xED\xA0\x80y"); /* surrogate: three */
    feed(&u, &out, "\xE2\x82z");     /* truncated sequence, then z */
    CHECK_STR_EQ(out.data, "\xEF\xBF\xBD\xEF\xBF\xBDx\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDy"
                           "\xEF\xBF\xBDz");
    out.len = 0;
    feed(&u, &out, "end\xE2\x82");
    CHECK(tok_utf8_flush(&u, &out) == 0); /* an incomplete tail at the end */
    CHECK_STR_EQ(out.data, "end\xEF\xBF\xBD");
    buf_free(&out);
}

int main(void)
{
    rt_tmpdir(dir, sizeof dir);
    test_llama3_split();
    test_make_model_tokenizer();
    test_merge_rules();
    test_utf8_stream();
    rt_rmtree(dir);
    printf("test_tokenizer: ok\n");
    return 0;
}
