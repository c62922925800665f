/* cuda_kernels: the CUDA implementation of cuda_backend.h - context, memory, and the kernels of the
 * Llama forward pass, each the device twin of a ref_ function in cpu_ref.c.
 *
 * Decode is memory-bound: a token reads every weight once, so the matvec is what decides tokens per
 * second. It gives one warp to each output row and has every lane load 16 bytes (8 BF16 weights)
 * at a time, the warp covering 512 contiguous bytes per load, with UNROLL loads in flight before
 * the first use. Prefill (many tokens) is matrix-bound and goes to cuBLAS (tensor cores, BF16 in,
 * F32 accumulate). The small kernels (RMSNorm, RoPE, SwiGLU, argmax) are written plainly: they move
 * a few megabytes per token against the gigabytes of the matvecs.
 *
 * Attention for one query is a single pass with an online softmax (running max m, running sum l,
 * accumulator rescaled by exp(m_old - m_new) whenever the max grows), split across the warps of a
 * block by key, the warps' partial (m, l, acc) merged at the end - the flash-decoding merge, inside
 * one block. One block per (query head, query token): enough for correctness and short contexts;
 * splitting long contexts over several blocks per head is the next step when it shows in profiles.
 *
 * Accuracy: all arithmetic is float32 with accurate expf/sincosf/sqrtf (no --use_fast_math), so
 * results sit within float32 rounding of the double-precision references; the stated tolerances
 * are in tests/unit/cuda/test_cuda_kernels.c. */
#include "cuda_internal.h"

#include <math.h>
#include <stdlib.h>

extern "C" const char *rtc_strerror(int status)
{
    switch (status) {
    case RTC_OK:
        return "ok";
    case RTC_EINVAL:
        return "invalid argument";
    case RTC_ENODEV:
        return "no such CUDA device";
    case RTC_ENOMEM:
        return "out of device memory";
    case RTC_ECUDA:
        return "CUDA error";
    case RTC_ECUBLAS:
        return "cuBLAS error";
    default:
        return "unknown error";
    }
}

/* ---- Context and memory ------------------------------------------------------------------- */

extern "C" int rtc_device_count(void)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        /* No driver, no device, or a driver older than the runtime: all mean "no GPU here". */
        log_debug("CUDA: no usable device: %s", cudaGetErrorString(err));
        cudaGetLastError(); /* clear it so later calls do not inherit it */
        return 0;
    }
    return n;
}

extern "C" int rtc_ctx_new(int device, struct rtc_ctx **out)
{
    *out = NULL;
    int n = rtc_device_count();
    if (device < 0 || device >= n) {
        log_error("CUDA: device %d requested, %d present", device, n);
        return RTC_ENODEV;
    }
    CUDA_CHECK(cudaSetDevice(device));
    struct rtc_ctx *ctx = (struct rtc_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) return RTC_ENOMEM;
    ctx->device = device;
    cudaError_t err = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
        log_error("CUDA: cudaStreamCreateWithFlags failed: %s", cudaGetErrorString(err));
        free(ctx);
        return RTC_ECUDA;
    }
    cublasStatus_t st = cublasCreate(&ctx->cublas);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(ctx->cublas, ctx->stream);
    if (st == CUBLAS_STATUS_SUCCESS &&
        cudaMalloc(&ctx->cublas_ws, RTC_CUBLAS_WS_BYTES) != cudaSuccess)
        st = CUBLAS_STATUS_ALLOC_FAILED;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasSetWorkspace(ctx->cublas, ctx->cublas_ws, RTC_CUBLAS_WS_BYTES);
    if (st != CUBLAS_STATUS_SUCCESS) {
        log_error("cuBLAS: handle setup failed: %s", cublasGetStatusString(st));
        if (ctx->cublas) cublasDestroy(ctx->cublas);
        CUDA_LOG(cudaFree(ctx->cublas_ws));
        CUDA_LOG(cudaStreamDestroy(ctx->stream));
        free(ctx);
        return RTC_ECUBLAS;
    }
    *out = ctx;
    return RTC_OK;
}

extern "C" void rtc_ctx_free(struct rtc_ctx *ctx)
{
    if (!ctx) return;
    CUDA_LOG(cudaSetDevice(ctx->device));
    CUDA_LOG(cudaStreamSynchronize(ctx->stream));
    if (cublasDestroy(ctx->cublas) != CUBLAS_STATUS_SUCCESS)
        log_error("cuBLAS: cublasDestroy failed");
    CUDA_LOG(cudaFree(ctx->cublas_ws));
    CUDA_LOG(cudaFree(ctx->scratch));
    CUDA_LOG(cudaStreamDestroy(ctx->stream));
    free(ctx);
}

