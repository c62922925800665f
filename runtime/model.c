/* model: owns a model's configuration and f32 weights, and computes its forward pass on the
 * CPU (see model.h). This is the reference implementation: plain loops in the order of Hugging
 * Face's LlamaForCausalLM (Qwen2, Qwen3 and Mistral differ only where marked), so the CUDA
 * kernels can be checked against it.
 *
 * One layer, for the token at position pos (x is the residual stream, [dim]):
 *   xb = rmsnorm(x) * attn_norm
 *   q = Wq xb [heads*hd], k = Wk xb [kv*hd], v = Wv xb [kv*hd]  (+ bq, bk, bv: Qwen2)
 *   (Qwen3: each head of q and k rmsnorm'd with q_norm / k_norm [hd])
 *   RoPE on q and k ("rotate_half": element i pairs with i + hd/2); k, v stored in the cache at pos
 *   per head h (sharing kv head h / (heads/kv)): softmax(q_h . k_t / sqrt(hd)) over t <= pos
 *   (Mistral: and pos - t < sliding_window), weighted sum of v_t
 *   x += Wo att
 *   xb = rmsnorm(x) * ffn_norm; x += Wdown (silu(Wgate xb) * (Wup xb))
 * then logits = lm_head rmsnorm(x) * norm. Weights are row-major [out, in], as PyTorch's Linear
 * stores them, so each output is a dot product over a contiguous row. */
#include "model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "log.h"
#include "safetensors.h"

/* Matrix-vector products smaller than this many multiply-adds stay on the calling thread: waking
 * the pool costs more than it saves. */
#define MODEL_PAR_MIN_WORK (1 << 16)

/* Upper bounds on config.json values, so a corrupt file fails here, not in malloc. */
#define MODEL_MAX_DIM (1 << 16)
#define MODEL_MAX_VOCAB (1 << 22)
#define MODEL_MAX_CONTEXT (1 << 20)

struct layer {
    float *attn_norm;       /* [dim] */
    float *wq;              /* [heads*hd, dim] */
    float *wk;              /* [kv*hd, dim] */
    float *wv;              /* [kv*hd, dim] */
    float *wo;              /* [dim, heads*hd] */
    float *ffn_norm;        /* [dim] */
    float *w_gate;          /* [ffn, dim] */
    float *w_up;            /* [ffn, dim] */
    float *w_down;          /* [dim, ffn] */
    float *bq, *bk, *bv;    /* [heads*hd], [kv*hd], [kv*hd]; NULL unless qkv_bias */
    float *q_norm, *k_norm; /* [hd]; NULL unless qk_norm */
};

/* A fixed set of worker threads that run one task at a time, each call of the task with its own
 * index; the caller is index 0 and runs its share too. Two users: the matvec pool (index i
 * multiplies the i-th slice of the rows) and the tensor-parallel ranks (index k runs rank k's
 * layers). One task at a time (call_lock). */
struct pool {
    int n; /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t call_lock, mu;
    pthread_cond_t cv_work, cv_done;
    uint64_t gen;
    int pending, stop, started;
    void (*fn)(void *arg, int index);
    void *arg;
};

/* One tensor-parallel rank's part of the model (Megatron's layout): its heads and their q/k/v
 * rows, the o_proj columns they feed, its slice of the MLP's gate/up rows and down columns; norms
 * shared. KV heads are split between ranks, or replicated when there are fewer than ranks. With
 * one rank its layers are the model's own. */
struct shard {
    int heads;    /* query heads of this rank: heads / tp, from head rank * heads */
    int kv_heads; /* KV heads it holds: kv / tp, or 1 when replicated */
    int kv_first; /* the first of them, in the model's numbering */
    int ffn;      /* intermediate_size / tp */
    struct layer *layer;
};

struct model {
    struct model_config cfg;
    float *embed; /* [vocab, dim] */
    struct layer *layer;
    float *norm;     /* [dim] */
    float *lm_head;  /* [vocab, dim]; == embed when tied */
    float *inv_freq; /* [hd/2] */
    struct pool pool;
    int tp;
    struct shard *shard; /* [tp] */
    struct coll *coll;   /* NULL when tp == 1 */
    struct pool ranks;   /* tp threads: rank k is index k */
    const struct model_dev_ops *dev; /* a device backend runs it (model_new_dev); else NULL */
    void *dev_self;
};

/* A pool of KV blocks: block i holds, for every layer, MODEL_KV_BLOCK positions of k and of v:
 * k[((i * layers + l) * MODEL_KV_BLOCK + off) * kvd + j]. */
struct model_kv {
    int layers, kvd, nblocks, nfree, tp;
    float **k, **v; /* [tp]: each rank's own heads */
    int *free;      /* stack of free block ids, nfree of them */
    pthread_mutex_t mu;
};

struct model_ctx {
    int len, pos;
    struct model_kv *kv;
    int own_kv;  /* kv is this context's private pool */
    int *blocks; /* [ceil(len / MODEL_KV_BLOCK)] block ids, all reserved at creation */
    int nblocks;
    float *logits; /* [vocab], for model_forward */
};

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- config ---- */

/* An integer field in [min, max]; def used when absent and not required. */
static int cfg_int(json_t *o, const char *key, int required, int def, int min, int max, int *out,
                   const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) {
            seterr(err, errlen, "%s: missing field \"%s\"", path, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        seterr(err, errlen, "%s: field \"%s\" must be an integer in [%d, %d]", path, key, min, max);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int cfg_num(json_t *o, const char *key, int required, double def, float *out,
                   const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) {
            seterr(err, errlen, "%s: missing field \"%s\"", path, key);
            return -1;
        }
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v))) {
        seterr(err, errlen, "%s: field \"%s\" must be a positive number", path, key);
        return -1;
    }
    *out = (float)json_number_value(v);
    return 0;
}

/* eos_token_id: an int or a list of ints; adds those not yet in c. */
static int add_eos(json_t *v, struct model_config *c, const char *path, char *err, size_t errlen)
{
    if (!v || json_is_null(v)) return 0;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= c->vocab) {
            seterr(err, errlen,
                   "%s: field \"eos_token_id\" must be an id below vocab_size %d "
                   "or a list of them",
                   path, c->vocab);
            return -1;
        }
        int id = (int)json_integer_value(e), seen = 0;
        for (int k = 0; k < c->neos; k++)
            seen |= c->eos_ids[k] == id;
        if (!seen && c->neos < MODEL_MAX_EOS) c->eos_ids[c->neos++] = id;
    }
    return 0;
}

