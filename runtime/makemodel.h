/* makemodel: writes a tiny, complete Llama checkpoint directory (config.json,
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
    const char *arch; /* "llama" */
    int dim, layers, heads, kv_heads, ffn, merges, context;
    uint64_t seed;
    enum st_dtype dtype; /* of the matrices; norms are always F32 */
};

/* The defaults of `orp-runtime make-model`. */
void mm_defaults(struct mm_opts *o);
/* 0, or -1 with err. */
int mm_make(const struct mm_opts *o, char *err, size_t errlen);

/* The special tokens make-model adds, in id order after the learned vocab. */
extern const char *const mm_special_tokens[5];

#endif
