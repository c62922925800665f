/* model: decoder-only transformers of the Llama family on the CPU in f32 (the reference the CUDA
 * backend is checked against): config.json, weights from safetensors converted to f32 at load, and
 * a forward pass for one token at a time over a per-request KV cache. Llama, Qwen2/2.5, Qwen3 and
 * Mistral are configurations of one forward pass (struct model_config says what differs), not
 * forks of it. A loaded model is immutable; all mutable
 * state of a generation lives in its struct model_ctx, so contexts on different threads may run
 * at once. */
#ifndef ORP_MODEL_H
#define ORP_MODEL_H

#include <stddef.h>

/* Ids config.json and generation_config.json may list as end of sequence. */
#define MODEL_MAX_EOS 16

/* The architectures config.json may name; each is a set of switches of the one forward pass. */
enum model_arch { MODEL_LLAMA = 0, MODEL_QWEN2, MODEL_QWEN3, MODEL_MISTRAL, MODEL_NARCH };

struct model_config {
    enum model_arch arch;
    int qkv_bias;       /* q/k/v projections have a bias (Qwen2) */
    int qk_norm;        /* RMSNorm over each head of q and k before RoPE (Qwen3) */
    int sliding_window; /* attend to the last this many positions only; 0: all (Mistral) */
    int dim;            /* hidden_size */
    int ffn;            /* intermediate_size */
    int layers;         /* num_hidden_layers */
    int heads;          /* num_attention_heads */
    int kv_heads;       /* num_key_value_heads (default: heads) */
    int head_dim;       /* head_dim (default: dim / heads) */
    int vocab;          /* vocab_size */
    int max_pos;        /* max_position_embeddings: the context length */
    float eps;          /* rms_norm_eps */
    float rope_theta;
    int tied;   /* tie_word_embeddings: lm_head is embed_tokens */
    int bos_id; /* -1 when none */
    int eos_ids[MODEL_MAX_EOS];
    int neos;
    /* rope_scaling of rope_type "llama3" (Llama 3.1+); rope_llama3 == 0 when none. */
    int rope_llama3;
    float rs_factor, rs_low_freq, rs_high_freq;
    int rs_orig_max_pos;
};

struct model;
struct model_ctx;

/* "llama", "qwen2", "qwen3", "mistral" (make-model's --arch and the log's words). */
const char *model_arch_name(enum model_arch a);
/* The arch of that short name, or -1. */
int model_arch_find(const char *name);

/* Reads DIR/config.json (and the eos ids of DIR/generation_config.json when present). 0, or -1
 * with err naming the file and the field. */
int model_config_load(const char *dir, struct model_config *c, char *err, size_t errlen);

/* Loads DIR (config + safetensors). threads > 1 splits the matrix-vector products across that
 * many threads. Returns a new model (free with model_free) or NULL with err. */
struct model *model_load(const char *dir, int threads, char *err, size_t errlen);
/* model_load split over tp tensor-parallel ranks (threads of this process, Megatron's layout:
 * q/k/v and gate/up by rows, o_proj and down_proj by columns, an all-reduce after each; KV heads
 * split, or replicated when fewer than tp). tp must divide num_attention_heads and
 * intermediate_size, and divide or be a multiple of num_key_value_heads, else NULL with err
 * saying so. With tp > 1 each rank multiplies on its own thread (threads is not used). */
struct model *model_load_tp(const char *dir, int threads, int tp, char *err, size_t errlen);
int model_tp(const struct model *m);
void model_free(struct model *m); /* accepts NULL */
const struct model_config *model_cfg(const struct model *m);
int model_is_eos(const struct model *m, int id);

/* The KV cache is paged: a pool of fixed-size blocks of MODEL_KV_BLOCK positions (all layers, k
 * and v), from which each context takes the blocks it needs. The server sizes one pool from a
 * memory budget and shares it between requests; a context made without a pool gets a private
 * one just big enough. Pools are thread-safe. */
#define MODEL_KV_BLOCK 16

struct model_kv;
size_t model_kv_block_bytes(const struct model *m);
/* A new pool of nblocks blocks, or NULL when memory is short. */
struct model_kv *model_kv_new(const struct model *m, int nblocks);
void model_kv_free(struct model_kv *kv); /* accepts NULL; every context must be freed first */
int model_kv_blocks(const struct model_kv *kv);
int model_kv_free_blocks(struct model_kv *kv);
int model_kv_blocks_for(int positions);

