/* makemodel: writes a tiny, complete checkpoint directory of one architecture (Llama, Qwen2,
 * Qwen3 or Mistral), with that family's special tokens and chat template (config.json,
 * generation_config.json, model.safetensors with random weights, tokenizer.json with a byte-level
 * BPE learned from a small embedded English text, tokenizer_config.json) that every part of the
 * platform can serve without downloading anything. Deterministic: the same options give the same
 * bytes. */
#ifndef ORP_MAKEMODEL_H
#define ORP_MAKEMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

struct mm_opts {
    const char *out;  /* directory, created if missing */
    const char *arch; /* "llama", "qwen2", "qwen3" or "mistral" */
    int dim, layers, heads, kv_heads, ffn, merges, context;
    int head_dim; /* 0: the architecture's default (dim / heads; Qwen3: 2 * dim / heads) */
    uint64_t seed;
    enum st_dtype dtype; /* of the matrices; norms are always F32 */
};

/* The defaults of `orp-runtime make-model`. */
void mm_defaults(struct mm_opts *o);
/* 0, or -1 with err. */
int mm_make(const struct mm_opts *o, char *err, size_t errlen);

/* The chat_template strings make-model writes (Llama 3, ChatML as in Qwen2-Instruct, plain
 * ChatML, Mistral). */
extern const char mm_tpl_llama3[], mm_tpl_chatml_qwen2[], mm_tpl_chatml[], mm_tpl_mistral[];

#endif