static int parse_rope_scaling(json_t *rs, struct model_config *c, const char *path, char *err,
                              size_t errlen)
{
    if (!rs || json_is_null(rs)) return 0;
    const char *type = json_string_value(json_object_get(rs, "rope_type"));
    if (!type) type = json_string_value(json_object_get(rs, "type"));
    if (!type || strcmp(type, "llama3") != 0) {
        seterr(err, errlen, "%s: rope_scaling type \"%s\" is not supported (only llama3)", path,
               type ? type : "?");
        return -1;
    }
    c->rope_llama3 = 1;
    char sub[4200];
    snprintf(sub, sizeof sub, "%s rope_scaling", path);
    return cfg_num(rs, "factor", 1, 0, &c->rs_factor, sub, err, errlen) ||
                   cfg_num(rs, "low_freq_factor", 1, 0, &c->rs_low_freq, sub, err, errlen) ||
                   cfg_num(rs, "high_freq_factor", 1, 0, &c->rs_high_freq, sub, err, errlen) ||
                   cfg_int(rs, "original_max_position_embeddings", 1, 0, 1, MODEL_MAX_CONTEXT,
                           &c->rs_orig_max_pos, sub, err, errlen)
               ? -1
               : 0;
}

/* What each architecture switches on. Everything else (GQA, RoPE, tied embeddings, llama3 rope
 * scaling) is read from config.json the same way for all of them. */
static const struct arch_info {
    const char *hf_name;    /* architectures[0] */
    const char *model_type; /* model_type, also our short name */
    int qkv_bias, qk_norm;
} arch_table[MODEL_NARCH] = {
    [MODEL_LLAMA] = {"LlamaForCausalLM", "llama", 0, 0},
    [MODEL_QWEN2] = {"Qwen2ForCausalLM", "qwen2", 1, 0},
    [MODEL_QWEN3] = {"Qwen3ForCausalLM", "qwen3", 0, 1},
    [MODEL_MISTRAL] = {"MistralForCausalLM", "mistral", 0, 0},
};

const char *model_arch_name(enum model_arch a)
{
    return a >= 0 && a < MODEL_NARCH ? arch_table[a].model_type : "?";
}

int model_arch_find(const char *name)
{
    for (int i = 0; i < MODEL_NARCH; i++)
        if (name && strcmp(arch_table[i].model_type, name) == 0) return i;
    return -1;
}

/* Sets c->arch and its switches from architectures[0] (or model_type when that is absent), and
 * refuses the options of those architectures we do not implement. */
static int check_arch(json_t *o, struct model_config *c, const char *path, char *err, size_t errlen)
{
    json_t *archs = json_object_get(o, "architectures");
    const char *mt = json_string_value(json_object_get(o, "model_type"));
    const char *a = NULL;
    int ai = -1;
    if (json_is_array(archs) && json_array_size(archs) > 0) {
        a = json_string_value(json_array_get(archs, 0));
        for (int i = 0; i < MODEL_NARCH && a; i++)
            if (strcmp(arch_table[i].hf_name, a) == 0) ai = i;
        if (ai < 0) {
            seterr(err, errlen,
                   "%s: architectures[0] \"%s\" is not supported (supported: LlamaForCausalLM, "
                   "Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM)",
                   path, a ? a : "?");
            return -1;
        }
    }
    if (mt && model_arch_find(mt) < 0) {
        seterr(err, errlen,
               "%s: model_type \"%s\" is not supported (supported: llama, qwen2, qwen3, mistral)",
               path, mt);
        return -1;
    }
    if (ai < 0 && !mt) {
        seterr(err, errlen, "%s: neither \"architectures\" nor \"model_type\" names the model",
               path);
        return -1;
    }
    if (ai < 0) ai = model_arch_find(mt);
    if (mt && model_arch_find(mt) != ai) {
        seterr(err, errlen, "%s: model_type \"%s\" does not match architectures[0] \"%s\"", path,
               mt, a);
        return -1;
    }
    c->arch = (enum model_arch)ai;
    c->qkv_bias = arch_table[ai].qkv_bias;
    c->qk_norm = arch_table[ai].qk_norm;
    const char *act = json_string_value(json_object_get(o, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) {
        seterr(err, errlen, "%s: hidden_act \"%s\" is not supported (silu)", path, act);
        return -1;
    }
    /* Qwen2 has its q/k/v bias built in (no config key); elsewhere a bias is an option we do
     * not implement. */
    if ((c->arch != MODEL_QWEN2 && json_is_true(json_object_get(o, "attention_bias"))) ||
        json_is_true(json_object_get(o, "mlp_bias"))) {
        seterr(err, errlen, "%s: attention_bias / mlp_bias are not supported for %s", path,
               arch_table[ai].model_type);
        return -1;
    }
    /* Qwen writes sliding_window even when use_sliding_window is false, which turns it off. */
    if (json_is_true(json_object_get(o, "use_sliding_window"))) {
        seterr(err, errlen, "%s: use_sliding_window is not supported for %s", path,
               arch_table[ai].model_type);
        return -1;
    }
    return 0;
}

static int parse_config(json_t *o, struct model_config *c, const char *p, char *err, size_t el)
{
    memset(c, 0, sizeof *c);
    if (check_arch(o, c, p, err, el) ||
        cfg_int(o, "hidden_size", 1, 0, 1, MODEL_MAX_DIM, &c->dim, p, err, el) ||
        cfg_int(o, "intermediate_size", 1, 0, 1, 16 * MODEL_MAX_DIM, &c->ffn, p, err, el) ||
        cfg_int(o, "num_hidden_layers", 1, 0, 1, 1024, &c->layers, p, err, el) ||
        cfg_int(o, "num_attention_heads", 1, 0, 1, MODEL_MAX_DIM, &c->heads, p, err, el) ||
        cfg_int(o, "num_key_value_heads", 0, c->heads, 1, c->heads, &c->kv_heads, p, err, el) ||
        cfg_int(o, "head_dim", 0, c->dim / c->heads, 2, MODEL_MAX_DIM, &c->head_dim, p, err, el) ||
        cfg_int(o, "vocab_size", 1, 0, 1, MODEL_MAX_VOCAB, &c->vocab, p, err, el) ||
        cfg_int(o, "max_position_embeddings", 1, 0, 1, MODEL_MAX_CONTEXT, &c->max_pos, p, err,
                el) ||
        cfg_num(o, "rms_norm_eps", 1, 0, &c->eps, p, err, el) ||
        cfg_num(o, "rope_theta", 0, 10000.0, &c->rope_theta, p, err, el) ||
        cfg_int(o, "bos_token_id", 0, -1, 0, c->vocab - 1, &c->bos_id, p, err, el) ||
        add_eos(json_object_get(o, "eos_token_id"), c, p, err, el) ||
        parse_rope_scaling(json_object_get(o, "rope_scaling"), c, p, err, el))
        return -1;
    if (c->heads % c->kv_heads != 0 || c->head_dim % 2 != 0) {
        seterr(err, el,
               "%s: num_attention_heads must be a multiple of num_key_value_heads, and "
               "head_dim even",
               p);
        return -1;
    }
    json_t *tie = json_object_get(o, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie)) {
        seterr(err, el, "%s: field \"tie_word_embeddings\" must be a boolean", p);
        return -1;
    }
    c->tied = json_is_true(tie);
    if (c->arch == MODEL_MISTRAL &&
        cfg_int(o, "sliding_window", 0, 0, 1, MODEL_MAX_CONTEXT, &c->sliding_window, p, err, el))
        return -1;
    return 0;
}

