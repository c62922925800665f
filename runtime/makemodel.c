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

/* The chat templates make-model writes into tokenizer_config.json, one per family: Llama 3's
 * (as Meta ships it for 3.0), ChatML as Qwen2-Instruct ships it (with its default system
 * message), plain ChatML, and Mistral's (v0.3's, without the tool branches). chat.c recognises
 * each; tests/unit/runtime/chat_fixtures.py renders them with jinja2. */
const char mm_tpl_llama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const char mm_tpl_chatml_qwen2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif "
    "%}{{'<|im_start|>' "
    "+ message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const char mm_tpl_chatml[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' "
    "}}{% endif %}";
const char mm_tpl_mistral[] =
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, "
    "conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if "
    "message['role'] == 'user' %}{%- if loop.last and system_message is defined %}{{- '[INST] ' + "
    "system_message + '\\n\\n' + message['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + "
    "message['content'] + '[/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}{{- "
    "' ' + message['content']|trim + eos_token }}{%- else %}{{- raise_exception('Only user and "
    "assistant roles are supported, with the exception of an initial optional system message!') "
    "}}{%- endif %}{%- endfor %}";

/* What differs between the families' checkpoints, besides the architecture switches. Indexes
 * below are into specials, whose ids follow the learned vocab in order. */
struct family {
    const char *arch, *hf_name;
    const char *specials[5];
    int nspecial;
    int bos_token, eos_token; /* tokenizer_config.json's bos_token / eos_token; -1: null */
    int cfg_bos, cfg_eos[2];  /* config.json's bos_token_id, eos_token_id (-1: none) */
    int gen_eos[2];           /* generation_config.json's eos_token_id (-1: none) */
    int bos_post;             /* the post-processor puts bos_token before every sequence */
    const char *template;
    double rope_theta, eps;
    int tied;
    int head_dim_mult; /* head_dim = mult * dim / heads unless --head-dim */
};

static const struct family families[] = {
    {"llama",
     "LlamaForCausalLM",
     {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
      "<|eot_id|>"},
     5,
     0,
     4,
     0,
     {1, 4},
     {1, 4},
     1,
     mm_tpl_llama3,
     500000.0,
     1e-5,
     0,
     1},
    {"qwen2",
     "Qwen2ForCausalLM",
     {"<|endoftext|>", "<|im_start|>", "<|im_end|>"},
     3,
     -1,
     2,
     0,
     {2, -1},
     {2, 0},
     0,
     mm_tpl_chatml_qwen2,
     1000000.0,
     1e-6,
     1,
     1},
    {"qwen3",
     "Qwen3ForCausalLM",
     {"<|endoftext|>", "<|im_start|>", "<|im_end|>"},
     3,
     -1,
     2,
     0,
     {2, -1},
     {2, 0},
     0,
     mm_tpl_chatml,
     1000000.0,
     1e-6,
     0,
     2},
    {"mistral",
     "MistralForCausalLM",
     {"<s>", "</s>", "[INST]", "[/INST]"},
     4,
     0,
     1,
     0,
     {1, -1},
     {1, -1},
     1,
     mm_tpl_mistral,
     1000000.0,
     1e-5,
     0,
     1},
};

static const struct family *find_family(const char *arch)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (arch && strcmp(families[i].arch, arch) == 0) return &families[i];
    return NULL;
}

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
                          .head_dim = 0,
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
static json_t *post_processor_json(const char *b, int bos)
{
    if (!b)
        return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                         "trim_offsets", 0, "use_regex", 0);
    return json_pack(
        "{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},"
        "{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}",
        "type", "TemplateProcessing", "single", "SpecialToken", "id", b, "type_id", 0, "Sequence",
        "id", "A", "type_id", 0, "pair", "SpecialToken", "id", b, "type_id", 0, "Sequence", "id",
        "A", "type_id", 0, "SpecialToken", "id", b, "type_id", 1, "Sequence", "id", "B", "type_id",
        1, "special_tokens", b, "id", b, "ids", bos, "tokens", b);
}

