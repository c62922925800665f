/* tokenizer: owns the vocabulary, the merge table and the pre-tokenizer regex of one loaded
 * tokenizer.json, and is the only code that turns text into token ids and back (see
 * tokenizer.h).
 *
 * How merging works: a piece is first one symbol per byte (the vocab id of that byte's token).
 * Every adjacent pair that has a merge goes into a min-heap ordered by (rank, position), the order
 * Hugging Face's implementation uses; the best is popped, checked to be still current (both
 * symbols alive, unchanged and adjacent; stale entries are dropped lazily), merged, and its two
 * new neighbouring pairs are pushed. A piece of n bytes costs O(n log n) integer work; pair
 * lookups go through an open-addressing table keyed by the two ids, so no strings are built while
 * encoding. */
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pattern, used when a ByteLevel pre-tokenizer has use_regex (its default). */
#define GPT2_PATTERN                                                                               \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* Pieces up to this many bytes are merged in stack buffers; longer ones (rare: long runs of
 * spaces or punctuation) are allocated. */
#define BPE_STACK_SYMBOLS 128

struct tok_regex {
    pcre2_code *code;
};

struct token {
    char *bytes; /* raw bytes, NUL-terminated for convenience */
    size_t len;
    unsigned char present, added, special;
};

struct pair_slot {
    uint64_t key;  /* (left id << 32) | right id */
    uint32_t rank; /* UINT32_MAX: empty slot */
    int32_t merged;
};

struct tok {
    struct token *tokens; /* indexed by id, nvocab entries */
    int nvocab;
    uint32_t *str_slots; /* id + 1, 0 empty; keyed by the raw bytes of vocab (not added) tokens */
    size_t str_cap;
    struct pair_slot *pairs;
    size_t pair_cap;
    int byte_id[256];
    int *added; /* ids of added tokens, longest content first */
    int nadded;
    unsigned char added_first[256]; /* 1 when some added token starts with this byte */
    int ignore_merges;
    int add_prefix_space;
    struct tok_regex *re; /* NULL: no splitting */
};

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int tok_ids_push(struct tok_ids *a, int id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int *p = realloc(a->v, cap * sizeof *p);
        if (!p) return -1;
        a->v = p;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

void tok_ids_free(struct tok_ids *a)
{
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ---- byte <-> unicode ---- */

unsigned tok_byte_to_unicode(unsigned char b)
{
    /* Printable Latin-1 bytes stand for themselves; the other 68 are shifted to 256 + k in byte
     * order, so that no token string holds a control character or a space. */
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
    unsigned k = 0;
    for (unsigned c = 0; c < b; c++) {
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) k++;
    }
    return 256 + k;
}

static int unicode_to_byte_table[324];

static void init_unicode_to_byte(void)
{
    /* Idempotent, and racing initializers write the same values. */
    for (int i = 0; i < 324; i++)
        unicode_to_byte_table[i] = -1;
    for (int b = 0; b < 256; b++)
        unicode_to_byte_table[tok_byte_to_unicode((unsigned char)b)] = b;
}

/* Decodes one UTF-8 code point; returns its length or 0 when invalid. */
static int utf8_decode(const unsigned char *s, size_t n, unsigned *cp)
{
    if (n >= 1 && s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (n >= 2 && (s[0] & 0xe0) == 0xc0 && (s[1] & 0xc0) == 0x80) {
        *cp = ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
        return 2;
    }
    if (n >= 3 && (s[0] & 0xf0) == 0xe0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80) {
        *cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        return 3;
    }
    if (n >= 4 && (s[0] & 0xf8) == 0xf0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80 &&
        (s[3] & 0xc0) == 0x80) {
        *cp = ((s[0] & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) |
              (s[3] & 0x3fu);
        return 4;
    }
    return 0;
}

/* Turns a byte-level token string into raw bytes (new string). Code points outside the alphabet
 * are kept as their UTF-8 (such a token is never produced by merging, only decoded). */
static char *bytelevel_to_raw(const char *s, size_t *len_out)
{
    size_t n = strlen(s), o = 0;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        unsigned cp;
        int l = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (l == 0) l = 1, cp = 0xFFFFFFFFu;
        if (cp < 324 && unicode_to_byte_table[cp] >= 0)
            out[o++] = (char)unicode_to_byte_table[cp];
        else
            memcpy(out + o, s + i, (size_t)l), o += (size_t)l;
        i += (size_t)l;
    }
    out[o] = '\0';
    *len_out = o;
    return out;
}

/* ---- hash tables ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

static int str_lookup(const struct tok *t, const char *s, size_t n)
{
    size_t mask = t->str_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        uint32_t v = t->str_slots[i];
        if (!v) return -1;
        const struct token *k = &t->tokens[v - 1];
        if (k->len == n && memcmp(k->bytes, s, n) == 0) return (int)v - 1;
    }
}

static void str_insert(struct tok *t, int id)
{
    const struct token *k = &t->tokens[id];
    if (str_lookup(t, k->bytes, k->len) >= 0) return; /* first one wins */
    size_t mask = t->str_cap - 1;
    size_t i = hash_bytes(k->bytes, k->len) & mask;
    while (t->str_slots[i])
        i = (i + 1) & mask;
    t->str_slots[i] = (uint32_t)id + 1;
}

static const struct pair_slot *pair_lookup(const struct tok *t, int a, int b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->pair_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        const struct pair_slot *p = &t->pairs[i];
        if (p->rank == UINT32_MAX) return NULL;
        if (p->key == key) return p;
    }
}