int model_config_load(const char *dir, struct model_config *c, char *err, size_t errlen)
{
    char path[4096];
    json_error_t je;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *o = json_load_file(path, 0, &je);
    if (!o && json_error_code(&je) == json_error_cannot_open_file) {
        seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (!o || !json_is_object(o)) {
        seterr(err, errlen, "%s: %s (line %d)", path, o ? "not a JSON object" : je.text, je.line);
        json_decref(o);
        return -1;
    }
    int rc = parse_config(o, c, path, err, errlen);
    json_decref(o);
    if (rc) return -1;
    /* generation_config.json may add eos ids (Llama 3 instruct lists <|eot_id|> only there). */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    o = json_load_file(path, 0, &je);
    if (o) {
        rc = add_eos(json_object_get(o, "eos_token_id"), c, path, err, errlen);
        json_decref(o);
    }
    return rc;
}

/* ---- weights ---- */

/* Loads tensor name of shape [d0] (d1 == 0) or [d0, d1] as a new f32 array. */
static float *load_tensor(const struct st_set *st, const char *dir, const char *name, int64_t d0,
                          int64_t d1, char *err, size_t errlen)
{
    const struct st_tensor *t = st_find(st, name);
    if (!t) {
        seterr(err, errlen, "%s/model.safetensors: tensor '%s' is missing", dir, name);
        return NULL;
    }
    int nd = d1 ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        char got[96] = "", *g = got;
        for (int i = 0; i < t->ndim && g < got + sizeof got - 24; i++)
            g += sprintf(g, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (nd == 2)
            seterr(err, errlen, "%s: tensor '%s' has shape [%s], config.json implies [%lld, %lld]",
                   t->file, name, got, (long long)d0, (long long)d1);
        else
            seterr(err, errlen, "%s: tensor '%s' has shape [%s], config.json implies [%lld]",
                   t->file, name, got, (long long)d0);
        return NULL;
    }
    float *out = malloc((size_t)t->numel * sizeof *out + 1);
    if (!out) {
        seterr(err, errlen, "%s: tensor '%s': out of memory", t->file, name);
        return NULL;
    }
    st_to_f32(t, out);
    return out;
}

static int load_layer(struct model *m, const struct st_set *st, const char *dir, int l, char *err,
                      size_t errlen)
{
    const struct model_config *c = &m->cfg;
    struct layer *L = &m->layer[l];
    int64_t qd = (int64_t)c->heads * c->head_dim, kvd = (int64_t)c->kv_heads * c->head_dim;
    struct {
        const char *suffix;
        float **dst;
        int64_t d0, d1;
        int want;
    } ws[] = {
        {"input_layernorm.weight", &L->attn_norm, c->dim, 0, 1},
        {"self_attn.q_proj.weight", &L->wq, qd, c->dim, 1},
        {"self_attn.k_proj.weight", &L->wk, kvd, c->dim, 1},
        {"self_attn.v_proj.weight", &L->wv, kvd, c->dim, 1},
        {"self_attn.o_proj.weight", &L->wo, c->dim, qd, 1},
        {"post_attention_layernorm.weight", &L->ffn_norm, c->dim, 0, 1},
        {"mlp.gate_proj.weight", &L->w_gate, c->ffn, c->dim, 1},
        {"mlp.up_proj.weight", &L->w_up, c->ffn, c->dim, 1},
        {"mlp.down_proj.weight", &L->w_down, c->dim, c->ffn, 1},
        {"self_attn.q_proj.bias", &L->bq, qd, 0, c->qkv_bias},
        {"self_attn.k_proj.bias", &L->bk, kvd, 0, c->qkv_bias},
        {"self_attn.v_proj.bias", &L->bv, kvd, 0, c->qkv_bias},
        {"self_attn.q_norm.weight", &L->q_norm, c->head_dim, 0, c->qk_norm},
        {"self_attn.k_norm.weight", &L->k_norm, c->head_dim, 0, c->qk_norm},
    };
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
        char name[160];
        if (!ws[i].want) continue;
        snprintf(name, sizeof name, "model.layers.%d.%s", l, ws[i].suffix);
        *ws[i].dst = load_tensor(st, dir, name, ws[i].d0, ws[i].d1, err, errlen);
        if (!*ws[i].dst) return -1;
    }
    return 0;
}

static int load_weights(struct model *m, const char *dir, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    struct st_set *st = st_open(dir, err, errlen);
    if (!st) return -1;
    int rc = -1;
    m->layer = calloc((size_t)c->layers, sizeof *m->layer);
    if (!m->layer) goto out;
    m->embed = load_tensor(st, dir, "model.embed_tokens.weight", c->vocab, c->dim, err, errlen);
    if (!m->embed) goto out;
    for (int l = 0; l < c->layers; l++)
        if (load_layer(m, st, dir, l, err, errlen) != 0) goto out;
    m->norm = load_tensor(st, dir, "model.norm.weight", c->dim, 0, err, errlen);
    if (!m->norm) goto out;
    if (c->tied) {
        m->lm_head = m->embed;
    } else {
        m->lm_head = load_tensor(st, dir, "lm_head.weight", c->vocab, c->dim, err, errlen);
        if (!m->lm_head) goto out;
    }
    rc = 0;
out:
    st_close(st);
    return rc;
}

