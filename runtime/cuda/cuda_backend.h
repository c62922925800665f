/* cuda_backend: the device primitives of the Llama forward pass on one NVIDIA GPU (sm_90a).
 *
 * This module owns every CUDA and cuBLAS call of the runtime: the per-GPU context (stream, cuBLAS
 * handle, scratch memory), device memory, and the kernels. Nothing else includes a CUDA header, so
 * callers are plain C17. Each primitive has a plain C twin in cpu_ref.h with the same arguments
 * (minus the context) and the same conventions: BF16 weights as uint16_t bit patterns, F32
 * activations, KV cache and logits, int32 positions, shapes [outer, ..., inner] row-major. Every
 * kernel is validated against its twin by tests/unit/cuda/test_cuda_kernels.c.
 *
 * Pointers named d_* are device pointers. Kernels are queued on the context's stream and return as
 * soon as they are launched: an error the kernel hits while running shows up at the next call that
 * synchronizes (rtc_sync, rtc_download).
 *
 * Errors are negative rtc_status codes; the failing call and its file:line are logged at ERROR.
 * Nothing here exits or aborts. A bad argument (RTC_EINVAL) is a bug in the caller: the runtime
 * validates client input before it gets this far.
 *
 * Threads: a context belongs to one thread at a time, and that thread must have the context's
 * device current (rtc_ctx_new makes it current on the creating thread; rtc_ctx_use on others). */
#ifndef ORP_CUDA_BACKEND_H
#define ORP_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum rtc_status {
    RTC_OK = 0,
    RTC_EINVAL = -1, /* bad argument or unsupported shape: a bug in the caller */
    RTC_ENODEV = -2, /* no such CUDA device */
    RTC_ENOMEM = -3, /* device memory exhausted */
    RTC_ECUDA = -4,  /* any other CUDA runtime error (launch failure, illegal address, ...) */
    RTC_ECUBLAS = -5 /* a cuBLAS call failed */
};

/* The largest head_dim rtc_attention takes: the kernel keeps head_dim/32 accumulators per lane in
 * registers, one template instance per multiple of 32 up to this. */
#define RTC_HEAD_DIM_MAX 256

/* A static string for an rtc_status. */
const char *rtc_strerror(int status);

/* The number of CUDA devices; 0 (not an error) when there is no GPU, no driver, or the driver is
 * too old for this runtime. Safe to call on any machine. */
int rtc_device_count(void);

struct rtc_ctx;

/* Creates a context on `device` (0-based): makes it current on the calling thread, creates a
 * non-blocking stream and a cuBLAS handle bound to it. *out is a new context, freed with
 * rtc_ctx_free. */
int rtc_ctx_new(int device, struct rtc_ctx **out);
/* Frees a context and its scratch memory; accepts NULL. Waits for queued work first. */
void rtc_ctx_free(struct rtc_ctx *ctx);
/* Makes the context's device current on the calling thread. */
int rtc_ctx_use(struct rtc_ctx *ctx);
/* Waits for everything queued on the context's stream; reports errors kernels hit. */
int rtc_sync(struct rtc_ctx *ctx);

/* Device memory. rtc_malloc: *d_out is new device memory of `bytes`, freed with rtc_free (which
 * accepts NULL). Copies are queued on the stream and waited for, so the host buffer may be reused
 * on return. */
int rtc_malloc(void **d_out, size_t bytes);
void rtc_free(void *d_ptr);
int rtc_upload(struct rtc_ctx *ctx, void *d_dst, const void *src, size_t bytes);
int rtc_download(struct rtc_ctx *ctx, void *dst, const void *d_src, size_t bytes);
/* Queues a byte fill (tests poison outputs with 0xff, a float NaN). */
int rtc_memset(struct rtc_ctx *ctx, void *d_dst, int byte, size_t bytes);

/* The primitives. Each is ref_<name> of cpu_ref.h on device arrays; see there for the formula. */

/* d_out, d_x: [rows, dim]; d_w: [dim] BF16. One block per row. d_out may equal d_x. */
int rtc_rmsnorm(struct rtc_ctx *ctx, float *d_out, const float *d_x, const uint16_t *d_w, int rows,
                int dim, float eps);

/* In place on d_x: [n_tok, n_heads, head_dim]; d_pos: [n_tok] int32. HF rotate_half layout.
 * head_dim even and <= RTC_HEAD_DIM_MAX. */
int rtc_rope(struct rtc_ctx *ctx, float *d_x, const int32_t *d_pos, int n_tok, int n_heads,
             int head_dim, float theta);

/* d_out[i] = silu(d_gate[i]) * d_up[i]; d_out may equal d_gate or d_up. */
int rtc_swiglu(struct rtc_ctx *ctx, float *d_out, const float *d_gate, const float *d_up, size_t n);

