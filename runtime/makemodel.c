/* makemodel: owns `orp-runtime make-model`: it trains a byte-level BPE on the embedded corpus
 * and writes a tiny random-weight Llama checkpoint around it (see makemodel.h).
 *
 * Training is the textbook algorithm: the corpus is split by Llama 3's pre-tokenizer regex into
 * words (counted once per distinct word), every word starts as its bytes, and each round merges
 * the most frequent adjacent pair (ties: the smallest pair of ids, for determinism) into a new
 * token, until the requested number of merges is reached or no pair occurs twice. The corpus is
 * a few KB, so recounting all pairs each round is cheap. */
#include "makemodel.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corpus.h"
#include "tokenizer.h"
#include "util.h"

/* Bounds on the options: a "tiny" model stays tiny, and the vocab fits what the corpus can teach.
 */
#define MM_MAX_DIM 4096
#define MM_MAX_LAYERS 64
#define MM_MAX_MERGES 20000
#define MM_MAX_CONTEXT 131072

const char *const mm_special_tokens[5] = {"<|begin_of_text|>", "<|end_of_text|>",
                                          "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};

static const char LLAMA3_CHAT_TEMPLATE[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void mm_defaults(struct mm_opts *o)
{
    *o = (struct mm_opts){.out = NULL,
                          .arch = "llama",
                          .dim = 64,
                          .layers = 2,
                          .heads = 4,
                          .kv_heads = 2,
                          .ffn = 176,
                          .merges = 300,
                          .context = 1024,
                          .seed = 1,
                          .dtype = ST_BF16};
}

/* ---- BPE training ---- */

struct word {
    int *sym;
    int n, count;
};

struct piece {
    const char *p;
    size_t n;
};

struct trainer {
    struct piece *pieces;
    size_t npieces, cap_pieces;
    struct word *words;
    size_t nwords;
    struct buf *tokens; /* raw bytes of each token id */
    int ntokens, cap_tokens;
    int (*merges)[2];
    int nmerges;
};

static int collect_piece(void *ctx, const char *p, size_t n)
{
    struct trainer *tr = ctx;
    if (tr->npieces == tr->cap_pieces) {
        size_t cap = tr->cap_pieces ? tr->cap_pieces * 2 : 1024;
        struct piece *np = realloc(tr->pieces, cap * sizeof *np);
        if (!np) return -1;
        tr->pieces = np;
        tr->cap_pieces = cap;
    }
    tr->pieces[tr->npieces++] = (struct piece){p, n};
    return 0;
}

static int cmp_piece(const void *a, const void *b)
{
    const struct piece *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Splits the corpus and turns distinct pieces into counted words of byte symbols. */
static int make_words(struct trainer *tr)
{
    char err[200];
    struct tok_regex *re = tok_regex_new(TOK_LLAMA3_PATTERN, 0, err, sizeof err);
    if (!re) return -1;
    int rc = tok_regex_split(re, mm_corpus, sizeof mm_corpus - 1, collect_piece, tr);
    tok_regex_free(re);
    if (rc) return -1;
    qsort(tr->pieces, tr->npieces, sizeof *tr->pieces, cmp_piece);
    tr->words = calloc(tr->npieces + 1, sizeof *tr->words);
    if (!tr->words) return -1;
    for (size_t i = 0; i < tr->npieces; i++) {
        if (tr->nwords && cmp_piece(&tr->pieces[i], &tr->pieces[i - 1]) == 0) {
            tr->words[tr->nwords - 1].count++;
            continue;
        }
        struct word *w = &tr->words[tr->nwords++];
        w->sym = malloc(tr->pieces[i].n * sizeof *w->sym);
        if (!w->sym) return -1;
        w->n = (int)tr->pieces[i].n;
        w->count = 1;
        for (size_t k = 0; k < tr->pieces[i].n; k++)
            w->sym[k] = (unsigned char)tr->pieces[i].p[k];
    }
    return 0;
}

struct pair_count {
    uint64_t key;
    long count; /* 0: empty */
};

/* The most frequent adjacent pair over all words; its count (0 when no pair exists). */
static long best_pair(const struct trainer *tr, struct pair_count *tab, size_t cap, int *a, int *b)
{
    memset(tab, 0, cap * sizeof *tab);
    long best = 0;
    uint64_t best_key = 0;
    for (size_t i = 0; i < tr->nwords; i++) {
        const struct word *w = &tr->words[i];
        for (int k = 0; k + 1 < w->n; k++) {
            uint64_t key = ((uint64_t)w->sym[k] << 32) | (uint32_t)w->sym[k + 1];
            size_t h = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (cap - 1);
            while (tab[h].count && tab[h].key != key)
                h = (h + 1) & (cap - 1);
            tab[h].key = key;
            tab[h].count += w->count;
            if (tab[h].count > best || (tab[h].count == best && key < best_key)) {
                best = tab[h].count;
                best_key = key;
            }
        }
    }
    *a = (int)(best_key >> 32);
    *b = (int)(uint32_t)best_key;
    return best;
}

/* The id of the token with these bytes, adding it when new; -1 on out of memory. */
static int token_id(struct trainer *tr, const char *bytes, size_t n)
{
    for (int i = 0; i < tr->ntokens; i++)
        if (tr->tokens[i].len == n && memcmp(tr->tokens[i].data, bytes, n) == 0) return i;
    if (tr->ntokens == tr->cap_tokens) {
        int cap = tr->cap_tokens ? tr->cap_tokens * 2 : 512;
        struct buf *nt = realloc(tr->tokens, (size_t)cap * sizeof *nt);
        if (!nt) return -1;
        tr->tokens = nt;
        tr->cap_tokens = cap;
    }
    struct buf *t = &tr->tokens[tr->ntokens];
    memset(t, 0, sizeof *t);
    if (buf_append(t, bytes, n) != 0) return -1;
    return tr->ntokens++;
}

static void apply_merge(struct trainer *tr, int a, int b, int id)
{
    for (size_t i = 0; i < tr->nwords; i++) {
        struct word *w = &tr->words[i];
        int o = 0;
        for (int k = 0; k < w->n; k++) {
            if (k + 1 < w->n && w->sym[k] == a && w->sym[k + 1] == b) {
                w->sym[o++] = id;
                k++;
            } else {
                w->sym[o++] = w->sym[k];
            }
        }
        w->n = o;
    }
}

static int train(struct trainer *tr, int merges)
{
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (token_id(tr, &c, 1) != b) return -1;
    }
    if (make_words(tr) != 0) return -1;
    size_t total = 0;
    for (size_t i = 0; i < tr->nwords; i++)
        total += (size_t)tr->words[i].n;
    size_t cap = 16;
    while (cap < 2 * total)
        cap *= 2;
    struct pair_count *tab = malloc(cap * sizeof *tab);
    tr->merges = malloc((size_t)(merges + 1) * sizeof *tr->merges);
    if (!tab || !tr->merges) {
        free(tab);
        return -1;
    }
    int rc = 0;
    while (tr->nmerges < merges) {
        int a, b;
        if (best_pair(tr, tab, cap, &a, &b) < 2) break; /* nothing left worth merging */
        struct buf joined = {0};
        if (buf_append(&joined, tr->tokens[a].data, tr->tokens[a].len) ||
            buf_append(&joined, tr->tokens[b].data, tr->tokens[b].len)) {
            buf_free(&joined);
            rc = -1;
            break;
        }
        int id = token_id(tr, joined.data, joined.len);
        buf_free(&joined);
        if (id < 0) {
            rc = -1;
            break;
        }
        tr->merges[tr->nmerges][0] = a;
        tr->merges[tr->nmerges][1] = b;
        tr->nmerges++;
        apply_merge(tr, a, b, id);
    }
    free(tab);
    return rc;
}

static void trainer_free(struct trainer *tr)
{
    for (size_t i = 0; i < tr->nwords; i++)
        free(tr->words[i].sym);
    for (int i = 0; i < tr->ntokens; i++)
        buf_free(&tr->tokens[i]);
    free(tr->words);
    free(tr->pieces);
    free(tr->tokens);
    free(tr->merges);
}

/* ---- files ---- */

/* A token's bytes in tokenizer.json's byte-level alphabet (new string). */
static char *bytelevel(const struct buf *b)
{
    struct buf out = {0};
    for (size_t i = 0; i < b->len; i++) {
        unsigned cp = tok_byte_to_unicode((unsigned char)b->data[i]);
        char u[2];
        if (cp < 0x80) {
            u[0] = (char)cp;
            buf_append(&out, u, 1);
        } else { /* all code points of the alphabet are below 0x800 */
            u[0] = (char)(0xC0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3F));
            buf_append(&out, u, 2);
        }
    }
    return out.data;
}

static int write_json(const char *dir, const char *name, json_t *v, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *s = json_dumps(v, JSON_INDENT(2));
    json_decref(v);
    int rc = s ? util_write_file_atomic(path, s, strlen(s), 0644) : -1;
    free(s);
    if (rc) seterr(err, errlen, "%s: cannot write", path);
    return rc;
}

static json_t *pre_tokenizer_json(void)
{
    return json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]}", "type", "Sequence",
                     "pretokenizers", "type", "Split", "pattern", "Regex", TOK_LLAMA3_PATTERN,
                     "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space",
                     0, "trim_offsets", 1, "use_regex", 0);
}