/* inv_freq[i] = theta^(-2i/hd), then Llama 3's scaling: long wavelengths are divided by factor,
 * short ones kept, the band between interpolated. */
static int init_rope(struct model *m)
{
    const struct model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    m->inv_freq = malloc((size_t)half * sizeof *m->inv_freq);
    if (!m->inv_freq) return -1;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
        if (c->rope_llama3) {
            double old = c->rs_orig_max_pos, wl = 2 * M_PI / f;
            double low_wl = old / c->rs_low_freq, high_wl = old / c->rs_high_freq;
            if (wl > low_wl) {
                f /= c->rs_factor;
            } else if (wl >= high_wl) {
                double s = (old / wl - c->rs_low_freq) / (c->rs_high_freq - c->rs_low_freq);
                f = (1 - s) * f / c->rs_factor + s * f;
            }
        }
        m->inv_freq[i] = (float)f;
    }
    return 0;
}

/* ---- the thread pool ---- */

static float dot(const float *row, const float *x, int cols)
{
    /* Eight independent sums so the compiler can keep them in vector registers (a single
     * running sum is a dependency chain it may not reorder). */
    float acc[8] = {0};
    int j = 0;
    for (; j + 8 <= cols; j += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += row[j + k] * x[j + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < cols; j++)
        s += row[j] * x[j];
    return s;
}

/* Rows [r0, r1) of out[b][rows] = W[rows, cols] x[b][cols] for nb inputs. Each weight row is read
 * once for the whole batch (the point of batching: decode is bound by reading the weights), and
 * each output is the same dot product whatever nb is, so batched and single results are
 * bit-identical. */
static void matmul_rows(float *out, const float *w, const float *x, int r0, int r1, int rows,
                        int cols, int nb)
{
    for (int r = r0; r < r1; r++) {
        const float *row = w + (size_t)r * cols;
        for (int b = 0; b < nb; b++)
            out[(size_t)b * rows + r] = dot(row, x + (size_t)b * cols, cols);
    }
}

struct worker_arg {
    struct pool *p;
    int index;
};

static void *pool_worker(void *arg)
{
    struct worker_arg *wa = arg;
    struct pool *p = wa->p;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->stop)
            pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        p->fn(p->arg, index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Starts n - 1 workers (n <= 1: none; the caller alone). -1 when a thread cannot be made (those
 * made are stopped by pool_stop). */
static int pool_start(struct pool *p, int n)
{
    p->n = 1;
    pthread_mutex_init(&p->call_lock, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->started = 1;
    if (n <= 1) return 0;
    p->th = calloc((size_t)n, sizeof *p->th);
    if (!p->th) return -1;
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) return -1;
        *wa = (struct worker_arg){p, i};
        if (pthread_create(&p->th[i], NULL, pool_worker, wa) != 0) {
            free(wa);
            return -1;
        }
        p->n = i + 1;
    }
    return 0;
}

static void pool_stop(struct pool *p)
{
    if (!p->started) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->call_lock);
    p->started = 0;
}

/* Runs fn(arg, i) for every index i of the pool, i = 0 on the calling thread, and returns when all
 * have. The pool is the model's only mutable part, hence the const model's pools taken here. */
static void pool_run(const struct pool *cp, void (*fn)(void *arg, int index), void *arg)
{
    struct pool *p = (struct pool *)cp;
    pthread_mutex_lock(&p->call_lock);
    pthread_mutex_lock(&p->mu);
    p->fn = fn, p->arg = arg;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->call_lock);
}

struct matmul_task {
    float *out;
    const float *w, *x;
    int rows, cols, nb, n;
};

/* Index i of n multiplies rows [rows * i / n, rows * (i + 1) / n). */
static void matmul_slice(void *arg, int i)
{
    const struct matmul_task *t = arg;
    int r0 = (int)((int64_t)t->rows * i / t->n), r1 = (int)((int64_t)t->rows * (i + 1) / t->n);
    matmul_rows(t->out, t->w, t->x, r0, r1, t->rows, t->cols, t->nb);
}

/* out[nb][rows] = W[rows, cols] x[nb][cols] */
static void matmul(const struct model *m, float *out, const float *w, const float *x, int rows,
                   int cols, int nb)
{
    if (m->pool.n <= 1 || (int64_t)rows * cols * nb < MODEL_PAR_MIN_WORK) {
        matmul_rows(out, w, x, 0, rows, rows, cols, nb);
        return;
    }
    struct matmul_task t = {out, w, x, rows, cols, nb, m->pool.n};
    pool_run(&m->pool, matmul_slice, &t);
}

/* ---- tensor parallelism ---- */

/* Rows [r0, r0 + nr) of a [rows, cols] matrix (a new copy); NULL src gives NULL. */
static float *rows_of(const float *src, int r0, int nr, int cols, int *fail)
{
    if (!src) return NULL;
    float *d = malloc((size_t)nr * cols * sizeof *d);
    if (!d) {
        *fail = 1;
        return NULL;
    }
    memcpy(d, src + (size_t)r0 * cols, (size_t)nr * cols * sizeof *d);
    return d;
}

/* Columns [c0, c0 + nc) of a [rows, cols] matrix (a new [rows, nc] copy). */
static float *cols_of(const float *src, int rows, int cols, int c0, int nc, int *fail)
{
    float *d = malloc((size_t)rows * nc * sizeof *d);
    if (!d) {
        *fail = 1;
        return NULL;
    }
    for (int r = 0; r < rows; r++)
        memcpy(d + (size_t)r * nc, src + (size_t)r * cols + c0, (size_t)nc * sizeof *d);
    return d;
}

static int check_tp(const struct model_config *c, int tp, const char *dir, char *err, size_t errlen)
{
    if (tp < 1 || tp > 64) {
        seterr(err, errlen, "tensor parallel degree %d is out of range [1, 64]", tp);
        return -1;
    }
    if (c->heads % tp || c->ffn % tp || (c->kv_heads % tp && tp % c->kv_heads)) {
        seterr(err, errlen,
               "%s: tensor parallel degree %d must divide num_attention_heads (%d) and "
               "intermediate_size (%d), and divide or be a multiple of num_key_value_heads (%d)",
               dir, tp, c->heads, c->ffn, c->kv_heads);
        return -1;
    }
    return 0;
}

/* Splits the loaded weights into tp shards (Megatron's layout) and frees the originals; with
 * tp == 1 the one shard is the model's own layers. */