static void pair_insert(struct tok *t, int a, int b, uint32_t rank, int merged)
{
    if (pair_lookup(t, a, b)) return; /* a repeated merge keeps its first (best) rank */
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->pair_cap - 1;
    size_t i = hash_u64(key) & mask;
    while (t->pairs[i].rank != UINT32_MAX)
        i = (i + 1) & mask;
    t->pairs[i] = (struct pair_slot){key, rank, merged};
}

/* ---- loading ---- */

static int set_token(struct tok *t, int id, const char *bytes, size_t len, int added, int special)
{
    struct token *k = &t->tokens[id];
    free(k->bytes);
    k->bytes = malloc(len + 1);
    if (!k->bytes) return -1;
    memcpy(k->bytes, bytes, len);
    k->bytes[len] = '\0';
    k->len = len;
    k->present = 1;
    k->added = (unsigned char)added;
    k->special = (unsigned char)special;
    return 0;
}

/* Largest id in model.vocab and added_tokens, validating both. */
static int max_id(json_t *vocab, json_t *added, const char *path, char *err, size_t errlen)
{
    int mx = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (1 << 24)) {
            seterr(err, errlen, "%s: model.vocab[\"%s\"] must be an id in [0, 2^24)", path, key);
            return -2;
        }
        if (json_integer_value(v) > mx) mx = (int)json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        json_t *id = json_object_get(v, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 24) || !json_is_string(json_object_get(v, "content"))) {
            seterr(err, errlen, "%s: added_tokens[%zu] needs an id in [0, 2^24) and a content",
                   path, i);
            return -2;
        }
        if (json_integer_value(id) > mx) mx = (int)json_integer_value(id);
    }
    return mx;
}

static int load_vocab(struct tok *t, json_t *vocab, const char *path, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        size_t len;
        char *raw = bytelevel_to_raw(key, &len);
        int id = (int)json_integer_value(v);
        if (!raw || set_token(t, id, raw, len, 0, 0) != 0) {
            free(raw);
            seterr(err, errlen, "%s: out of memory", path);
            return -1;
        }
        free(raw);
    }
    t->str_cap = pow2_at_least((size_t)t->nvocab * 2);
    t->str_slots = calloc(t->str_cap, sizeof *t->str_slots);
    if (!t->str_slots) return -1;
    for (int id = 0; id < t->nvocab; id++)
        if (t->tokens[id].present) str_insert(t, id);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = str_lookup(t, &c, 1);
        if (t->byte_id[b] < 0) {
            seterr(err, errlen,
                   "%s: model.vocab has no token for byte 0x%02x: not a byte-level BPE tokenizer",
                   path, b);
            return -1;
        }
    }
    return 0;
}