static int write_tokenizer(const struct trainer *tr, const struct family *f, const char *dir,
                           char *err, size_t errlen)
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
    for (int i = 0; i < f->nspecial; i++)
        json_array_append_new(added,
                              json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", tr->ntokens + i,
                                        "content", f->specials[i], "single_word", 0, "lstrip", 0,
                                        "rstrip", 0, "normalized", 0, "special", 1));
    json_t *model =
        json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout",
                  "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                  "byte_fallback", 0, "ignore_merges", 1, "vocab", vocab, "merges", merges);
    json_t *root = json_pack("{s:s,s:n,s:n,s:o,s:n,s:o,s:o,s:{s:s,s:b,s:b,s:b},s:o}", "version",
                             "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                             "pre_tokenizer", pre_tokenizer_json(), "post_processor",
                             post_processor_json(f->bos_post ? f->specials[f->bos_token] : NULL,
                                                 tr->ntokens + f->bos_token),
                             "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets",
                             1, "use_regex", 1, "model", model);
    if (!root) {
        seterr(err, errlen, "cannot build tokenizer.json");
        return -1;
    }
    return write_json(dir, "tokenizer.json", root, err, errlen);
}

static json_t *special_or_null(const struct family *f, int i)
{
    return i >= 0 ? json_string(f->specials[i]) : json_null();
}

static int write_tokenizer_config(const struct trainer *tr, const struct family *f,
                                  const struct mm_opts *o, char *err, size_t errlen)
{
    json_t *dec = json_object();
    for (int i = 0; i < f->nspecial; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", tr->ntokens + i);
        json_object_set_new(dec, id,
                            json_pack("{s:s,s:b,s:b,s:b,s:b,s:b}", "content", f->specials[i],
                                      "lstrip", 0, "normalized", 0, "rstrip", 0, "single_word", 0,
                                      "special", 1));
    }
    json_t *root =
        json_pack("{s:o,s:o,s:o,s:s,s:b,s:i,s:s}", "added_tokens_decoder", dec, "bos_token",
                  special_or_null(f, f->bos_token), "eos_token", special_or_null(f, f->eos_token),
                  "chat_template", f->template, "clean_up_tokenization_spaces", 1,
                  "model_max_length", o->context, "tokenizer_class", "PreTrainedTokenizerFast");
    return write_json(o->out, "tokenizer_config.json", root, err, errlen);
}

/* An eos list of up to two special indexes (-1: unused) as ids: an int when one, else a list. */
static json_t *eos_json(const int idx[2], int base)
{
    if (idx[1] < 0) return json_integer(base + idx[0]);
    return json_pack("[i,i]", base + idx[0], base + idx[1]);
}

static int head_dim(const struct mm_opts *o, const struct family *f)
{
    return o->head_dim > 0 ? o->head_dim : f->head_dim_mult * o->dim / o->heads;
}