static int make_shards(struct model *m, int tp)
{
    const struct model_config *c = &m->cfg;
    m->tp = tp;
    m->shard = calloc((size_t)tp, sizeof *m->shard);
    if (!m->shard) return -1;
    int hd = c->head_dim, group = c->heads / c->kv_heads;
    for (int k = 0; k < tp; k++) {
        struct shard *sh = &m->shard[k];
        sh->heads = c->heads / tp;
        sh->kv_heads = c->kv_heads >= tp ? c->kv_heads / tp : 1;
        sh->kv_first = k * sh->heads / group;
        sh->ffn = c->ffn / tp;
    }
    if (tp == 1) {
        m->shard[0].layer = m->layer;
        return 0;
    }
    int fail = 0;
    for (int k = 0; k < tp && !fail; k++) {
        struct shard *sh = &m->shard[k];
        sh->layer = calloc((size_t)c->layers, sizeof *sh->layer);
        if (!sh->layer) return -1;
        int q0 = k * sh->heads * hd, qn = sh->heads * hd;
        int k0 = sh->kv_first * hd, kn = sh->kv_heads * hd, f0 = k * sh->ffn;
        for (int l = 0; l < c->layers && !fail; l++) {
            const struct layer *F = &m->layer[l];
            struct layer *L = &sh->layer[l];
            L->attn_norm = F->attn_norm, L->ffn_norm = F->ffn_norm; /* shared, not owned */
            L->q_norm = F->q_norm, L->k_norm = F->k_norm;
            L->wq = rows_of(F->wq, q0, qn, c->dim, &fail);
            L->wk = rows_of(F->wk, k0, kn, c->dim, &fail);
            L->wv = rows_of(F->wv, k0, kn, c->dim, &fail);
            L->bq = rows_of(F->bq, q0, qn, 1, &fail);
            L->bk = rows_of(F->bk, k0, kn, 1, &fail);
            L->bv = rows_of(F->bv, k0, kn, 1, &fail);
            L->wo = cols_of(F->wo, c->dim, c->heads * hd, q0, qn, &fail);
            L->w_gate = rows_of(F->w_gate, f0, sh->ffn, c->dim, &fail);
            L->w_up = rows_of(F->w_up, f0, sh->ffn, c->dim, &fail);
            L->w_down = cols_of(F->w_down, c->dim, c->ffn, f0, sh->ffn, &fail);
        }
    }
    if (fail) return -1;
    /* The full matrices are no longer needed (the norms are, through the shards). */
    for (int l = 0; l < c->layers; l++) {
        struct layer *F = &m->layer[l];
        float *ws[] = {F->wq, F->wk, F->wv,     F->bq,   F->bk,
                       F->bv, F->wo, F->w_gate, F->w_up, F->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            free(ws[i]);
        F->wq = F->wk = F->wv = F->bq = F->bk = F->bv = F->wo = F->w_gate = F->w_up = F->w_down =
            NULL;
    }
    return 0;
}

static int ranks_start(struct model *m)
{
    if (pool_start(&m->ranks, m->tp) != 0) return -1;
    if (m->tp > 1 && !(m->coll = coll_cpu_new(m->tp))) return -1;
    return 0;
}

static void ranks_stop(struct model *m)
{
    pool_stop(&m->ranks);
    coll_free(m->coll);
}

/* ---- load / free ---- */

struct model *model_load(const char *dir, int threads, char *err, size_t errlen)
{
    return model_load_tp(dir, threads, 1, err, errlen);
}

struct model *model_load_tp(const char *dir, int threads, int tp, char *err, size_t errlen)
{
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        seterr(err, errlen, "%s: out of memory", dir);
        return NULL;
    }
    if (model_config_load(dir, &m->cfg, err, errlen) != 0 ||
        check_tp(&m->cfg, tp, dir, err, errlen) != 0 || load_weights(m, dir, err, errlen) != 0) {
        model_free(m);
        return NULL;
    }
    /* With tp > 1 the ranks are the parallelism: each multiplies on its own thread. */
    if (make_shards(m, tp) != 0 || init_rope(m) != 0 ||
        pool_start(&m->pool, tp > 1 ? 1 : threads) != 0 || ranks_start(m) != 0) {
        seterr(err, errlen, "%s: out of memory or threads", dir);
        model_free(m);
        return NULL;
    }
    return m;
}

int model_tp(const struct model *m)
{
    return m->tp;
}