extern "C" int rtc_ctx_use(struct rtc_ctx *ctx)
{
    CUDA_CHECK(cudaSetDevice(ctx->device));
    return RTC_OK;
}

extern "C" int rtc_sync(struct rtc_ctx *ctx)
{
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return RTC_OK;
}

extern "C" int rtc_malloc(void **d_out, size_t bytes)
{
    *d_out = NULL;
    CUDA_CHECK(cudaMalloc(d_out, bytes));
    return RTC_OK;
}

extern "C" void rtc_free(void *d_ptr)
{
    if (d_ptr) CUDA_LOG(cudaFree(d_ptr));
}

extern "C" int rtc_upload(struct rtc_ctx *ctx, void *d_dst, const void *src, size_t bytes)
{
    CUDA_CHECK(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return RTC_OK;
}

extern "C" int rtc_download(struct rtc_ctx *ctx, void *dst, const void *d_src, size_t bytes)
{
    CUDA_CHECK(cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return RTC_OK;
}

extern "C" int rtc_memset(struct rtc_ctx *ctx, void *d_dst, int byte, size_t bytes)
{
    CUDA_CHECK(cudaMemsetAsync(d_dst, byte, bytes, ctx->stream));
    return RTC_OK;
}

/* ---- Device helpers ----------------------------------------------------------------------- */

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* Sum over the whole block, returned to every thread. Call once per kernel (it reuses shared
 * memory without a trailing barrier). blockDim.x a multiple of 32, at most 1024. */
static __device__ float block_sum(float v)
{
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

/* BF16 -> F32 is a shift: a BF16 is the top half of a float32. Two packed in one 32-bit word. */
static __device__ __forceinline__ float bf16_lo(uint32_t u)
{
    return __uint_as_float(u << 16);
}
static __device__ __forceinline__ float bf16_hi(uint32_t u)
{
    return __uint_as_float(u & 0xffff0000u);
}

/* Grid size for a 1-D elementwise kernel, capped: a grid-stride loop covers the rest. */
static unsigned grid_for(size_t n, int threads)
{
    size_t blocks = (n + threads - 1) / threads;
    const size_t max_blocks = 65535; /* plenty to fill 132 SMs; keeps the count in range */
    return (unsigned)(blocks < 1 ? 1 : blocks > max_blocks ? max_blocks : blocks);
}

/* ---- RMSNorm ------------------------------------------------------------------------------ */

enum { RMSNORM_THREADS = 256 };

/* One block per row. x, out: [rows, dim]; w: [dim]. */
static __global__ void rmsnorm_kernel(float *out, const float *x, const __nv_bfloat16 *w, int dim,
                                      float eps)
{
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *outr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        outr[i] = xr[i] * inv * __bfloat162float(w[i]);
}

extern "C" int rtc_rmsnorm(struct rtc_ctx *ctx, float *d_out, const float *d_x, const uint16_t *d_w,
                           int rows, int dim, float eps)
{
    ARG_CHECK(rows >= 0 && dim > 0);
    if (rows == 0) return RTC_OK;
    rmsnorm_kernel<<<rows, RMSNORM_THREADS, 0, ctx->stream>>>(d_out, d_x,
                                                              (const __nv_bfloat16 *)d_w, dim, eps);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- RoPE --------------------------------------------------------------------------------- */

enum { ROPE_THREADS = 256 };

/* One block per token. The block computes the head_dim/2 frequencies once into shared memory
 * (in double, rounded to float, as the reference does: computing them in float on both sides would
 * differ by an ulp, which a position of 100k turns into a visible angle error), then rotates every
 * (head, pair) of the token. */
static __global__ void rope_kernel(float *x, const int32_t *pos, int n_heads, int head_dim,
                                   float theta)
{
    __shared__ float inv_freq[RTC_HEAD_DIM_MAX / 2];
    const int half = head_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim));
    __syncthreads();
    const float p = (float)pos[blockIdx.x];
    float *xt = x + (size_t)blockIdx.x * n_heads * head_dim;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        float *xh = xt + (size_t)h * head_dim;
        const float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
    }
}

extern "C" int rtc_rope(struct rtc_ctx *ctx, float *d_x, const int32_t *d_pos, int n_tok,
                        int n_heads, int head_dim, float theta)
{
    ARG_CHECK(n_tok >= 0 && n_heads > 0 && theta > 0);
    ARG_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= RTC_HEAD_DIM_MAX);
    if (n_tok == 0) return RTC_OK;
    rope_kernel<<<n_tok, ROPE_THREADS, 0, ctx->stream>>>(d_x, d_pos, n_heads, head_dim, theta);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- SwiGLU and conversion ---------------------------------------------------------------- */

enum { ELEMENTWISE_THREADS = 256 };

static __global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" int rtc_swiglu(struct rtc_ctx *ctx, float *d_out, const float *d_gate, const float *d_up,
                          size_t n)
{
    if (n == 0) return RTC_OK;
    swiglu_kernel<<<grid_for(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, ctx->stream>>>(
        d_out, d_gate, d_up, n);
    LAUNCH_CHECK();
    return RTC_OK;
}

static __global__ void f32_to_bf16_kernel(__nv_bfloat16 *out, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(x[i]);
}

extern "C" int rtc_f32_to_bf16(struct rtc_ctx *ctx, uint16_t *d_out, const float *d_x, size_t n)
{
    if (n == 0) return RTC_OK;
    f32_to_bf16_kernel<<<grid_for(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, ctx->stream>>>(
        (__nv_bfloat16 *)d_out, d_x, n);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Matvec (decode) ---------------------------------------------------------------------- */

/* MATVEC_WARPS rows per block, one warp each: 4096 rows make 512 blocks, several per SM.
 * MATVEC_UNROLL 16-byte loads per lane are issued before any is used, so each warp keeps
 * 32 * 16 * 4 = 2 KiB of weights in flight. */
enum { MATVEC_WARPS = 8, MATVEC_UNROLL = 4 };

/* 8 weights (one 16-byte load) against 8 activations: F32 activations (two float4), or BF16
 * ones (one uint4, the forward pass's GEMM input). */
static __device__ __forceinline__ float dot8(uint4 w, const float4 *x, int v)
{
    const float4 xa = x[2 * v], xb = x[2 * v + 1];
    return bf16_lo(w.x) * xa.x + bf16_hi(w.x) * xa.y + bf16_lo(w.y) * xa.z + bf16_hi(w.y) * xa.w +
           bf16_lo(w.z) * xb.x + bf16_hi(w.z) * xb.y + bf16_lo(w.w) * xb.z + bf16_hi(w.w) * xb.w;
}
static __device__ __forceinline__ float dot8(uint4 w, const uint4 *x, int v)
{
    const uint4 xv = __ldg(x + v);
    return bf16_lo(w.x) * bf16_lo(xv.x) + bf16_hi(w.x) * bf16_hi(xv.x) +
           bf16_lo(w.y) * bf16_lo(xv.y) + bf16_hi(w.y) * bf16_hi(xv.y) +
           bf16_lo(w.z) * bf16_lo(xv.z) + bf16_hi(w.z) * bf16_hi(xv.z) +
           bf16_lo(w.w) * bf16_lo(xv.w) + bf16_hi(w.w) * bf16_hi(xv.w);
}
static __device__ __forceinline__ float to_f32(float v)
{
    return v;
}
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

/* cols % 8 == 0, w and x 16-byte aligned. XV: float4 (F32 x) or uint4 (BF16 x). */
template <typename XV>
static __global__ void __launch_bounds__(MATVEC_WARPS * 32)
    matvec_bf16_vec_kernel(float *y, const uint4 *w, const XV *x, int rows, int cols)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int nvec = cols / 8; /* 16-byte vectors of 8 weights in the row */
    const uint4 *wr = w + (size_t)row * nvec;
    float acc = 0.0f;
    for (int base = lane; base < nvec; base += 32 * MATVEC_UNROLL) {
        uint4 wv[MATVEC_UNROLL];
#pragma unroll
        for (int u = 0; u < MATVEC_UNROLL; u++) {
            const int v = base + 32 * u;
            /* Weights are read once per token: stream them past L1 (ld.global.nc). */
            wv[u] = v < nvec ? __ldg(wr + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < MATVEC_UNROLL; u++) {
            const int v = base + 32 * u;
            if (v >= nvec) break;
            acc += dot8(wv[u], x, v);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

/* Any cols, any alignment: one BF16 per lane per step, still coalesced across the warp. */
template <typename XT>
static __global__ void __launch_bounds__(MATVEC_WARPS * 32)
    matvec_bf16_scalar_kernel(float *y, const __nv_bfloat16 *w, const XT *x, int rows, int cols)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const __nv_bfloat16 *wr = w + (size_t)row * cols;
    float acc = 0.0f;
    for (int c = lane; c < cols; c += 32)
        acc += __bfloat162float(wr[c]) * to_f32(x[c]);
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

/* x as F32 (XV float4, XT float) or BF16 (uint4, __nv_bfloat16). */
template <typename XV, typename XT>
static int matvec_launch(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const void *d_x,
                         int rows, int cols)
{
    ARG_CHECK(rows >= 0 && cols > 0);
    if (rows == 0) return RTC_OK;
    const unsigned blocks = (unsigned)((rows + MATVEC_WARPS - 1) / MATVEC_WARPS);
    const bool vec = cols % 8 == 0 && (uintptr_t)d_w % 16 == 0 && (uintptr_t)d_x % 16 == 0;
    if (vec)
        matvec_bf16_vec_kernel<XV><<<blocks, MATVEC_WARPS * 32, 0, ctx->stream>>>(
            d_y, (const uint4 *)d_w, (const XV *)d_x, rows, cols);
    else
        matvec_bf16_scalar_kernel<XT><<<blocks, MATVEC_WARPS * 32, 0, ctx->stream>>>(
            d_y, (const __nv_bfloat16 *)d_w, (const XT *)d_x, rows, cols);
    LAUNCH_CHECK();
    return RTC_OK;
}

extern "C" int rtc_matvec_bf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w,
                               const float *d_x, int rows, int cols)
{
    return matvec_launch<float4, float>(ctx, d_y, d_w, d_x, rows, cols);
}

int rtc_matvec_bf16_xbf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const uint16_t *d_x,
                          int rows, int cols)
{
    return matvec_launch<uint4, __nv_bfloat16>(ctx, d_y, d_w, d_x, rows, cols);
}

/* ---- GEMM (prefill) ----------------------------------------------------------------------- */

/* cuBLAS is column-major. Row-major Y[n_tok, rows] is column-major Y^T [rows, n_tok] (ld rows);
 * row-major W[rows, cols] is column-major W^T [cols, rows] (ld cols), so op(A) = A^T = W; likewise
 * X[n_tok, cols] is column-major [cols, n_tok] (ld cols), op(B) = B. Y^T = W X^T: "TN", the layout
 * cuBLAS is fastest at. */
extern "C" int rtc_gemm_bf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const float *d_x,
                             int n_tok, int rows, int cols)
{
    ARG_CHECK(n_tok >= 0 && rows > 0 && cols > 0);
    if (n_tok == 0) return RTC_OK;
    const size_t need = (size_t)n_tok * cols * sizeof(__nv_bfloat16);
    if (need > ctx->scratch_bytes) {
        /* Work still queued may read the old buffer: let it finish before freeing. */
        CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
        CUDA_LOG(cudaFree(ctx->scratch));
        ctx->scratch = NULL;
        ctx->scratch_bytes = 0;
        CUDA_CHECK(cudaMalloc(&ctx->scratch, need));
        ctx->scratch_bytes = need;
    }
    int rc = rtc_f32_to_bf16(ctx, (uint16_t *)ctx->scratch, d_x, (size_t)n_tok * cols);
    if (rc != RTC_OK) return rc;
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tok, cols, &alpha, d_w,
                              CUDA_R_16BF, cols, ctx->scratch, CUDA_R_16BF, cols, &beta, d_y,
                              CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return RTC_OK;
}

/* ---- Attention ---------------------------------------------------------------------------- */

enum { ATTN_WARPS = 4 };

/* grid (n_heads, n_q), ATTN_WARPS warps. NJ = head_dim / 32: lane l holds dimensions l + 32 j, so
 * a warp reads each K and V row in coalesced 128-byte pieces and the accumulators stay in
 * registers (the loops over j unroll; NJ is a template argument for that reason). Warp w takes
 * keys w, w + ATTN_WARPS, ...; each keeps its own online-softmax state, merged at the end. */
template <int NJ>
static __global__ void __launch_bounds__(ATTN_WARPS * 32)
    attention_kernel(float *out, const float *q, const float *k_cache, const float *v_cache,
                     int start_pos, int n_heads, int n_kv_heads, float scale)
{
    constexpr int HD = 32 * NJ;
    __shared__ float warp_m[ATTN_WARPS], warp_l[ATTN_WARPS];
    __shared__ float warp_acc[ATTN_WARPS][HD];

    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (n_heads / n_kv_heads);
    const int n_keys = start_pos + t + 1;
    const size_t kv_stride = (size_t)n_kv_heads * HD;
    const float *qh = q + ((size_t)t * n_heads + h) * HD;

    float qr[NJ], acc[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        qr[j] = qh[lane + 32 * j];
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int k = warp; k < n_keys; k += ATTN_WARPS) {
        const float *kr = k_cache + (size_t)k * kv_stride + (size_t)kvh * HD;
        const float *vr = v_cache + (size_t)k * kv_stride + (size_t)kvh * HD;
        float s = 0.0f, vv[NJ];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            s += qr[j] * kr[lane + 32 * j];
            vv[j] = vr[lane + 32 * j]; /* issued before the reduction so it overlaps it */
        }
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new); /* 0 on the first key (m = -inf) */
        const float p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < NJ; j++)
            acc[j] = acc[j] * corr + p * vv[j];
        m = m_new;
    }

    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < NJ; j++)
        warp_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();

    /* Merge: a warp that saw no key (n_keys < ATTN_WARPS) has m = -inf and weight 0. n_keys >= 1,
     * so the overall max is finite unless the scores themselves are not. */
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++)
        m_all = fmaxf(m_all, warp_m[w]);
    float weight[ATTN_WARPS], l_all = 0.0f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) {
        weight[w] = warp_m[w] == -INFINITY ? 0.0f : expf(warp_m[w] - m_all);
        l_all += warp_l[w] * weight[w];
    }
    float *oh = out + ((size_t)t * n_heads + h) * HD;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            o += warp_acc[w][d] * weight[w];
        oh[d] = o / l_all;
    }
}