/* Llama 3's post-processor: a <|begin_of_text|> before every sequence. */
static json_t *post_processor_json(int bos)
{
    const char *b = mm_special_tokens[0];
    return json_pack(
        "{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},"
        "{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}",
        "type", "TemplateProcessing", "single", "SpecialToken", "id", b, "type_id", 0, "Sequence",
        "id", "A", "type_id", 0, "pair", "SpecialToken", "id", b, "type_id", 0, "Sequence", "id",
        "A", "type_id", 0, "SpecialToken", "id", b, "type_id", 1, "Sequence", "id", "B", "type_id",
        1, "special_tokens", b, "id", b, "ids", bos, "tokens", b);
}

static int write_tokenizer(const struct trainer *tr, const char *dir, char *err, size_t errlen)
{
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    for (int i = 0; i < tr->ntokens; i++) {
        char *s = bytelevel(&tr->tokens[i]);
        json_object_set_new(vocab, s, json_integer(i));
        free(s);
    }
    for (int i = 0; i < tr->nmerges; i++) {
        char *a = bytelevel(&tr->tokens[tr->merges[i][0]]);
        char *b = bytelevel(&tr->tokens[tr->merges[i][1]]);
        json_array_append_new(merges, json_sprintf("%s %s", a, b));
        free(a);
        free(b);
    }
    for (int i = 0; i < 5; i++)
        json_array_append_new(added,
                              json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", tr->ntokens + i,
                                        "content", mm_special_tokens[i], "single_word", 0, "lstrip",
                                        0, "rstrip", 0, "normalized", 0, "special", 1));
    json_t *model =
        json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout",
                  "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                  "byte_fallback", 0, "ignore_merges", 1, "vocab", vocab, "merges", merges);
    json_t *root = json_pack(
        "{s:s,s:n,s:n,s:o,s:n,s:o,s:o,s:{s:s,s:b,s:b,s:b},s:o}", "version", "1.0", "truncation",
        "padding", "added_tokens", added, "normalizer", "pre_tokenizer", pre_tokenizer_json(),
        "post_processor", post_processor_json(tr->ntokens), "decoder", "type", "ByteLevel",
        "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1, "model", model);
    if (!root) {
        seterr(err, errlen, "cannot build tokenizer.json");
        return -1;
    }
    return write_json(dir, "tokenizer.json", root, err, errlen);
}

