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

#ifdef __cplusplus
}
#endif

#endif