/* One merge rule, "a b" or ["a", "b"], as raw-byte token ids. */
static int merge_parts(json_t *m, char **a, char **b)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1;
        *a = strndup(s, (size_t)(sp - s));
        *b = strdup(sp + 1);
    } else if (json_is_array(m) && json_array_size(m) == 2 &&
               json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
        *a = strdup(json_string_value(json_array_get(m, 0)));
        *b = strdup(json_string_value(json_array_get(m, 1)));
    } else {
        return -1;
    }
    return *a && *b ? 0 : -1;
}

static int load_merges(struct tok *t, json_t *merges, const char *path, char *err, size_t errlen)
{
    if (!json_is_array(merges)) {
        seterr(err, errlen, "%s: model.merges is missing or not an array", path);
        return -1;
    }
    t->pair_cap = pow2_at_least(json_array_size(merges) * 2);
    t->pairs = malloc(t->pair_cap * sizeof *t->pairs);
    if (!t->pairs) return -1;
    for (size_t i = 0; i < t->pair_cap; i++)
        t->pairs[i].rank = UINT32_MAX;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m)
    {
        char *a = NULL, *b = NULL, *ra = NULL, *rb = NULL;
        int rc = merge_parts(m, &a, &b);
        if (rc != 0) {
            seterr(err, errlen, "%s: model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", path, i);
        } else {
            size_t la, lb;
            ra = bytelevel_to_raw(a, &la);
            rb = bytelevel_to_raw(b, &lb);
            char *ab = ra && rb ? malloc(la + lb + 1) : NULL;
            int ia = ra ? str_lookup(t, ra, la) : -1, ib = rb ? str_lookup(t, rb, lb) : -1;
            int iab = -1;
            if (ab) {
                memcpy(ab, ra, la);
                memcpy(ab + la, rb, lb);
                iab = str_lookup(t, ab, la + lb);
            }
            free(ab);
            if (ia < 0 || ib < 0 || iab < 0) {
                seterr(err, errlen,
                       "%s: model.merges[%zu] (\"%s\" + \"%s\"): %s is not in the vocab", path, i,
                       a, b,
                       ia < 0   ? "the left part"
                       : ib < 0 ? "the right part"
                                : "the merged token");
                rc = -1;
            } else {
                pair_insert(t, ia, ib, (uint32_t)i, iab);
            }
        }
        free(a), free(b), free(ra), free(rb);
        if (rc) return -1;
    }
    return 0;
}

static int cmp_added(const void *x, const void *y, void *ctx)
{
    const struct tok *t = ctx;
    size_t lx = t->tokens[*(const int *)x].len, ly = t->tokens[*(const int *)y].len;
    return lx > ly ? -1 : lx < ly;
}

static int load_added(struct tok *t, json_t *added, const char *path, char *err, size_t errlen)
{
    size_t i;
    json_t *v;
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added) return -1;
    json_array_foreach(added, i, v)
    {
        int id = (int)json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        if (!*content) {
            seterr(err, errlen, "%s: added_tokens[%zu] has an empty content", path, i);
            return -1;
        }
        if (set_token(t, id, content, strlen(content), 1,
                      json_is_true(json_object_get(v, "special"))) != 0)
            return -1;
        t->added[t->nadded++] = id;
        t->added_first[(unsigned char)content[0]] = 1;
    }
    /* Longest first, so "<|eot_id|>" is not cut short by a token that is its prefix. */
    qsort_r(t->added, (size_t)t->nadded, sizeof *t->added, cmp_added, t);
    return 0;
}