static int write_configs(const struct trainer *tr, const struct family *f, const struct mm_opts *o,
                         char *err, size_t errlen)
{
    int base = tr->ntokens, vocab = base + f->nspecial;
    json_t *cfg = json_pack(
        "{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:i,s:i,s:b,s:i,s:o,s:s,s:b,s:b,s:n,"
        "s:f,s:s}",
        "architectures", f->hf_name, "model_type", f->arch, "hidden_size", o->dim,
        "intermediate_size", o->ffn, "num_hidden_layers", o->layers, "num_attention_heads",
        o->heads, "num_key_value_heads", o->kv_heads, "head_dim", head_dim(o, f), "rms_norm_eps",
        f->eps, "rope_theta", f->rope_theta, "max_position_embeddings", o->context, "vocab_size",
        vocab, "tie_word_embeddings", f->tied, "bos_token_id", base + f->cfg_bos, "eos_token_id",
        eos_json(f->cfg_eos, base), "hidden_act", "silu", "attention_bias", 0, "mlp_bias", 0,
        "rope_scaling", "initializer_range", 0.02, "torch_dtype",
        o->dtype == ST_F32   ? "float32"
        : o->dtype == ST_F16 ? "float16"
                             : "bfloat16");
    if (cfg && strcmp(f->arch, "llama") != 0) {
        /* Mistral v0.3 and Qwen write these; Qwen's window is off unless use_sliding_window. */
        int qwen = f->arch[0] == 'q';
        json_object_set_new(cfg, "sliding_window", qwen ? json_integer(o->context) : json_null());
        if (qwen) json_object_set_new(cfg, "use_sliding_window", json_false());
    }
    if (write_json(o->out, "config.json", cfg, err, errlen) != 0) return -1;
    json_t *gen =
        json_pack("{s:i,s:o,s:b,s:f,s:f}", "bos_token_id", base + f->cfg_bos, "eos_token_id",
                  eos_json(f->gen_eos, base), "do_sample", 1, "temperature", 0.6, "top_p", 0.9);
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

/* How a tensor is filled: a matrix N(0, 1/in) (the embedding N(0, 1)), a norm of ones, or, for
 * the tensors only some architectures have, values that make a missing or misapplied tensor show
 * in the logits: biases N(0, 0.1^2) and q/k norms 1 + N(0, 0.1^2). */
enum fill { FILL_MATRIX, FILL_ONES, FILL_BIAS, FILL_NORM_NOISY };

struct wspec {
    char name[96];
    int64_t d0, d1; /* d1 == 0: a vector */
    enum fill fill;
};

/* The checkpoint's tensors in the order their random values are drawn (Llama's order is fixed:
 * golden logits depend on it). Returns the count, or -1 when out of memory. */
static int weight_specs(const struct mm_opts *o, const struct family *f, int vocab,
                        struct wspec **out)
{
    int hd = head_dim(o, f), qd = o->heads * hd, kvd = o->kv_heads * hd;
    int qkv_bias = !strcmp(f->arch, "qwen2"), qk_norm = !strcmp(f->arch, "qwen3");
    struct {
        const char *suffix;
        int64_t d0, d1;
        enum fill fill;
        int want;
    } per_layer[] = {
        {"input_layernorm.weight", o->dim, 0, FILL_ONES, 1},
        {"self_attn.q_proj.weight", qd, o->dim, FILL_MATRIX, 1},
        {"self_attn.k_proj.weight", kvd, o->dim, FILL_MATRIX, 1},
        {"self_attn.v_proj.weight", kvd, o->dim, FILL_MATRIX, 1},
        {"self_attn.o_proj.weight", o->dim, qd, FILL_MATRIX, 1},
        {"post_attention_layernorm.weight", o->dim, 0, FILL_ONES, 1},
        {"mlp.gate_proj.weight", o->ffn, o->dim, FILL_MATRIX, 1},
        {"mlp.up_proj.weight", o->ffn, o->dim, FILL_MATRIX, 1},
        {"mlp.down_proj.weight", o->dim, o->ffn, FILL_MATRIX, 1},
        {"self_attn.q_proj.bias", qd, 0, FILL_BIAS, qkv_bias},
        {"self_attn.k_proj.bias", kvd, 0, FILL_BIAS, qkv_bias},
        {"self_attn.v_proj.bias", kvd, 0, FILL_BIAS, qkv_bias},
        {"self_attn.q_norm.weight", hd, 0, FILL_NORM_NOISY, qk_norm},
        {"self_attn.k_norm.weight", hd, 0, FILL_NORM_NOISY, qk_norm},
    };
    size_t npl = sizeof per_layer / sizeof per_layer[0];
    struct wspec *w = calloc(3 + npl * (size_t)o->layers, sizeof *w);
    if (!w) return -1;
    int n = 0;
    w[n++] = (struct wspec){"model.embed_tokens.weight", vocab, o->dim, FILL_MATRIX};
    for (int l = 0; l < o->layers; l++)
        for (size_t k = 0; k < npl; k++) {
            if (!per_layer[k].want) continue;
            snprintf(w[n].name, sizeof w[n].name, "model.layers.%d.%s", l, per_layer[k].suffix);
            w[n].d0 = per_layer[k].d0, w[n].d1 = per_layer[k].d1, w[n].fill = per_layer[k].fill;
            n++;
        }
    w[n++] = (struct wspec){"model.norm.weight", o->dim, 0, FILL_ONES};
    if (!f->tied) w[n++] = (struct wspec){"lm_head.weight", vocab, o->dim, FILL_MATRIX};
    *out = w;
    return n;
}

static float *fill_weight(struct rng *r, const struct wspec *w, int first)
{
    size_t n = (size_t)w->d0 * (size_t)(w->d1 ? w->d1 : 1);
    float *v = malloc(n * sizeof *v);
    if (!v) return NULL;
    float stddev = first ? 1.0f : w->d1 ? (float)(1.0 / sqrt((double)w->d1)) : 0.1f;
    for (size_t i = 0; i < n; i++) {
        switch (w->fill) {
        case FILL_MATRIX:
        case FILL_BIAS:
            v[i] = rng_normal(r) * stddev;
            break;
        case FILL_ONES:
            v[i] = 1.0f;
            break;
        case FILL_NORM_NOISY:
            v[i] = 1.0f + rng_normal(r) * 0.1f;
            break;
        }
    }
    return v;
}

static int write_weights(const struct mm_opts *o, const struct family *f, int vocab, char *err,
                         size_t errlen)
{
    struct wspec *ws = NULL;
    int n = weight_specs(o, f, vocab, &ws);
    struct st_wtensor *t = n > 0 ? calloc((size_t)n, sizeof *t) : NULL;
    struct rng r = {o->seed};
    int rc = t ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++) {
        /* Norms stay F32, as real checkpoints often keep them; biases take the matrices' dtype. */
        enum st_dtype dt =
            ws[i].fill == FILL_ONES || ws[i].fill == FILL_NORM_NOISY ? ST_F32 : o->dtype;
        t[i] = (struct st_wtensor){.name = ws[i].name,
                                   .dtype = dt,
                                   .ndim = ws[i].d1 ? 2 : 1,
                                   .shape = {ws[i].d0, ws[i].d1},
                                   .data = fill_weight(&r, &ws[i], i == 0)};
        if (!t[i].data) rc = -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    if (rc == 0)
        rc = st_write(path, t, (size_t)n, meta, err, errlen);
    else
        seterr(err, errlen, "out of memory making weights");
    json_decref(meta);
    for (int i = 0; t && i < n; i++)
        free((float *)t[i].data);
    free(t);
    free(ws);
    return rc;
}

static int check_opts(const struct mm_opts *o, char *err, size_t errlen)
{
    if (!o->out || !*o->out) {
        seterr(err, errlen, "--out DIR is required");
        return -1;
    }
    if (!find_family(o->arch)) {
        seterr(err, errlen, "--arch %s is not supported (llama, qwen2, qwen3, mistral)",
               o->arch ? o->arch : "(none)");
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
        head_dim(o, find_family(o->arch)) % 2 || o->head_dim < 0 || o->head_dim > MM_MAX_DIM) {
        seterr(err, errlen,
               "--heads must divide --dim, the head size (--head-dim) must be even, and "
               "--kv-heads must divide --heads");
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
    const struct family *f = find_family(o->arch);
    struct trainer tr = {0};
    int rc = train(&tr, o->merges);
    if (rc) seterr(err, errlen, "BPE training failed (out of memory)");
    if (rc == 0) rc = write_tokenizer(&tr, f, o->out, err, errlen);
    if (rc == 0) rc = write_tokenizer_config(&tr, f, o, err, errlen);
    if (rc == 0) rc = write_configs(&tr, f, o, err, errlen);
    if (rc == 0) rc = write_weights(o, f, tr.ntokens + f->nspecial, err, errlen);
    trainer_free(&tr);
    return rc;
}