/* The grid's y dimension holds the query tokens. */
#define ATTN_MAX_QUERIES 65535

extern "C" int rtc_attention(struct rtc_ctx *ctx, float *d_out, const float *d_q, const float *d_k,
                             const float *d_v, int n_q, int start_pos, int n_heads, int n_kv_heads,
                             int head_dim, float scale)
{
    ARG_CHECK(n_q >= 0 && n_q <= ATTN_MAX_QUERIES && start_pos >= 0);
    ARG_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    ARG_CHECK(head_dim > 0 && head_dim % 32 == 0 && head_dim <= RTC_HEAD_DIM_MAX);
    if (n_q == 0) return RTC_OK;
    const dim3 grid((unsigned)n_heads, (unsigned)n_q);
    const int threads = ATTN_WARPS * 32;
    cudaStream_t s = ctx->stream;
#define ATTN_CASE(nj)                                                                              \
    case nj:                                                                                       \
        attention_kernel<nj><<<grid, threads, 0, s>>>(d_out, d_q, d_k, d_v, start_pos, n_heads,    \
                                                      n_kv_heads, scale);                          \
        break
    switch (head_dim / 32) {
        ATTN_CASE(1);
        ATTN_CASE(2);
        ATTN_CASE(3);
        ATTN_CASE(4);
        ATTN_CASE(5);
        ATTN_CASE(6);
        ATTN_CASE(7);
        ATTN_CASE(8);
    default:
        return RTC_EINVAL; /* unreachable: head_dim checked above */
    }
#undef ATTN_CASE
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Argmax ------------------------------------------------------------------------------- */

enum { ARGMAX_THREADS = 1024 };

/* (value, index) with index -1 for "nothing seen yet"; the better of two is the larger value, or
 * the lower index on a tie, so the result is the lowest index of the max, as in ref_argmax. */
static __device__ __forceinline__ void argmax_merge(float &v, int &i, float ov, int oi)
{
    if (oi < 0) return;
    if (i < 0 || ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

/* One block per row. */
static __global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_kernel(int32_t *out, const float *x, int n)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float v = 0.0f;
    int i = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float xj = xr[j];
        if (!isnan(xj)) argmax_merge(v, i, xj, j);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, i, off);
        argmax_merge(v, i, ov, oi);
    }
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        const bool have = lane < (int)(blockDim.x >> 5);
        v = have ? sv[lane] : 0.0f;
        i = have ? si[lane] : -1;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, off);
            const int oi = __shfl_xor_sync(0xffffffffu, i, off);
            argmax_merge(v, i, ov, oi);
        }
        if (lane == 0) out[blockIdx.x] = i < 0 ? 0 : i;
    }
}

extern "C" int rtc_argmax(struct rtc_ctx *ctx, int32_t *d_out, const float *d_x, int rows, int n)
{
    ARG_CHECK(rows >= 0 && n > 0);
    if (rows == 0) return RTC_OK;
    argmax_kernel<<<rows, ARGMAX_THREADS, 0, ctx->stream>>>(d_out, d_x, n);
    LAUNCH_CHECK();
    return RTC_OK;
}