void model_free(struct model *m)
{
    if (!m) return;
    if (m->dev) m->dev->free(m->dev_self);
    ranks_stop(m);
    pool_stop(&m->pool);
    for (int k = 0; m->tp > 1 && m->shard && k < m->tp; k++) {
        for (int l = 0; m->shard[k].layer && l < m->cfg.layers; l++) {
            struct layer *L = &m->shard[k].layer[l];
            float *ws[] = {L->wq, L->wk, L->wv,     L->bq,   L->bk,
                           L->bv, L->wo, L->w_gate, L->w_up, L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                free(ws[i]);
        }
        free(m->shard[k].layer);
    }
    free(m->shard);
    if (m->layer) {
        for (int l = 0; l < m->cfg.layers; l++) {
            struct layer *L = &m->layer[l];
            float *ws[] = {L->attn_norm, L->wq,     L->wk, L->wv, L->wo, L->ffn_norm, L->w_gate,
                           L->w_up,      L->w_down, L->bq, L->bk, L->bv, L->q_norm,   L->k_norm};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                free(ws[i]);
        }
    }
    free(m->layer);
    if (m->lm_head != m->embed) free(m->lm_head);
    free(m->embed);
    free(m->norm);
    free(m->inv_freq);
    free(m);
}

const struct model_config *model_cfg(const struct model *m)
{
    return &m->cfg;
}

int model_is_eos(const struct model *m, int id)
{
    for (int i = 0; i < m->cfg.neos; i++)
        if (m->cfg.eos_ids[i] == id) return 1;
    return 0;
}

struct model *model_new_dev(const struct model_config *c, int tp, const struct model_dev_ops *ops,
                            void *self, char *err, size_t errlen)
{
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        ops->free(self);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    m->cfg = *c;
    m->tp = tp;
    m->dev = ops;
    m->dev_self = self;
    return m;
}

int model_kv_blocks_max(const struct model *m)
{
    return m->dev ? m->dev->kv_blocks(m->dev_self) : 0;
}

/* ---- KV blocks and contexts ---- */

size_t model_kv_block_bytes(const struct model *m)
{
    const struct model_config *c = &m->cfg;
    if (m->dev) return m->dev->kv_block_bytes(m->dev_self);
    return 2 * sizeof(float) * (size_t)c->layers * MODEL_KV_BLOCK * m->tp * m->shard[0].kv_heads *
           c->head_dim;
}

struct model_kv *model_kv_new(const struct model *m, int nblocks)
{
    const struct model_config *c = &m->cfg;
    if (nblocks < 1 || (m->dev && nblocks > m->dev->kv_blocks(m->dev_self))) return NULL;
    struct model_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->layers = c->layers;
    kv->kvd = m->dev ? 0 : m->shard[0].kv_heads * c->head_dim; /* a device keeps its own */
    kv->nblocks = kv->nfree = nblocks;
    kv->tp = m->tp;
    size_t n = (size_t)nblocks * c->layers * MODEL_KV_BLOCK * kv->kvd;
    kv->k = calloc((size_t)m->tp, sizeof *kv->k);
    kv->v = calloc((size_t)m->tp, sizeof *kv->v);
    kv->free = malloc((size_t)nblocks * sizeof *kv->free);
    pthread_mutex_init(&kv->mu, NULL);
    int ok = kv->k && kv->v && kv->free;
    for (int r = 0; ok && !m->dev && r < m->tp; r++) {
        kv->k[r] = malloc(n * sizeof(float));
        kv->v[r] = malloc(n * sizeof(float));
        ok = kv->k[r] && kv->v[r];
    }
    if (!ok) {
        model_kv_free(kv);
        return NULL;
    }
    for (int i = 0; i < nblocks; i++)
        kv->free[i] = nblocks - 1 - i; /* block 0 handed out first */
    return kv;
}

void model_kv_free(struct model_kv *kv)
{
    if (!kv) return;
    pthread_mutex_destroy(&kv->mu);
    for (int r = 0; r < kv->tp; r++) {
        if (kv->k) free(kv->k[r]);
        if (kv->v) free(kv->v[r]);
    }
    free(kv->k), free(kv->v), free(kv->free);
    free(kv);
}

int model_kv_blocks(const struct model_kv *kv)
{
    return kv->nblocks;
}

int model_kv_free_blocks(struct model_kv *kv)
{
    pthread_mutex_lock(&kv->mu);
    int n = kv->nfree;
    pthread_mutex_unlock(&kv->mu);
    return n;
}

int model_kv_blocks_for(int positions)
{
    return (positions + MODEL_KV_BLOCK - 1) / MODEL_KV_BLOCK;
}

struct model_ctx *model_ctx_new_in(const struct model *m, struct model_kv *kv, int max_len)
{
    const struct model_config *c = &m->cfg;
    if (max_len < 1 || max_len > c->max_pos) return NULL;
    struct model_ctx *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    x->len = max_len;
    int need = model_kv_blocks_for(max_len);
    if (!kv) {
        kv = model_kv_new(m, need);
        x->own_kv = 1;
    }
    x->kv = kv;
    x->blocks = malloc((size_t)need * sizeof *x->blocks);
    if (!kv || !x->blocks) {
        model_ctx_free(x);
        return NULL;
    }
    pthread_mutex_lock(&kv->mu);
    if (kv->nfree >= need) {
        for (int i = 0; i < need; i++)
            x->blocks[i] = kv->free[--kv->nfree];
        x->nblocks = need;
    }
    pthread_mutex_unlock(&kv->mu);
    if (x->nblocks != need) {
        model_ctx_free(x);
        return NULL;
    }
    return x;
}

struct model_ctx *model_ctx_new(const struct model *m, int max_len)
{
    return model_ctx_new_in(m, NULL, max_len);
}

void model_ctx_free(struct model_ctx *x)
{
    if (!x) return;
    if (x->kv && x->nblocks) {
        pthread_mutex_lock(&x->kv->mu);
        for (int i = x->nblocks - 1; i >= 0; i--)
            x->kv->free[x->kv->nfree++] = x->blocks[i];
        pthread_mutex_unlock(&x->kv->mu);
    }
    if (x->own_kv) model_kv_free(x->kv);
    free(x->blocks);
    free(x->logits);
    free(x);
}

int model_ctx_pos(const struct model_ctx *c)
{
    return c->pos;
}

int model_ctx_len(const struct model_ctx *c)
{
    return c->len;
}

/* Where position t of layer l lives in the context's blocks. */
static size_t kv_off(const struct model_ctx *x, int l, int t)
{
    const struct model_kv *kv = x->kv;
    int blk = x->blocks[t / MODEL_KV_BLOCK];
    return (((size_t)blk * kv->layers + l) * MODEL_KV_BLOCK + t % MODEL_KV_BLOCK) * kv->kvd;
}

/* ---- forward ---- */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static void add_bias(float *v, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        v[i] += b[i];
}

/* rotate_half RoPE on nheads vectors of hd floats at v; cs holds cos then sin of the position's
 * angles ([hd/2] each). */
static void rope(float *v, int nheads, int hd, const float *cs)
{
    int half = hd / 2;
    const float *sn = cs + half;
    for (int h = 0; h < nheads; h++) {
        float *a = v + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
            float x0 = a[i], x1 = a[i + half];
            a[i] = x0 * cs[i] - x1 * sn[i];
            a[i + half] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

/* Attention of every query head of q (one row, at position pos) over positions [t0, pos] of layer
 * l of x's cache, into out. att: scratch of pos + 1 floats. */
static void attention(const struct model *m, int rank, const struct model_ctx *x, int l, int pos,
                      const float *qrow, float *out, float *att)
{
    const struct model_config *c = &m->cfg;
    const struct shard *sh = &m->shard[rank];
    const float *kbase = x->kv->k[rank], *vbase = x->kv->v[rank];
    int hd = c->head_dim, group = c->heads / c->kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    /* Mistral's sliding window: position t is seen from pos while pos - t < window. */
    int t0 = c->sliding_window && pos >= c->sliding_window ? pos - c->sliding_window + 1 : 0;
    for (int h = 0; h < sh->heads; h++) {
        const float *q = qrow + (size_t)h * hd;
        int kvh = (rank * sh->heads + h) / group - sh->kv_first; /* of this rank's KV heads */
        float mx = -INFINITY;
        for (int t = t0; t <= pos; t++) {
            const float *k = kbase + kv_off(x, l, t) + (size_t)kvh * hd;
            float s = 0;
            for (int i = 0; i < hd; i++)
                s += q[i] * k[i];
            att[t] = s * scale;
            if (att[t] > mx) mx = att[t];
        }
        float sum = 0;
        for (int t = t0; t <= pos; t++) {
            att[t] = expf(att[t] - mx);
            sum += att[t];
        }
        float *o = out + (size_t)h * hd;
        memset(o, 0, (size_t)hd * sizeof *o);
        for (int t = t0; t <= pos; t++) {
            const float *v = vbase + kv_off(x, l, t) + (size_t)kvh * hd;
            float a = att[t] / sum;
            for (int i = 0; i < hd; i++)
                o[i] += a * v[i];
        }
    }
}

/* One rank's activations for a batch: row r of each is [r * width]; widths are the rank's. */
struct batch {
    int n;
    int *pos;                   /* [n] */
    float *x, *xb, *xb2, *red;  /* [n, dim]; red: the all-reduce's scratch */
    float *q, *k, *v, *att_out; /* [n, heads*hd], [n, kv*hd], [n, kv*hd], [n, heads*hd] */
    float *hb, *hb2;            /* [n, ffn] */
    float *att;                 /* [max pos + 1] */
    float *cs;                  /* [n, hd]: cos and sin of each row's RoPE angles */
};

static void batch_free(struct batch *b)
{
    free(b->pos), free(b->x), free(b->xb), free(b->xb2), free(b->red), free(b->q), free(b->k);
    free(b->v), free(b->att_out), free(b->hb), free(b->hb2), free(b->att), free(b->cs);
    memset(b, 0, sizeof *b);
}

static int batch_alloc(const struct model_config *c, const struct shard *sh, struct batch *b, int n,
                       int maxpos)
{
    size_t qd = (size_t)sh->heads * c->head_dim, kvd = (size_t)sh->kv_heads * c->head_dim;
    size_t nd = (size_t)n * c->dim;
    memset(b, 0, sizeof *b);
    b->n = n;
    b->pos = malloc((size_t)n * sizeof *b->pos);
    b->x = malloc(nd * sizeof(float));
    b->xb = malloc(nd * sizeof(float));
    b->xb2 = malloc(nd * sizeof(float));
    b->red = malloc(nd * sizeof(float));
    b->q = malloc((size_t)n * qd * sizeof(float));
    b->k = malloc((size_t)n * kvd * sizeof(float));
    b->v = malloc((size_t)n * kvd * sizeof(float));
    b->att_out = malloc((size_t)n * qd * sizeof(float));
    b->hb = malloc((size_t)n * sh->ffn * sizeof(float));
    b->hb2 = malloc((size_t)n * sh->ffn * sizeof(float));
    b->att = malloc((size_t)(maxpos + 1) * sizeof(float));
    b->cs = malloc((size_t)n * c->head_dim * sizeof(float));
    if (!b->cs || !b->pos || !b->x || !b->xb || !b->xb2 || !b->red || !b->q || !b->k || !b->v ||
        !b->att_out || !b->hb || !b->hb2 || !b->att) {
        batch_free(b);
        return -1;
    }
    return 0;
}

/* Sums the ranks' partial [n, dim] outputs (after o_proj and after down_proj). */
static void allreduce(const struct model *m, int rank, struct batch *b)
{
    if (m->coll) coll_allreduce_sum(m->coll, rank, b->xb2, b->red, (size_t)b->n * m->cfg.dim);
}

/* One layer on one rank: its heads and MLP slice; the residual stream b->x is the same on every
 * rank (replicated), kept so by the two all-reduces. */
static void layer_forward(const struct model *m, int rank, const struct model_row *rows,
                          struct batch *b, int l)
{
    const struct model_config *c = &m->cfg;
    const struct shard *sh = &m->shard[rank];
    const struct layer *L = &sh->layer[l];
    int n = b->n, dim = c->dim, hd = c->head_dim, qd = sh->heads * hd, kvd = sh->kv_heads * hd;

    for (int r = 0; r < n; r++)
        rmsnorm(b->xb + (size_t)r * dim, b->x + (size_t)r * dim, L->attn_norm, dim, c->eps);
    matmul(m, b->q, L->wq, b->xb, qd, dim, n);
    matmul(m, b->k, L->wk, b->xb, kvd, dim, n);
    matmul(m, b->v, L->wv, b->xb, kvd, dim, n);
    for (int r = 0; r < n; r++) {
        float *q = b->q + (size_t)r * qd, *k = b->k + (size_t)r * kvd, *v = b->v + (size_t)r * kvd;
        if (c->qkv_bias) {
            add_bias(q, L->bq, qd);
            add_bias(k, L->bk, kvd);
            add_bias(v, L->bv, kvd);
        }
        if (c->qk_norm) {
            for (int h = 0; h < sh->heads; h++)
                rmsnorm(q + (size_t)h * hd, q + (size_t)h * hd, L->q_norm, hd, c->eps);
            for (int h = 0; h < sh->kv_heads; h++)
                rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, L->k_norm, hd, c->eps);
        }
        rope(q, sh->heads, hd, b->cs + (size_t)r * hd);
        rope(k, sh->kv_heads, hd, b->cs + (size_t)r * hd);
        struct model_ctx *x = rows[r].ctx;
        memcpy(x->kv->k[rank] + kv_off(x, l, b->pos[r]), k, (size_t)kvd * sizeof(float));
        memcpy(x->kv->v[rank] + kv_off(x, l, b->pos[r]), v, (size_t)kvd * sizeof(float));
    }
    /* Every row's k and v are in the caches before any attention, so a row sees the rows of its
     * own context that come before it in the batch (a chunk of a prompt). */
    for (int r = 0; r < n; r++)
        attention(m, rank, rows[r].ctx, l, b->pos[r], b->q + (size_t)r * qd,
                  b->att_out + (size_t)r * qd, b->att);
    matmul(m, b->xb2, L->wo, b->att_out, dim, qd, n);
    allreduce(m, rank, b);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        b->x[i] += b->xb2[i];

    for (int r = 0; r < n; r++)
        rmsnorm(b->xb + (size_t)r * dim, b->x + (size_t)r * dim, L->ffn_norm, dim, c->eps);
    matmul(m, b->hb, L->w_gate, b->xb, sh->ffn, dim, n);
    matmul(m, b->hb2, L->w_up, b->xb, sh->ffn, dim, n);
    for (size_t i = 0; i < (size_t)n * sh->ffn; i++) {
        float g = b->hb[i];
        b->hb[i] = g / (1.0f + expf(-g)) * b->hb2[i]; /* silu(gate) * up */
    }
    matmul(m, b->xb2, L->w_down, b->hb, dim, sh->ffn, n);
    allreduce(m, rank, b);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        b->x[i] += b->xb2[i];
}

/* Every layer of one rank over a batch whose positions and RoPE angles are set. */
static void rank_forward(const struct model *m, int rank, const struct model_row *rows,
                         struct batch *b)
{
    const struct model_config *c = &m->cfg;
    for (int r = 0; r < b->n; r++)
        memcpy(b->x + (size_t)r * c->dim, m->embed + (size_t)rows[r].token * c->dim,
               (size_t)c->dim * sizeof(float));
    for (int l = 0; l < c->layers; l++)
        layer_forward(m, rank, rows, b, l);
}

struct rank_task {
    const struct model *m;
    const struct model_row *rows;
    struct batch *b; /* [tp] */
};

static void rank_run(void *arg, int rank)
{
    const struct rank_task *t = arg;
    rank_forward(t->m, rank, t->rows, &t->b[rank]);
}

/* model_forward_batch on a device backend: the same positions and checks, then the backend. */
static int dev_forward_batch(const struct model *m, const struct model_row *rows, int n)
{
    struct model_dev_row *dr = malloc((size_t)n * sizeof *dr);
    if (!dr) return -1;
    for (int r = 0; r < n; r++) {
        struct model_ctx *x = rows[r].ctx;
        int p = x->pos;
        for (int e = 0; e < r; e++)
            p += rows[e].ctx == x;
        if (p >= x->len || rows[r].token < 0 || rows[r].token >= m->cfg.vocab) {
            free(dr);
            return -1;
        }
        if (rows[r].sample && (!m->dev->samples || !rows[r].token_out)) {
            free(dr);
            return -1;
        }
        dr[r] = (struct model_dev_row){.token = rows[r].token,
                                       .pos = p,
                                       .blocks = x->blocks,
                                       .nblocks = x->nblocks,
                                       .seq = x,
                                       .logits = rows[r].logits,
                                       .sample = rows[r].sample,
                                       .token_out = rows[r].token_out};
    }
    int rc = m->dev->forward(m->dev_self, dr, n);
    free(dr);
    if (rc == 0)
        for (int r = 0; r < n; r++)
            rows[r].ctx->pos++;
    return rc;
}

int model_samples_on_device(const struct model *m)
{
    return m->dev && m->dev->samples;
}

int model_forward_batch(const struct model *m, const struct model_row *rows, int n)
{
    const struct model_config *c = &m->cfg;
    int tp = m->tp;
    if (n < 1) return 0;
    if (m->dev) return dev_forward_batch(m, rows, n);
    for (int r = 0; r < n; r++)
        if (rows[r].sample) return -1; /* the CPU samples on the host (model_samples_on_device) */
    /* Each row's position: its context's next one, counting earlier rows of the same context. */
    int *pos = malloc((size_t)n * sizeof *pos), maxpos = 0;
    if (!pos) return -1;
    for (int r = 0; r < n; r++) {
        int p = rows[r].ctx->pos;
        for (int e = 0; e < r; e++)
            p += rows[e].ctx == rows[r].ctx;
        pos[r] = p;
        if (p >= rows[r].ctx->len || rows[r].token < 0 || rows[r].token >= c->vocab) {
            free(pos);
            return -1;
        }
        if (p > maxpos) maxpos = p;
    }
    /* Every rank's scratch is allocated here, before any rank starts: a rank that failed halfway
     * would leave the others waiting in an all-reduce. */
    struct batch one = {0}, *b = tp == 1 ? &one : calloc((size_t)tp, sizeof *b);
    int rc = b ? 0 : -1;
    for (int k = 0; k < tp && rc == 0; k++)
        rc = batch_alloc(c, &m->shard[k], &b[k], n, maxpos);
    int half = c->head_dim / 2;
    for (int k = 0; k < tp && rc == 0; k++) {
        memcpy(b[k].pos, pos, (size_t)n * sizeof *pos);
        for (int r = 0; r < n; r++) /* the same angles for every layer */
            for (int i = 0; i < half; i++) {
                float ang = (float)pos[r] * m->inv_freq[i];
                b[k].cs[(size_t)r * c->head_dim + i] = cosf(ang);
                b[k].cs[(size_t)r * c->head_dim + half + i] = sinf(ang);
            }
    }
    free(pos);
    if (rc == 0 && tp > 1) {
        struct rank_task t = {m, rows, b};
        pool_run(&m->ranks, rank_run, &t);
    } else if (rc == 0) {
        rank_forward(m, 0, rows, &b[0]);
    }
    /* The lm_head (replicated) on rank 0's copy of the stream, only for the rows that want
     * logits (in a prompt, only the last does). */
    int nl = 0;
    for (int r = 0; rc == 0 && r < n; r++)
        if (rows[r].logits)
            rmsnorm(b[0].xb + (size_t)nl++ * c->dim, b[0].x + (size_t)r * c->dim, m->norm, c->dim,
                    c->eps);
    float *lg = rc == 0 && nl ? malloc((size_t)nl * c->vocab * sizeof(float)) : NULL;
    if (nl && !lg) rc = -1;
    if (rc == 0 && nl) {
        matmul(m, lg, m->lm_head, b[0].xb, c->vocab, c->dim, nl);
        for (int r = 0, i = 0; r < n; r++)
            if (rows[r].logits)
                memcpy(rows[r].logits, lg + (size_t)i++ * c->vocab,
                       (size_t)c->vocab * sizeof(float));
    }
    free(lg);
    for (int k = 0; b && k < tp; k++)
        batch_free(&b[k]);
    if (b != &one) free(b);
    if (rc == 0)
        for (int r = 0; r < n; r++)
            rows[r].ctx->pos++;
    return rc;
}

const float *model_forward(const struct model *m, struct model_ctx *x, int token)
{
    if (!x->logits) x->logits = malloc((size_t)m->cfg.vocab * sizeof(float));
    if (!x->logits) return NULL;
    struct model_row row = {.ctx = x, .token = token, .logits = x->logits};
    return model_forward_batch(m, &row, 1) == 0 ? x->logits : NULL;
}