static int write_tokenizer_config(const struct trainer *tr, const struct mm_opts *o, char *err,
                                  size_t errlen)
{
    json_t *dec = json_object();
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", tr->ntokens + i);
        json_object_set_new(dec, id,
                            json_pack("{s:s,s:b,s:b,s:b,s:b,s:b}", "content", mm_special_tokens[i],
                                      "lstrip", 0, "normalized", 0, "rstrip", 0, "single_word", 0,
                                      "special", 1));
    }
    json_t *root =
        json_pack("{s:o,s:s,s:s,s:s,s:b,s:i,s:s}", "added_tokens_decoder", dec, "bos_token",
                  mm_special_tokens[0], "eos_token", mm_special_tokens[4], "chat_template",
                  LLAMA3_CHAT_TEMPLATE, "clean_up_tokenization_spaces", 1, "model_max_length",
                  o->context, "tokenizer_class", "PreTrainedTokenizerFast");
    return write_json(o->out, "tokenizer_config.json", root, err, errlen);
}

static int write_configs(const struct trainer *tr, const struct mm_opts *o, char *err,
                         size_t errlen)
{
    int vocab = tr->ntokens + 5, bos = tr->ntokens, eot = tr->ntokens + 4, eos = tr->ntokens + 1;
    json_t *cfg = json_pack(
        "{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:i,s:i,s:b,s:i,s:[i,i],s:s,s:b,s:b,s:n,"
        "s:f,s:s}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", o->dim,
        "intermediate_size", o->ffn, "num_hidden_layers", o->layers, "num_attention_heads",
        o->heads, "num_key_value_heads", o->kv_heads, "head_dim", o->dim / o->heads, "rms_norm_eps",
        1e-5, "rope_theta", 500000.0, "max_position_embeddings", o->context, "vocab_size", vocab,
        "tie_word_embeddings", 0, "bos_token_id", bos, "eos_token_id", eos, eot, "hidden_act",
        "silu", "attention_bias", 0, "mlp_bias", 0, "rope_scaling", "initializer_range", 0.02,
        "torch_dtype",
        o->dtype == ST_F32   ? "float32"
        : o->dtype == ST_F16 ? "float16"
                             : "bfloat16");
    if (write_json(o->out, "config.json", cfg, err, errlen) != 0) return -1;
    json_t *gen = json_pack("{s:i,s:[i,i],s:b,s:f,s:f}", "bos_token_id", bos, "eos_token_id", eos,
                            eot, "do_sample", 1, "temperature", 0.6, "top_p", 0.9);
    return write_json(o->out, "generation_config.json", gen, err, errlen);
}