/* Decode: d_y[rows] = W[rows, cols] (BF16) x d_x[cols] (F32). One warp per row, 16-byte weight
 * loads when cols % 8 == 0 and d_w, d_x are 16-byte aligned; a scalar path otherwise. */
int rtc_matvec_bf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const float *d_x,
                    int rows, int cols);

/* Prefill: d_y[n_tok, rows] = d_x[n_tok, cols] W^T, through cublasGemmEx (BF16 A and B, F32 C,
 * F32 compute). d_x is first rounded to BF16 into the context's scratch memory (grown on demand).
 * d_y must not overlap d_x. */
int rtc_gemm_bf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const float *d_x, int n_tok,
                  int rows, int cols);

/* d_out[i] = BF16(d_x[i]), round to nearest even. */
int rtc_f32_to_bf16(struct rtc_ctx *ctx, uint16_t *d_out, const float *d_x, size_t n);

/* Causal GQA attention over a contiguous KV cache, online softmax; shapes as ref_attention.
 * d_q, d_out: [n_q, n_heads, head_dim]; d_k, d_v: [>= start_pos + n_q, n_kv_heads, head_dim].
 * Made for decode (n_q = 1); correct for n_q > 1 (prefill) but not tuned for it. head_dim a
 * multiple of 32 up to RTC_HEAD_DIM_MAX; n_heads a multiple of n_kv_heads. */
int rtc_attention(struct rtc_ctx *ctx, float *d_out, const float *d_q, const float *d_k,
                  const float *d_v, int n_q, int start_pos, int n_heads, int n_kv_heads,
                  int head_dim, float scale);

/* d_out[r] = argmax of d_x[r, :] as ref_argmax (lowest index on ties, NaN ignored).
 * d_x: [rows, n]; d_out: [rows] int32 on the device. */
int rtc_argmax(struct rtc_ctx *ctx, int32_t *d_out, const float *d_x, int rows, int n);

/* ---- The forward pass's fused primitives (rtc_fwd_kernels.cu) ------------------------------
 * What runtime/cuda/rtc_model.cu runs per layer. Activations between GEMMs are BF16 (cuBLAS's
 * inputs), GEMM outputs and the residual stream F32, the KV cache BF16 in pages of
 * RTC_KV_BLOCK positions: a rank's cache is [nblocks][layers][RTC_KV_BLOCK][kv_heads * head_dim],
 * and a "slot" is block * RTC_KV_BLOCK + offset. Each has a twin ref_ in cpu_ref.h. */

/* Positions per KV page (the same as model.h's MODEL_KV_BLOCK). */
#define RTC_KV_BLOCK 16
/* Ranks an in-process device collective sums at most. */
#define RTC_MAX_RANKS 8
/* Splits of one attention over the sequence at most (flash-decoding). */
#define RTC_ATTN_MAX_SPLIT 32

/* d_x[r, :] = F32(d_table[d_tokens[r], :]); d_table: [vocab, dim] BF16. Tokens are checked by
 * the caller. */
int rtc_embed(struct rtc_ctx *ctx, float *d_x, const uint16_t *d_table, const int32_t *d_tokens,
              int n, int dim);

/* The residual add fused with the next RMSNorm: when d_delta is not NULL, d_x += d_delta; then
 * d_out = BF16(rmsnorm(d_x) * d_w). d_x, d_delta: [rows, dim] F32; d_w: [dim] F32; d_out: [rows,
 * dim] BF16. */
int rtc_add_rmsnorm(struct rtc_ctx *ctx, float *d_x, const float *d_delta, const float *d_w,
                    uint16_t *d_out, int rows, int dim, float eps);

/* After the fused QKV GEMM: d_qkv [n, (heads + 2 kv_heads) * head_dim] F32 holds q, k, v of each
 * token. Adds d_bias (Qwen2; NULL: none) [(heads + 2 kv) * hd], RMSNorms each head of q and k with
 * d_qnorm / d_knorm [hd] F32 (Qwen3; NULL: none), rotates q and k (rotate_half RoPE with the
 * angles pos * d_inv_freq[i], inv_freq [hd/2] already scaled, llama3 included), writes q into d_q
 * [n, heads * hd] F32 and k, v as BF16 into the caches at layer `layer` of slot d_slot[t]. */
struct rtc_qkv_shape {
    int heads, kv_heads, head_dim, layers, layer;
    float eps;
};
int rtc_qkv_rope_cache(struct rtc_ctx *ctx, float *d_q, const float *d_qkv, const float *d_bias,
                       const float *d_qnorm, const float *d_knorm, const float *d_inv_freq,
                       const int32_t *d_pos, const int32_t *d_slot, uint16_t *d_kc, uint16_t *d_vc,
                       const struct rtc_qkv_shape *s, int n);