/* A generation's context: up to max_len positions (at most max_pos), their blocks all taken from
 * kv at creation (NULL kv: a private pool). NULL when max_len is out of range, kv has too few free
 * blocks, or memory is short. Freeing gives the blocks back. */
struct model_ctx *model_ctx_new_in(const struct model *m, struct model_kv *kv, int max_len);
struct model_ctx *model_ctx_new(const struct model *m, int max_len);
void model_ctx_free(struct model_ctx *c);     /* accepts NULL */
int model_ctx_pos(const struct model_ctx *c); /* positions filled so far */
int model_ctx_len(const struct model_ctx *c); /* max_len */

/* Sampling by a device backend (model_samples_on_device): the row's next token drawn where its
 * logits are, by sampler.h's rule with the request's uniform u (its draw for this token,
 * sampler_next_u; unused when greedy), so only a token id comes back. temperature 0: greedy. */
struct model_sample {
    float temperature, top_p; /* top_p in (0, 1] */
    int top_k;                /* 0: off */
    float u;                  /* [0, 1) */
};

/* One token of a batch: run at its context's next position; logits (NULL: not wanted) receives
 * [vocab] floats. sample (NULL: none; only where model_samples_on_device): *token_out receives
 * the token drawn from this row's logits (logits may be NULL then, or also be wanted). */
struct model_row {
    struct model_ctx *ctx;
    int token;
    float *logits;
    const struct model_sample *sample;
    int *token_out;
};

/* Runs a batch: rows of different contexts (continuous batching), and consecutive positions of
 * one context (a chunk of a prompt, in order). Each weight matrix is read once per batch. A row's
 * logits equal, bit for bit, those of running it alone. 0, or -1 when a context is full, a token
 * is out of range or memory is short (then no context has advanced). */
int model_forward_batch(const struct model *m, const struct model_row *rows, int n);

/* Runs token at the next position and returns the logits over the vocab (borrowed from c, valid
 * until the next call), or NULL when the context is full or the token is out of range. */
const float *model_forward(const struct model *m, struct model_ctx *c, int token);

/* ---- device backends (runtime/cuda/) ----
 * A device backend runs the forward pass behind the calls above: it owns the weights, the KV
 * memory (blocks numbered as the pool's) and the kernels; the model keeps the config, the KV
 * block bookkeeping and the contexts, so the engine drives both backends the same way. */

/* One row of a batch as the backend sees it: its position resolved, its context's blocks. */
struct model_dev_row {
    int token, pos;
    const int *blocks; /* the context's block ids, nblocks of them */
    int nblocks;
    const void *seq;                   /* the same for the rows of one context */
    float *logits;                     /* [vocab] or NULL */
    const struct model_sample *sample; /* NULL, or: draw the next token into *token_out */
    int *token_out;
};

struct model_dev_ops {
    const char *name;                     /* "cuda" */
    size_t (*kv_block_bytes)(void *self); /* of every rank together */
    int (*kv_blocks)(void *self);         /* the blocks its memory holds */
    /* 0, or -1 (nothing advanced; the backend logged why). */
    int (*forward)(void *self, const struct model_dev_row *rows, int n);
    void (*free)(void *self);
    int samples; /* 1: forward honours rows' sample (model_samples_on_device) */
};

/* A model run by a device backend: c is copied, self is taken (ops->free frees it with the
 * model, also when this fails). NULL with err when memory is short. The device has one block
 * space: give its contexts one pool (model_kv_new), not private ones (model_ctx_new). */
struct model *model_new_dev(const struct model_config *c, int tp, const struct model_dev_ops *ops,
                            void *self, char *err, size_t errlen);
/* The KV blocks the backend's memory holds; 0 on the CPU (no bound but the pool's own). */
int model_kv_blocks_max(const struct model *m);
/* 1 when model_forward_batch accepts rows with a sample (a device backend that samples); 0 on
 * the CPU, where the engine samples on the host from the logits. */
int model_samples_on_device(const struct model *m);

#endif