/* ---- weights ---- */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r) /* splitmix64 */
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_normal(struct rng *r) /* Box-Muller */
{
    double u1 = ((double)(rng_next(r) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rng_next(r) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* Fills a new [d0, d1] (or [d0] of ones when d1 == 0, a norm) tensor. Matrices get
 * N(0, 1/in): activations keep their scale through the layers, so the random model's logits
 * are neither flat nor saturated. */
static float *make_weight(struct rng *r, int64_t d0, int64_t d1, float stddev)
{
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    float *w = malloc(n * sizeof *w);
    if (!w) return NULL;
    for (size_t i = 0; i < n; i++)
        w[i] = d1 ? rng_normal(r) * stddev : 1.0f;
    return w;
}

static int write_weights(const struct mm_opts *o, int vocab, char *err, size_t errlen)
{
    int hd = o->dim / o->heads, qd = o->heads * hd, kvd = o->kv_heads * hd;
    static const char *const lnames[] = {
        "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};
    int64_t lshape[9][2] = {{o->dim, 0},      {qd, o->dim},     {kvd, o->dim},
                            {kvd, o->dim},    {o->dim, qd},     {o->dim, 0},
                            {o->ffn, o->dim}, {o->ffn, o->dim}, {o->dim, o->ffn}};
    size_t n = 3 + 9 * (size_t)o->layers;
    struct st_wtensor *t = calloc(n, sizeof *t);
    char(*names)[96] = calloc(n, sizeof *names);
    struct rng r = {o->seed};
    int rc = t && names ? 0 : -1;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int64_t d0, d1;
        if (i == 0) {
            snprintf(names[i], sizeof names[i], "model.embed_tokens.weight");
            d0 = vocab, d1 = o->dim;
        } else if (i == n - 2) {
            snprintf(names[i], sizeof names[i], "model.norm.weight");
            d0 = o->dim, d1 = 0;
        } else if (i == n - 1) {
            snprintf(names[i], sizeof names[i], "lm_head.weight");
            d0 = vocab, d1 = o->dim;
        } else {
            size_t l = (i - 1) / 9, k = (i - 1) % 9;
            snprintf(names[i], sizeof names[i], "model.layers.%zu.%s", l, lnames[k]);
            d0 = lshape[k][0], d1 = lshape[k][1];
        }
        float stddev = i == 0 ? 1.0f : d1 ? (float)(1.0 / sqrt((double)d1)) : 0;
        t[i] = (struct st_wtensor){.name = names[i],
                                   .dtype = d1 ? o->dtype : ST_F32,
                                   .ndim = d1 ? 2 : 1,
                                   .shape = {d0, d1},
                                   .data = make_weight(&r, d0, d1, stddev)};
        if (!t[i].data) rc = -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    if (rc == 0)
        rc = st_write(path, t, n, meta, err, errlen);
    else
        seterr(err, errlen, "out of memory making weights");
    json_decref(meta);
    for (size_t i = 0; t && i < n; i++)
        free((float *)t[i].data);
    free(t);
    free(names);
    return rc;
}

static int check_opts(const struct mm_opts *o, char *err, size_t errlen)
{
    if (!o->out || !*o->out) {
        seterr(err, errlen, "--out DIR is required");
        return -1;
    }
    if (!o->arch || strcmp(o->arch, "llama") != 0) {
        seterr(err, errlen, "--arch: only \"llama\" is supported");
        return -1;
    }
    if (o->dim < 2 || o->dim > MM_MAX_DIM || o->layers < 1 || o->layers > MM_MAX_LAYERS ||
        o->ffn < 1 || o->ffn > 4 * MM_MAX_DIM || o->merges < 0 || o->merges > MM_MAX_MERGES ||
        o->context < 16 || o->context > MM_MAX_CONTEXT) {
        seterr(err, errlen,
               "an option is out of range (dim 2..%d, layers 1..%d, ffn 1..%d, "
               "merges 0..%d, context 16..%d)",
               MM_MAX_DIM, MM_MAX_LAYERS, 4 * MM_MAX_DIM, MM_MAX_MERGES, MM_MAX_CONTEXT);
        return -1;
    }
    if (o->heads < 1 || o->kv_heads < 1 || o->dim % o->heads || o->heads % o->kv_heads ||
        (o->dim / o->heads) % 2) {
        seterr(err, errlen,
               "--heads must divide --dim into an even head size, and --kv-heads "
               "must divide --heads");
        return -1;
    }
    return 0;
}

int mm_make(const struct mm_opts *o, char *err, size_t errlen)
{
    if (check_opts(o, err, errlen) != 0) return -1;
    if (util_mkdirs(o->out, 0755) != 0) {
        seterr(err, errlen, "%s: cannot create the directory", o->out);
        return -1;
    }
    struct trainer tr = {0};
    int rc = train(&tr, o->merges);
    if (rc) seterr(err, errlen, "BPE training failed (out of memory)");
    if (rc == 0) rc = write_tokenizer(&tr, o->out, err, errlen);
    if (rc == 0) rc = write_tokenizer_config(&tr, o, err, errlen);
    if (rc == 0) rc = write_configs(&tr, o, err, errlen);
    if (rc == 0) rc = write_weights(o, tr.ntokens + 5, err, errlen);
    trainer_free(&tr);
    return rc;
}
