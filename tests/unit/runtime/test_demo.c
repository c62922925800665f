/* test_demo: the demo model (models/demo-kjv, a small Llama trained on the King James Bible by
 * runtime/demo/train.py) answers like its reference and in words:
 *  - the prompt ids of every golden case (ChatML conversations and plain text) equal those of
 *    train.py's own BPE, and greedy decoding gives exactly the 32 tokens (or fewer, up to
 *    <|im_end|>) that train.py's PyTorch model gave in float32 (tests/golden/demo_kjv_greedy.json),
 *    at TP 1, 2 and 4;
 *  - for 20 fixed chat prompts sampled at temperature 0.7 (seeds 1..20), at least 90 % of the
 *    alphabetic words of the replies are in /usr/share/dict/words (Debian's wamerican; case is
 *    ignored, as the dictionary spells "Lord" where the KJV writes "LORD"). */
#include <ctype.h>
#include <jansson.h>

#include "chat.h"
#include "gen.h"
#include "model.h"
#include "rt_test.h"
#include "tokenizer.h"
#include "util.h"

#define DICT_PATH "/usr/share/dict/words"
#define WORD_MIN_RATIO 0.90

static struct tok *tok;

/* The prompt of a golden case: its messages rendered with the model's template, or its text. */
static void case_prompt(const struct model *m, json_t *c, struct tok_ids *ids)
{
    json_t *msgs = json_object_get(c, "messages");
    if (msgs) {
        struct chat_tpl tpl;
        char err[512];
        CHECK(chat_tpl_load(&tpl, ORP_DEMO_MODEL, model_cfg(m)->arch, tok, err, sizeof err) == 0);
        struct jsonx_err jerr;
        CHECK(chat_encode(&tpl, tok, msgs, 1, ids, &jerr) == 0);
        chat_tpl_free(&tpl);
    } else {
        const char *text = json_string_value(json_object_get(c, "prompt"));
        char err[256];
        CHECK(text && tok_encode(tok, text, strlen(text), 0, ids, err, sizeof err) == 0);
    }
}

/* Runs one generation; its token ids into out (an eos included), its text into *text (owned). */
static void generate(const struct model *m, const struct tok_ids *prompt,
                     const struct gen_params *p, struct tok_ids *out, char **text)
{
    struct gen g;
    CHECK(gen_init(&g, m, tok, prompt->v, (int)prompt->n, p) == 0);
    CHECK(gen_prefill(&g) == 0);
    struct buf delta = {0};
    while (g.finish == GEN_RUNNING) {
        CHECK(gen_step(&g, &delta) == 0);
        CHECK(tok_ids_push(out, g.next) == 0);
    }
    *text = strndup(g.text.data ? g.text.data : "", g.text.len);
    buf_free(&delta);
    gen_free(&g);
}

static void test_golden_greedy(int tp)
{
    json_error_t je;
    json_t *root = json_load_file(ORP_DEMO_GOLDEN, 0, &je);
    if (!root) fprintf(stderr, "%s: %s\n", ORP_DEMO_GOLDEN, je.text);
    CHECK(root != NULL);
    char err[512];
    struct model *m = model_load_tp(ORP_DEMO_MODEL, 1, tp, err, sizeof err);
    if (!m) fprintf(stderr, "%s\n", err);
    CHECK(m != NULL);
    size_t i;
    json_t *c;
    int tokens = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c)
    {
        struct tok_ids ids = {0}, out = {0};
        case_prompt(m, c, &ids);
        json_t *want = json_object_get(c, "prompt_ids");
        CHECK_INT_EQ((int)ids.n, (int)json_array_size(want));
        for (size_t k = 0; k < ids.n; k++)
            CHECK_INT_EQ(ids.v[k], (int)json_integer_value(json_array_get(want, k)));
        struct gen_params p = {.max_new =
                                   (int)json_integer_value(json_object_get(root, "max_tokens")),
                               .temperature = 0,
                               .top_p = 1};
        char *text;
        generate(m, &ids, &p, &out, &text);
        want = json_object_get(c, "output_ids");
        if (out.n != json_array_size(want) ||
            strcmp(text, json_string_value(json_object_get(c, "output_text"))) != 0)
            fprintf(stderr, "case %zu tp %d: got \"%s\", reference \"%s\"\n", i, tp, text,
                    json_string_value(json_object_get(c, "output_text")));
        CHECK_INT_EQ((int)out.n, (int)json_array_size(want));
        for (size_t k = 0; k < out.n; k++)
            CHECK_INT_EQ(out.v[k], (int)json_integer_value(json_array_get(want, k)));
        tokens += (int)out.n;
        if (tp == 1) printf("test_demo: greedy %zu: %s\n", i, text);
        free(text);
        tok_ids_free(&ids);
        tok_ids_free(&out);
    }
    printf("test_demo: tp %d: %d greedy tokens in %zu cases equal the reference's\n", tp, tokens,
           json_array_size(json_object_get(root, "cases")));
    model_free(m);
    json_decref(root);
}