/* Walks pre_tokenizer (a Sequence, Split, ByteLevel) and compiles the one splitting regex. */
static int load_pretok(struct tok *t, json_t *pt, const char *path, char *err, size_t errlen)
{
    if (!pt || json_is_null(pt)) return 0;
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type) {
        seterr(err, errlen, "%s: pre_tokenizer has no \"type\"", path);
        return -1;
    }
    if (strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(pt, "pretokenizers"), i, v)
        {
            if (load_pretok(t, v, path, err, errlen) != 0) return -1;
        }
        return 0;
    }
    const char *pattern = NULL;
    int literal = 0;
    if (strcmp(type, "Split") == 0) {
        json_t *p = json_object_get(pt, "pattern");
        pattern = json_string_value(json_object_get(p, "Regex"));
        if (!pattern) {
            pattern = json_string_value(json_object_get(p, "String"));
            literal = 1;
        }
        const char *behavior = json_string_value(json_object_get(pt, "behavior"));
        if (!pattern || !behavior || strcmp(behavior, "Isolated") != 0 ||
            json_is_true(json_object_get(pt, "invert"))) {
            seterr(err, errlen,
                   "%s: pre_tokenizer Split: only a Regex or String pattern with behavior "
                   "\"Isolated\" and invert false is supported",
                   path);
            return -1;
        }
    } else if (strcmp(type, "ByteLevel") == 0) {
        t->add_prefix_space = json_is_true(json_object_get(pt, "add_prefix_space"));
        json_t *ur = json_object_get(pt, "use_regex");
        if (!ur || json_is_true(ur)) pattern = GPT2_PATTERN;
    } else {
        seterr(err, errlen, "%s: pre_tokenizer type \"%s\" is not supported", path, type);
        return -1;
    }
    if (!pattern) return 0;
    if (t->re) {
        seterr(err, errlen, "%s: pre_tokenizer: more than one splitting regex is not supported",
               path);
        return -1;
    }
    char rerr[256];
    t->re = tok_regex_new(pattern, literal, rerr, sizeof rerr);
    if (!t->re) {
        seterr(err, errlen, "%s: pre_tokenizer pattern: %s", path, rerr);
        return -1;
    }
    return 0;
}

static int check_model(json_t *root, const char *path, char *err, size_t errlen)
{
    json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || (type && strcmp(type, "BPE") != 0)) {
        seterr(err, errlen, "%s: \"model\" must be a BPE model (type is \"%s\")", path,
               type ? type : "?");
        return -1;
    }
    if (!json_is_object(json_object_get(model, "vocab"))) {
        seterr(err, errlen, "%s: model.vocab is missing or not an object", path);
        return -1;
    }
    if (json_is_true(json_object_get(model, "byte_fallback"))) {
        seterr(err, errlen, "%s: model.byte_fallback is not supported (not byte-level BPE)", path);
        return -1;
    }
    json_t *norm = json_object_get(root, "normalizer");
    const char *ntype = json_string_value(json_object_get(norm, "type"));
    /* NFC only changes decomposed input, which still round-trips; anything else would change
     * the text, so it is refused rather than silently ignored. */
    if (norm && !json_is_null(norm) && (!ntype || strcmp(ntype, "NFC") != 0)) {
        seterr(err, errlen, "%s: normalizer \"%s\" is not supported", path, ntype ? ntype : "?");
        return -1;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) {
        seterr(err, errlen, "%s: added_tokens must be an array", path);
        return -1;
    }
    return 0;
}

