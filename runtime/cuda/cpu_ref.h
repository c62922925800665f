/* cpu_ref: the plain C reference of every device primitive in cuda_kernels.cu.
 *
 * Each function here has the same arguments as its rtc_ twin in cuda_backend.h, minus the context,
 * on host arrays. They are written to be obviously right, not fast: reductions run in double, one
 * loop per formula, no blocking. tests/unit/cuda checks the CUDA kernels against them, and they are
 * checked themselves on hand-computed cases (test_cpu_ref). A CPU backend may later share them.
 *
 * Conventions shared with the CUDA side (the shapes are written [outer, ..., inner], row-major):
 * - weights are BF16, stored as uint16_t bit patterns (the upper half of an IEEE float32);
 * - activations, KV cache and logits are float32;
 * - positions are int32, the absolute position of each token in its sequence. */
#ifndef ORP_CPU_REF_H
#define ORP_CPU_REF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* BF16 <-> F32. Widening is exact. Narrowing rounds to nearest, ties to even (as
 * __float2bfloat16_rn and PyTorch do); NaN stays a (quiet) NaN, overflow rounds to +-inf. */
float ref_bf16_to_f32(uint16_t h);
uint16_t ref_f32_to_bf16(float f);

/* out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:]   (Llama / HF LlamaRMSNorm)
 * out, x: [rows, dim]; w: [dim] BF16. out may alias x. */
void ref_rmsnorm(float *out, const float *x, const uint16_t *w, int rows, int dim, float eps);

/* Rotary position embedding in place, Hugging Face "rotate_half" layout: within each head the
 * pairs are (i, i + head_dim/2), not interleaved (x[2i], x[2i+1]) as in the Meta checkpoints.
 * For i < head_dim/2, with inv_freq_i = theta^(-2i/head_dim) and a = pos[t] * inv_freq_i:
 *   x'[i]            = x[i] cos a - x[i + half] sin a
 *   x'[i + half]     = x[i + half] cos a + x[i] sin a
 * x: [n_tok, n_heads, head_dim]; pos: [n_tok]. head_dim must be even.
 * inv_freq is computed in double and rounded to float, a = (float)pos * inv_freq in float (as HF
 * does in float32); cos and sin of that float angle. No rope scaling (Llama 3.1 "llama3" scaling
 * is a later addition). */
void ref_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim, float theta);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate or up. */
void ref_swiglu(float *out, const float *gate, const float *up, size_t n);

/* y = W x (decode). W: [rows, cols] BF16 (a PyTorch Linear weight [out, in]); x: [cols] F32,
 * used at full precision; y: [rows]. */
void ref_matvec_bf16(float *y, const uint16_t *w, const float *x, int rows, int cols);

/* Y = X W^T (prefill). W: [rows, cols] BF16; X: [n_tok, cols] F32; Y: [n_tok, rows] F32.
 * X is rounded to BF16 first, exactly as the cuBLAS path does (cuBLAS takes BF16 A and B), so
 * prefill and decode of the same token can differ by the BF16 rounding of the activations. */
void ref_gemm_bf16(float *y, const uint16_t *w, const float *x, int n_tok, int rows, int cols);

/* The largest head_dim the attention primitives take (Llama models use 64 or 128). */
#define REF_HEAD_DIM_MAX 256

/* Causal attention of n_q query tokens over a contiguous KV cache, with GQA.
 * q, out: [n_q, n_heads, head_dim]; k_cache, v_cache: [>= start_pos + n_q, n_kv_heads, head_dim].
 * Query t sits at position start_pos + t and attends keys 0 .. start_pos + t (inclusive); query
 * head h reads KV head h / (n_heads / n_kv_heads). scores = scale * q.k, softmax, weighted sum of
 * v. head_dim <= REF_HEAD_DIM_MAX. Decode is n_q = 1, start_pos = (number of cached tokens
 * including the new one) - 1. */
void ref_attention(float *out, const float *q, const float *k_cache, const float *v_cache, int n_q,
                   int start_pos, int n_heads, int n_kv_heads, int head_dim, float scale);

/* out[r] = the lowest index of the largest value of x[r, :], NaNs ignored; 0 if the row has no
 * non-NaN value. x: [rows, n]; out: [rows]. */
void ref_argmax(int32_t *out, const float *x, int rows, int n);

/* ---- The forward pass's fused primitives (the twins of cuda_backend.h's second part) ---- */

/* If delta: x += delta (x is updated). out = BF16(rmsnorm(x) * w); w F32. */
void ref_add_rmsnorm(float *x, const float *delta, const float *w, uint16_t *out, int rows, int dim,
                     float eps);

/* rtc_qkv_rope_cache's formula: per token t, q/k/v = qkv[t] (+ bias), q and k heads RMSNormed
 * with qnorm / knorm when given, rotated by pos[t] * inv_freq[i] (angle in float, cos and sin of
 * it in double), q to q_out, k and v rounded to BF16 into the paged caches at slot[t]. */
void ref_qkv_rope_cache(float *q_out, const float *qkv, const float *bias, const float *qnorm,
                        const float *knorm, const float *inv_freq, const int32_t *pos,
                        const int32_t *slot, uint16_t *kc, uint16_t *vc, int heads, int kv_heads,
                        int head_dim, int layers, int layer, float eps, int n);

/* Attention of each row over its sequence's pages, directly (no items, no splits): row t at
 * pos[t] of sequence row_seq[t] (pages blocks[seq_off[seq] ...]) attends positions
 * max(0, pos - window + 1) .. pos (window 0: all). q: [n, heads * hd]; out [n, heads * hd] F32. */
void ref_attention_paged(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                         const int32_t *pos, const int32_t *row_seq, const int32_t *seq_off,
                         const int32_t *blocks, int n, int heads, int kv_heads, int head_dim,
                         int layers, int layer, int window, float scale);

/* h[r, i] = BF16(silu(gu[r, i]) * gu[r, f + i]). */
void ref_silu_mul(uint16_t *h, const float *gu, int n, int f);

/* rtc_sample's rule in double (see cuda_backend.h): one token per row. params as the kernel's:
 * temperature, top_p, u, top_k. */
struct ref_sample_param {
    float temperature, top_p, u;
    int32_t top_k;
};
void ref_sample(int32_t *out, const float *logits, const struct ref_sample_param *p, int rows,
                int vocab);

#ifdef __cplusplus
}
#endif

#endif