/* ---- the dictionary test ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

struct dict {
    char *data; /* the file, lower-cased, lines cut at '\n' */
    char **words;
    size_t n;
};

static void dict_load(struct dict *d)
{
    size_t len;
    d->data = util_read_file(DICT_PATH, &len);
    if (!d->data)
        fprintf(stderr, "%s is missing: install wamerican (ops/install-deps)\n", DICT_PATH);
    CHECK(d->data != NULL);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += d->data[i] == '\n';
    d->words = calloc(lines + 1, sizeof *d->words);
    CHECK(d->words != NULL);
    d->n = 0;
    for (char *s = d->data; *s;) {
        char *nl = strchr(s, '\n');
        if (nl) *nl = 0;
        for (char *q = s; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        if (*s) d->words[d->n++] = s;
        if (!nl) break;
        s = nl + 1;
    }
    qsort(d->words, d->n, sizeof *d->words, cmp_str);
}

/* Counts the alphabetic words of text (maximal runs of ASCII letters) and how many d has. */
static void count_words(const struct dict *d, const char *text, int *total, int *known)
{
    for (const char *s = text; *s;) {
        if (!isalpha((unsigned char)*s)) {
            s++;
            continue;
        }
        char w[64];
        size_t n = 0;
        for (; isalpha((unsigned char)*s); s++)
            if (n + 1 < sizeof w) w[n++] = (char)tolower((unsigned char)*s);
        w[n] = 0;
        const char *key = w;
        (*total)++;
        if (bsearch(&key, d->words, d->n, sizeof *d->words, cmp_str)) (*known)++;
    }
}

static const char *const word_prompts[20] = {
    "In the beginning God created the heaven and the earth.",
    "The LORD is my shepherd; I shall not want.",
    "Blessed are the poor in spirit.",
    "And Moses went up unto the mountain.",
    "What is love?",
    "Tell me about the king of Israel.",
    "And the people cried unto the LORD.",
    "Hear my prayer, O God.",
    "Who shall ascend into the hill of the LORD?",
    "And Jesus answered and said unto them,",
    "Let there be light.",
    "How should I live?",
    "The heavens declare the glory of God.",
    "And David took the city.",
    "Give thanks unto the LORD, for he is good.",
    "Where is the way to the house of wisdom?",
    "And the angel spake unto the woman.",
    "My son, hear the instruction of thy father.",
    "Praise ye the LORD.",
    "Peace be unto this house.",
};

static void test_words(void)
{
    struct dict d;
    dict_load(&d);
    char err[512];
    struct model *m = model_load(ORP_DEMO_MODEL, 1, err, sizeof err);
    CHECK(m != NULL);
    int total = 0, known = 0;
    for (int i = 0; i < 20; i++) {
        json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", word_prompts[i]);
        json_t *c = json_pack("{s:o}", "messages", msgs);
        struct tok_ids ids = {0}, out = {0};
        case_prompt(m, c, &ids);
        struct gen_params p = {
            .max_new = 48, .temperature = 0.7f, .top_p = 1, .seed = (uint64_t)i + 1};
        char *text;
        generate(m, &ids, &p, &out, &text);
        int t0 = total, k0 = known;
        count_words(&d, text, &total, &known);
        printf("test_demo: %2d (%d/%d known) %s -> %s\n", i + 1, known - k0, total - t0,
               word_prompts[i], text);
        free(text);
        tok_ids_free(&ids);
        tok_ids_free(&out);
        json_decref(c);
    }
    double ratio = total ? (double)known / total : 0;
    printf("test_demo: %d of %d words (%.1f %%) are in %s (need %.0f %%)\n", known, total,
           100 * ratio, DICT_PATH, 100 * WORD_MIN_RATIO);
    CHECK(total >= 200);
    CHECK(ratio >= WORD_MIN_RATIO);
    model_free(m);
    free(d.words);
    free(d.data);
}

int main(void)
{
    char err[512];
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", ORP_DEMO_MODEL);
    tok = tok_load(path, err, sizeof err);
    if (!tok) fprintf(stderr, "%s\n", err);
    CHECK(tok != NULL);
    for (int tp = 1; tp <= 4; tp *= 2)
        test_golden_greedy(tp);
    test_words();
    tok_free(tok);
    printf("test_demo: ok\n");
    return 0;
}