struct tok *tok_load(const char *path, char *err, size_t errlen)
{
    init_unicode_to_byte();
    err[0] = '\0';
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_cannot_open_file)
            seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        else
            seterr(err, errlen, "%s: not valid JSON: %s (line %d)", path, je.text, je.line);
        return NULL;
    }
    struct tok *t = calloc(1, sizeof *t);
    int rc = t ? check_model(root, path, err, errlen) : -1;
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    if (rc == 0) {
        int mx = max_id(vocab, added, path, err, errlen);
        rc = mx < -1 ? -1 : 0;
        if (rc == 0) {
            t->nvocab = mx + 1;
            t->tokens = calloc((size_t)t->nvocab + 1, sizeof *t->tokens);
            if (!t->tokens) rc = -1;
        }
    }
    if (rc == 0) rc = load_vocab(t, vocab, path, err, errlen);
    if (rc == 0) rc = load_merges(t, json_object_get(model, "merges"), path, err, errlen);
    if (rc == 0) rc = load_added(t, added, path, err, errlen);
    if (rc == 0) rc = load_pretok(t, json_object_get(root, "pre_tokenizer"), path, err, errlen);
    if (rc == 0) t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    json_decref(root);
    if (rc != 0) {
        if (!err[0]) seterr(err, errlen, "%s: out of memory", path);
        tok_free(t);
        return NULL;
    }
    return t;
}

void tok_free(struct tok *t)
{
    if (!t) return;
    for (int i = 0; i < t->nvocab; i++)
        free(t->tokens[i].bytes);
    free(t->tokens);
    free(t->str_slots);
    free(t->pairs);
    free(t->added);
    tok_regex_free(t->re);
    free(t);
}

int tok_vocab_size(const struct tok *t)
{
    return t->nvocab;
}

int tok_find(const struct tok *t, const char *s)
{
    size_t n = strlen(s);
    for (int i = 0; i < t->nadded; i++) {
        const struct token *k = &t->tokens[t->added[i]];
        if (k->len == n && memcmp(k->bytes, s, n) == 0) return t->added[i];
    }
    return str_lookup(t, s, n);
}

int tok_is_special(const struct tok *t, int id)
{
    return id >= 0 && id < t->nvocab && t->tokens[id].special;
}

const char *tok_bytes(const struct tok *t, int id, size_t *len)
{
    if (id < 0 || id >= t->nvocab || !t->tokens[id].present) return NULL;
    *len = t->tokens[id].len;
    return t->tokens[id].bytes;
}

/* ---- regex ---- */