/* Causal GQA attention over the paged cache, flash style: a block takes an item (a run of
 * consecutive positions of one sequence, and some of the query heads that share one KV head),
 * reads each KV page once into shared memory for all of them, and keeps an online softmax per
 * query; no [T, T] matrix exists. With nsplit > 1 the pages of a sequence are split between
 * blocks, each writing a partial (max, sum, accumulator) that a second kernel merges
 * (flash-decoding, for long contexts at small batch).
 *
 * Row t (of n) is at position pos[t] of sequence row_seq[t], whose pages are
 * blocks[seq_off[row_seq[t]] ...]; it attends positions max(0, pos - window + 1) (window 0: all)
 * to pos, which the caller has already written. items: [nitems][4] = {first row, rows, first
 * query head within the KV head's group, heads}, rows of one item being consecutive positions of
 * one sequence; rows * heads <= 4 * qpw (qpw 1 or 4: query slots per warp). part: scratch of
 * nsplit * n * heads * (head_dim + 2) floats. out: [n, heads * hd] BF16. */
struct rtc_attn_args {
    const float *q;
    const uint16_t *kc, *vc;
    const int32_t *pos, *row_seq, *seq_off, *blocks, *items;
    float *part;
    uint16_t *out;
    int n, nitems, heads, kv_heads, head_dim, layers, layer, window, nsplit, qpw;
    float scale;
};
int rtc_attention_paged(struct rtc_ctx *ctx, const struct rtc_attn_args *a);

/* d_h[r, i] = BF16(silu(gu[r, i]) * gu[r, f + i]): gu is the fused gate/up GEMM's [n, 2f]. */
int rtc_silu_mul(struct rtc_ctx *ctx, uint16_t *d_h, const float *d_gu, int n, int f);

/* d_y[n, rows] = d_x[n, cols] W^T with BF16 W and x, F32 out: the warp-per-row matvec when
 * n == 1 (decode at batch 1 reads the weights at the HBM's pace), cublasGemmEx otherwise. */
int rtc_gemm_bf16x(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const uint16_t *d_x, int n,
                   int rows, int cols);

/* d_out[i, :] = d_in[d_idx[i], :] for i < n (BF16 rows of dim). */
int rtc_gather_rows(struct rtc_ctx *ctx, uint16_t *d_out, const uint16_t *d_in,
                    const int32_t *d_idx, int n, int dim);

/* The in-process device collective's kernel: bufs[0..nranks) each hold count floats (device
 * pointers the context's device can reach: the same GPU, or peers); every one ends holding the
 * element-wise sum taken in rank order, so every rank gets the same bits. */
int rtc_sum_ranks(struct rtc_ctx *ctx, float *const *bufs, int nranks, size_t count);

/* Sampling on the GPU, one row of logits [vocab] per request: temperature == 0 is greedy (argmax,
 * lowest id on ties); otherwise softmax(logits / temperature), kept: the top_k most likely
 * (top_k 0: all; ties at the k-th value kept), then the most likely whose mass reaches top_p of
 * that (every token as likely as the last one kept), and the token drawn by u in [0, 1) over the
 * kept ones in id order. ref_sample is the same on the CPU. */
struct rtc_sample_param {
    float temperature, top_p, u;
    int32_t top_k;
};
int rtc_sample(struct rtc_ctx *ctx, int32_t *d_out, const float *d_logits,
               const struct rtc_sample_param *d_params, int rows, int vocab);

/* Device-to-device copy bandwidth as DESIGN.md defines the roofline's: (bytes read + written) /
 * seconds of a `bytes` cudaMemcpy, best of `reps`. *gbps in GB/s (1e9). */
int rtc_measure_d2d(struct rtc_ctx *ctx, size_t bytes, int reps, double *gbps);

/* Free and total memory of the context's device (cudaMemGetInfo). */
int rtc_mem_info(struct rtc_ctx *ctx, size_t *free_bytes, size_t *total_bytes);

/* CUDA-graph capture on the context's stream in thread-local mode (cudaStreamCaptureModeThread-
 * Local): another thread's CUDA calls (a loader, another rank) cannot invalidate it, and this
 * thread's unsafe calls fail instead of breaking someone else's capture. end instantiates the
 * graph into *exec; rtc_graph_launch replays it; rtc_graph_free accepts NULL. */
struct rtc_graph;
int rtc_capture_begin(struct rtc_ctx *ctx);
int rtc_capture_end(struct rtc_ctx *ctx, struct rtc_graph **out);
int rtc_graph_launch(struct rtc_ctx *ctx, struct rtc_graph *g);
void rtc_graph_free(struct rtc_graph *g);

#ifdef __cplusplus
}
#endif

#endif