struct tok_regex *tok_regex_new(const char *pattern, int literal, char *err, size_t errlen)
{
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *code =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (!code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        seterr(err, errlen, "does not compile at offset %zu: %s", (size_t)eo, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* best effort: the interpreter is correct too */
    struct tok_regex *re = malloc(sizeof *re);
    if (!re) {
        pcre2_code_free(code);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    re->code = code;
    return re;
}

void tok_regex_free(struct tok_regex *re)
{
    if (!re) return;
    pcre2_code_free(re->code);
    free(re);
}

int tok_regex_split(const struct tok_regex *re, const char *text, size_t len,
                    int (*fn)(void *ctx, const char *piece, size_t n), void *ctx)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (!md) return -1;
    size_t off = 0, done = 0;
    int rc = 0;
    while (off <= len && rc == 0) {
        int m = pcre2_match(re->code, (PCRE2_SPTR)text, len, off, 0, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            rc = -1;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms > done) rc = fn(ctx, text + done, ms - done);
        if (rc == 0 && me > ms) rc = fn(ctx, text + ms, me - ms);
        if (me > done) done = me;
        if (me > ms) {
            off = me;
        } else { /* empty match: step over one character */
            off = ms + 1;
            while (off < len && ((unsigned char)text[off] & 0xc0) == 0x80)
                off++;
        }
    }
    if (rc == 0 && done < len) rc = fn(ctx, text + done, len - done);
    pcre2_match_data_free(md);
    return rc;
}

/* ---- encoding ---- */

struct cand {
    uint32_t rank, pos;
    int left, right;
};

static int cand_less(const struct cand *a, const struct cand *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct cand *h, size_t *n, struct cand c)
{
    size_t i = (*n)++;
    while (i > 0 && cand_less(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static struct cand heap_pop(struct cand *h, size_t *n)
{
    struct cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

struct bpe_work {
    int *id, *prev, *next;
    struct cand *heap;
    size_t nheap;
};

static void push_pair(const struct tok *t, struct bpe_work *w, int pos)
{
    if (pos < 0) return;
    int r = w->next[pos];
    if (r < 0) return;
    const struct pair_slot *p = pair_lookup(t, w->id[pos], w->id[r]);
    if (p)
        heap_push(w->heap, &w->nheap, (struct cand){p->rank, (uint32_t)pos, w->id[pos], w->id[r]});
}

static int bpe_merge(const struct tok *t, const unsigned char *s, size_t n, struct bpe_work *w,
                     struct tok_ids *out)
{
    for (size_t i = 0; i < n; i++) {
        w->id[i] = t->byte_id[s[i]];
        w->prev[i] = (int)i - 1;
        w->next[i] = i + 1 < n ? (int)i + 1 : -1;
    }
    w->nheap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, w, (int)i);
    while (w->nheap) {
        struct cand c = heap_pop(w->heap, &w->nheap);
        int pos = (int)c.pos, r = w->next[pos];
        /* Stale: the left symbol was merged away (id -1), or either side changed. */
        if (w->id[pos] != c.left || r < 0 || w->id[r] != c.right) continue;
        w->id[pos] = pair_lookup(t, c.left, c.right)->merged;
        w->id[r] = -1;
        w->next[pos] = w->next[r];
        if (w->next[r] >= 0) w->prev[w->next[r]] = pos;
        push_pair(t, w, w->prev[pos]);
        push_pair(t, w, pos);
    }
    for (int i = 0; i >= 0; i = w->next[i])
        if (tok_ids_push(out, w->id[i]) != 0) return -1;
    return 0;
}

static int bpe(const struct tok *t, const unsigned char *s, size_t n, struct tok_ids *out)
{
    if (n == 0) return 0;
    if (n == 1) return tok_ids_push(out, t->byte_id[s[0]]);
    if (t->ignore_merges) {
        int whole = str_lookup(t, (const char *)s, n);
        if (whole >= 0) return tok_ids_push(out, whole);
    }
    /* Each merge pushes at most two candidates on top of the first n - 1. */
    int st_id[BPE_STACK_SYMBOLS], st_prev[BPE_STACK_SYMBOLS], st_next[BPE_STACK_SYMBOLS];
    struct cand st_heap[3 * BPE_STACK_SYMBOLS];
    struct bpe_work w = {st_id, st_prev, st_next, st_heap, 0};
    void *mem = NULL;
    if (n > BPE_STACK_SYMBOLS) {
        mem = malloc(n * 3 * sizeof(int) + 3 * n * sizeof(struct cand));
        if (!mem) return -1;
        w.heap = mem;
        w.id = (int *)(w.heap + 3 * n);
        w.prev = w.id + n;
        w.next = w.prev + n;
    }
    int rc = bpe_merge(t, s, n, &w, out);
    free(mem);
    return rc;
}

struct enc_ctx {
    const struct tok *t;
    struct tok_ids *out;
};

static int enc_piece(void *ctx, const char *piece, size_t n)
{
    struct enc_ctx *c = ctx;
    return bpe(c->t, (const unsigned char *)piece, n, c->out);
}

/* Encodes text between added tokens. ByteLevel's add_prefix_space puts a space before each such
 * segment that does not start with one, as Hugging Face does. */
static int encode_segment(const struct tok *t, const char *s, size_t n, struct tok_ids *out,
                          char *err, size_t errlen)
{
    if (n == 0) return 0;
    struct enc_ctx c = {t, out};
    struct buf prefixed = {0};
    int rc = 0;
    if (t->add_prefix_space && s[0] != ' ') {
        rc = buf_append(&prefixed, " ", 1) || buf_append(&prefixed, s, n);
        s = prefixed.data;
        n = prefixed.len;
    }
    if (rc == 0) rc = t->re ? tok_regex_split(t->re, s, n, enc_piece, &c) : enc_piece(&c, s, n);
    buf_free(&prefixed);
    if (rc != 0) seterr(err, errlen, "tokenizer: pre-tokenizer regex failed or out of memory");
    return rc;
}

/* The first added token in s[0..n) at or after the start: sets *at and returns its id, or -1. */
static int find_added(const struct tok *t, const char *s, size_t n, size_t *at)
{
    for (size_t i = 0; i < n; i++) {
        if (!t->added_first[(unsigned char)s[i]]) continue;
        for (int k = 0; k < t->nadded; k++) {
            const struct token *a = &t->tokens[t->added[k]];
            if (a->len <= n - i && memcmp(s + i, a->bytes, a->len) == 0) {
                *at = i;
                return t->added[k];
            }
        }
    }
    return -1;
}

int tok_encode(const struct tok *t, const char *text, size_t len, int allow_special,
               struct tok_ids *out, char *err, size_t errlen)
{
    int rc = 0;
    size_t pos = 0;
    while (pos < len && rc == 0) {
        size_t at = 0;
        int id = allow_special && t->nadded ? find_added(t, text + pos, len - pos, &at) : -1;
        size_t seg = id >= 0 ? at : len - pos;
        rc = encode_segment(t, text + pos, seg, out, err, errlen);
        if (rc == 0 && id >= 0) {
            rc = tok_ids_push(out, id);
            seg += t->tokens[id].len;
        }
        pos += seg;
    }
    return rc;
}

int tok_decode(const struct tok *t, const int *ids, size_t n, int skip_special, struct buf *out)
{
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tok_bytes(t, ids[i], &len);
        if (!b || (skip_special && t->tokens[ids[i]].special)) continue;
        if (buf_append(out, b, len) != 0) return -1;
    }
    if (!out->data) return buf_append(out, "", 0);
    return 0;
}

/* ---- streaming UTF-8 ---- */

/* At p (n bytes): the length of a valid sequence (1..4); 0 when p is a valid but incomplete
 * prefix; -k when the first k bytes are a maximal invalid subpart (one U+FFFD). */
static int utf8_check(const unsigned char *p, size_t n)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = p[i];
        if (b < (i == 1 ? lo : 0x80u) || b > (i == 1 ? hi : 0xBFu)) return -i;
    }
    return need + 1;
}

static const char REPLACEMENT[] = "\xEF\xBF\xBD";

int tok_utf8_feed(struct tok_utf8 *u, const void *data, size_t len, struct buf *out)
{
    unsigned char small[64];
    const unsigned char *p = data;
    unsigned char *joined = NULL;
    size_t n = len;
    if (u->npend) { /* continue the incomplete tail of the last feed */
        n = (size_t)u->npend + len;
        joined = n <= sizeof small ? small : malloc(n);
        if (!joined) return -1;
        memcpy(joined, u->pend, (size_t)u->npend);
        memcpy(joined + u->npend, data, len);
        p = joined;
        u->npend = 0;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        int r = utf8_check(p + i, n - i);
        if (r > 0) {
            size_t j = i + (size_t)r; /* take a run of valid sequences at once */
            while (j < n && p[j] < 0x80)
                j++;
            rc = buf_append(out, p + i, j - i);
            i = j;
        } else if (r == 0) {
            u->npend = (int)(n - i);
            memcpy(u->pend, p + i, n - i);
            break;
        } else {
            rc = buf_append(out, REPLACEMENT, 3);
            i += (size_t)-r;
        }
    }
    if (joined != small) free(joined);
    if (rc == 0 && !out->data) rc = buf_append(out, "", 0);
    return rc;
}

int tok_utf8_flush(struct tok_utf8 *u, struct buf *out)
{
    int rc = u->npend ? buf_append(out, REPLACEMENT, 3) : 0;
    u->npend = 0;
    if (rc == 0 && !out->data) rc = buf_append(out, "", 0);
    return rc;
}
