/* rtc_fwd_kernels: the fused kernels of the forward pass (see "The forward pass's fused
 * primitives" in cuda_backend.h), each the device twin of a ref_ function in cpu_ref.c.
 *
 * Fusion is where the bytes go: the residual add and the next RMSNorm are one pass over the
 * stream that also writes the BF16 input of the next GEMM; bias, QK norm, RoPE and the KV-cache
 * write are one pass over the QKV GEMM's output; SiLU and the product with up are one pass over
 * the gate/up GEMM's output. Decode at batch 1 is bound by reading the weights, which the matvec
 * does with 16-byte loads, one warp per row.
 *
 * Attention is flash-style: a block owns a run of query positions of one sequence and the query
 * heads that share one KV head (GQA), streams the sequence's KV pages through shared memory once
 * for all of them, and keeps an online softmax per query (running max m, running sum l, the
 * accumulator rescaled by exp(m_old - m_new)). Long sequences are split over blocks (grid z), each
 * writing a partial (m, l, acc) that attn_merge_kernel combines: flash-decoding.
 *
 * Sampling keeps the whole vocabulary in one block and never sorts: the k-th largest logit and
 * the top-p cut are found by a radix select over the order-preserving integer image of the
 * logits (32 passes, each a count or a probability mass over the row), then the token is drawn by
 * walking the kept ones in id order.
 *
 * All arithmetic is float32 with accurate expf/sincosf (no --use_fast_math). */
#include "cuda_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static __device__ __forceinline__ float fwd_warp_sum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* Sum over the block, returned to every thread; may be called repeatedly (the trailing barrier
 * protects sh). sh: 32 floats of shared memory. Every thread adds the partials in the same order,
 * so all get the same bits. */
static __device__ float block_sum_all(float v, float *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = fwd_warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++)
        t += sh[i];
    __syncthreads();
    return t;
}

static unsigned fwd_grid(size_t n, int threads)
{
    size_t blocks = (n + threads - 1) / threads;
    return (unsigned)(blocks < 1 ? 1 : blocks > 65535 ? 65535 : blocks);
}

/* ---- Embedding ---------------------------------------------------------------------------- */

static __global__ void embed_kernel(float *x, const __nv_bfloat16 *table, const int32_t *tok,
                                    int dim)
{
    const __nv_bfloat16 *row = table + (size_t)tok[blockIdx.x] * dim;
    float *xr = x + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        xr[i] = __bfloat162float(row[i]);
}

extern "C" int rtc_embed(struct rtc_ctx *ctx, float *d_x, const uint16_t *d_table,
                         const int32_t *d_tokens, int n, int dim)
{
    ARG_CHECK(n >= 0 && dim > 0);
    if (n == 0) return RTC_OK;
    embed_kernel<<<n, 256, 0, ctx->stream>>>(d_x, (const __nv_bfloat16 *)d_table, d_tokens, dim);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Residual add + RMSNorm --------------------------------------------------------------- */

enum { NORM_THREADS = 512 };

static __global__ void __launch_bounds__(NORM_THREADS)
    add_rmsnorm_kernel(float *x, const float *delta, const float *w, __nv_bfloat16 *out, int dim,
                       float eps)
{
    __shared__ float sh[32];
    float *xr = x + (size_t)blockIdx.x * dim;
    const float *dr = delta ? delta + (size_t)blockIdx.x * dim : nullptr;
    __nv_bfloat16 *orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += dr[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = block_sum_all(ss, sh);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        orow[i] = __float2bfloat16_rn(xr[i] * inv * w[i]);
}

extern "C" int rtc_add_rmsnorm(struct rtc_ctx *ctx, float *d_x, const float *d_delta,
                               const float *d_w, uint16_t *d_out, int rows, int dim, float eps)
{
    ARG_CHECK(rows >= 0 && dim > 0);
    if (rows == 0) return RTC_OK;
    add_rmsnorm_kernel<<<rows, NORM_THREADS, 0, ctx->stream>>>(d_x, d_delta, d_w,
                                                               (__nv_bfloat16 *)d_out, dim, eps);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Bias + QK norm + RoPE + KV-cache write ----------------------------------------------- */

enum { QKV_WARPS = 4, HD_J = RTC_HEAD_DIM_MAX / 32 };

/* One block per token; warp w takes head vectors w, w + QKV_WARPS, ... of q, then k, then v.
 * Lane l holds dimensions l + 32 j. RoPE pairs dimension i with i + hd/2, which may live in
 * another lane, so each rotated vector goes through the warp's row of shared memory. */
static __global__ void __launch_bounds__(QKV_WARPS * 32)
    qkv_rope_kernel(float *q, const float *qkv, const float *bias, const float *qnorm,
                    const float *knorm, const float *inv_freq, const int32_t *pos,
                    const int32_t *slot, __nv_bfloat16 *kc, __nv_bfloat16 *vc, int heads, int kvh,
                    int hd, int layers, int layer, float eps)
{
    __shared__ float buf[QKV_WARPS][RTC_HEAD_DIM_MAX];
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nv = heads + 2 * kvh, half = hd / 2;
    const float p = (float)pos[t];
    const int s = slot[t];
    const size_t kvd = (size_t)kvh * hd;
    const size_t cbase =
        (((size_t)(s / RTC_KV_BLOCK) * layers + layer) * RTC_KV_BLOCK + s % RTC_KV_BLOCK) * kvd;
    const float *row = qkv + (size_t)t * nv * hd;
    for (int v = warp; v < nv; v += QKV_WARPS) {
        const int kind = v < heads ? 0 : v < heads + kvh ? 1 : 2; /* q, k, v */
        float val[HD_J];
#pragma unroll
        for (int j = 0; j < HD_J; j++) {
            const int d = lane + 32 * j;
            val[j] =
                d < hd ? row[(size_t)v * hd + d] + (bias ? bias[(size_t)v * hd + d] : 0.0f) : 0.0f;
        }
        if (kind < 2) {
            const float *nw = kind == 0 ? qnorm : knorm;
            if (nw) {
                float ss = 0.0f;
#pragma unroll
                for (int j = 0; j < HD_J; j++)
                    ss += val[j] * val[j];
                ss = fwd_warp_sum(ss);
                const float inv = 1.0f / sqrtf(ss / (float)hd + eps);
#pragma unroll
                for (int j = 0; j < HD_J; j++) {
                    const int d = lane + 32 * j;
                    if (d < hd) val[j] = val[j] * inv * nw[d];
                }
            }
#pragma unroll
            for (int j = 0; j < HD_J; j++) {
                const int d = lane + 32 * j;
                if (d < hd) buf[warp][d] = val[j];
            }
            __syncwarp();
#pragma unroll
            for (int j = 0; j < HD_J; j++) {
                const int d = lane + 32 * j;
                if (d >= hd) continue;
                const int i = d < half ? d : d - half;
                float sn, cs;
                sincosf(p * inv_freq[i], &sn, &cs);
                const float other = buf[warp][d < half ? d + half : d - half];
                val[j] = d < half ? val[j] * cs - other * sn : val[j] * cs + other * sn;
            }
            __syncwarp(); /* the next vector reuses buf */
        }
#pragma unroll
        for (int j = 0; j < HD_J; j++) {
            const int d = lane + 32 * j;
            if (d >= hd) continue;
            if (kind == 0)
                q[((size_t)t * heads + v) * hd + d] = val[j];
            else if (kind == 1)
                kc[cbase + (size_t)(v - heads) * hd + d] = __float2bfloat16_rn(val[j]);
            else
                vc[cbase + (size_t)(v - heads - kvh) * hd + d] = __float2bfloat16_rn(val[j]);
        }
    }
}

extern "C" int rtc_qkv_rope_cache(struct rtc_ctx *ctx, float *d_q, const float *d_qkv,
                                  const float *d_bias, const float *d_qnorm, const float *d_knorm,
                                  const float *d_inv_freq, const int32_t *d_pos,
                                  const int32_t *d_slot, uint16_t *d_kc, uint16_t *d_vc,
                                  const struct rtc_qkv_shape *s, int n)
{
    ARG_CHECK(n >= 0 && s->heads > 0 && s->kv_heads > 0 && s->layers > 0);
    ARG_CHECK(s->layer >= 0 && s->layer < s->layers);
    ARG_CHECK(s->head_dim > 0 && s->head_dim % 2 == 0 && s->head_dim <= RTC_HEAD_DIM_MAX);
    if (n == 0) return RTC_OK;
    qkv_rope_kernel<<<n, QKV_WARPS * 32, 0, ctx->stream>>>(
        d_q, d_qkv, d_bias, d_qnorm, d_knorm, d_inv_freq, d_pos, d_slot, (__nv_bfloat16 *)d_kc,
        (__nv_bfloat16 *)d_vc, s->heads, s->kv_heads, s->head_dim, s->layers, s->layer, s->eps);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Paged attention ---------------------------------------------------------------------- */

enum { ATT_WARPS = 4 };

/* grid (items, KV heads, splits). NJ = ceil(head_dim / 32); QPW query slots per warp. The page
 * being read sits in shared memory as F32 [RTC_KV_BLOCK][32 NJ] for K and for V. */
template <int NJ, int QPW>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attn_paged_kernel(struct rtc_attn_args a)
{
    constexpr int HDM = 32 * NJ;
    __shared__ float Ks[RTC_KV_BLOCK][HDM], Vs[RTC_KV_BLOCK][HDM];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int *it = a.items + 4 * blockIdx.x;
    const int r0 = it[0], nrows = it[1], g0 = it[2], ng = it[3];
    const int kvh = blockIdx.y, split = blockIdx.z, hd = a.head_dim;
    const int group = a.heads / a.kv_heads;
    const int *bt = a.blocks + a.seq_off[a.row_seq[r0]];
    const int p0 = a.pos[r0], plast = p0 + nrows - 1;
    const int lo = a.window > 0 && p0 - a.window + 1 > 0 ? p0 - a.window + 1 : 0;
    const int pg_lo = lo / RTC_KV_BLOCK, pg_hi = plast / RTC_KV_BLOCK;
    const int pps = (pg_hi - pg_lo + a.nsplit) / a.nsplit; /* ceil(pages / nsplit) */
    const int my_lo = pg_lo + split * pps;
    const int my_hi = my_lo + pps - 1 < pg_hi ? my_lo + pps - 1 : pg_hi;

    float qr[QPW][NJ], acc[QPW][NJ], m[QPW], l[QPW];
    int qpos[QPW], qrow[QPW], qhead[QPW];
    bool act[QPW];
#pragma unroll
    for (int u = 0; u < QPW; u++) {
        const int i = warp * QPW + u;
        act[u] = i < nrows * ng;
        qrow[u] = r0 + (act[u] ? i / ng : 0);
        qhead[u] = kvh * group + g0 + (act[u] ? i % ng : 0);
        qpos[u] = p0 + (act[u] ? i / ng : 0);
        m[u] = -INFINITY;
        l[u] = 0.0f;
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const int d = lane + 32 * j;
            acc[u][j] = 0.0f;
            qr[u][j] =
                act[u] && d < hd ? a.q[((size_t)qrow[u] * a.heads + qhead[u]) * hd + d] : 0.0f;
        }
    }
    const size_t kvd = (size_t)a.kv_heads * hd;
    const __nv_bfloat16 *kc = (const __nv_bfloat16 *)a.kc, *vc = (const __nv_bfloat16 *)a.vc;
    for (int pg = my_lo; pg <= my_hi; pg++) {
        const size_t base =
            ((size_t)bt[pg] * a.layers + a.layer) * RTC_KV_BLOCK * kvd + (size_t)kvh * hd;
        for (int idx = threadIdx.x; idx < RTC_KV_BLOCK * HDM; idx += blockDim.x) {
            const int j = idx / HDM, d = idx % HDM;
            const bool in = d < hd;
            Ks[j][d] = in ? __bfloat162float(kc[base + (size_t)j * kvd + d]) : 0.0f;
            Vs[j][d] = in ? __bfloat162float(vc[base + (size_t)j * kvd + d]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < QPW; u++) {
            if (!act[u]) continue; /* uniform over the warp */
            const int qlo = a.window > 0 ? qpos[u] - a.window + 1 : 0;
            for (int j = 0; j < RTC_KV_BLOCK; j++) {
                const int t = pg * RTC_KV_BLOCK + j;
                if (t > qpos[u] || t < qlo) continue; /* uniform too */
                float s = 0.0f;
#pragma unroll
                for (int jj = 0; jj < NJ; jj++)
                    s += qr[u][jj] * Ks[j][lane + 32 * jj];
                s = fwd_warp_sum(s) * a.scale;
                const float m_new = fmaxf(m[u], s);
                const float corr = expf(m[u] - m_new); /* 0 on the first key */
                const float pexp = expf(s - m_new);
                l[u] = l[u] * corr + pexp;
#pragma unroll
                for (int jj = 0; jj < NJ; jj++)
                    acc[u][jj] = acc[u][jj] * corr + pexp * Vs[j][lane + 32 * jj];
                m[u] = m_new;
            }
        }
        __syncthreads(); /* the next page overwrites Ks, Vs */
    }
    const size_t nq = (size_t)a.n * a.heads;
    float *ml = a.part, *pacc = a.part + 2 * (size_t)a.nsplit * nq;
#pragma unroll
    for (int u = 0; u < QPW; u++) {
        if (!act[u]) continue;
        const size_t idx = (size_t)split * nq + (size_t)qrow[u] * a.heads + qhead[u];
        if (lane == 0) {
            ml[2 * idx] = m[u];
            ml[2 * idx + 1] = l[u];
        }
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const int d = lane + 32 * j;
            if (d < hd) pacc[idx * hd + d] = acc[u][j];
        }
    }
}

/* One block per (row, head): the splits' partials weighted by exp(m_s - max m), over the total
 * sum. A split that saw no key (m = -inf) weighs 0; every query sees at least its own key. */
static __global__ void attn_merge_kernel(const float *part, __nv_bfloat16 *out, int n, int heads,
                                         int hd, int nsplit)
{
    const size_t rh = blockIdx.x, nq = (size_t)n * heads;
    const float *ml = part, *pacc = part + 2 * (size_t)nsplit * nq;
    float mx = -INFINITY;
    for (int s = 0; s < nsplit; s++)
        mx = fmaxf(mx, ml[2 * (s * nq + rh)]);
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        const float ms = ml[2 * (s * nq + rh)];
        L += ms == -INFINITY ? 0.0f : ml[2 * (s * nq + rh) + 1] * expf(ms - mx);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            const float ms = ml[2 * (s * nq + rh)];
            if (ms != -INFINITY) o += pacc[(s * nq + rh) * hd + d] * expf(ms - mx);
        }
        out[rh * hd + d] = __float2bfloat16_rn(o / L);
    }
}

extern "C" int rtc_attention_paged(struct rtc_ctx *ctx, const struct rtc_attn_args *a)
{
    ARG_CHECK(a->n >= 0 && a->nitems >= 0 && a->heads > 0 && a->kv_heads > 0);
    ARG_CHECK(a->heads % a->kv_heads == 0 && a->layers > 0 && a->layer >= 0 &&
              a->layer < a->layers);
    ARG_CHECK(a->head_dim > 0 && a->head_dim % 2 == 0 && a->head_dim <= RTC_HEAD_DIM_MAX);
    ARG_CHECK(a->nsplit >= 1 && a->nsplit <= RTC_ATTN_MAX_SPLIT && a->window >= 0);
    ARG_CHECK(a->qpw == 1 || a->qpw == 4);
    if (a->n == 0 || a->nitems == 0) return RTC_OK;
    const dim3 grid((unsigned)a->nitems, (unsigned)a->kv_heads, (unsigned)a->nsplit);
    cudaStream_t st = ctx->stream;
    const int nj = (a->head_dim + 31) / 32;
#define ATT_CASE(NJ)                                                                               \
    case NJ:                                                                                       \
        if (a->qpw == 1)                                                                           \
            attn_paged_kernel<NJ, 1><<<grid, ATT_WARPS * 32, 0, st>>>(*a);                         \
        else                                                                                       \
            attn_paged_kernel<NJ, 4><<<grid, ATT_WARPS * 32, 0, st>>>(*a);                         \
        break
    switch (nj) {
        ATT_CASE(1);
        ATT_CASE(2);
        ATT_CASE(3);
        ATT_CASE(4);
        ATT_CASE(5);
        ATT_CASE(6);
        ATT_CASE(7);
        ATT_CASE(8);
    default:
        return RTC_EINVAL;
    }
#undef ATT_CASE
    LAUNCH_CHECK();
    attn_merge_kernel<<<(unsigned)((size_t)a->n * a->heads), 128, 0, st>>>(
        a->part, (__nv_bfloat16 *)a->out, a->n, a->heads, a->head_dim, a->nsplit);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- SiLU * up ---------------------------------------------------------------------------- */

static __global__ void silu_mul_kernel(__nv_bfloat16 *h, const float *gu, int n, int f)
{
    const size_t total = (size_t)n * f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / f, c = i % f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        h[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" int rtc_silu_mul(struct rtc_ctx *ctx, uint16_t *d_h, const float *d_gu, int n, int f)
{
    ARG_CHECK(n >= 0 && f > 0);
    if (n == 0) return RTC_OK;
    silu_mul_kernel<<<fwd_grid((size_t)n * f, 256), 256, 0, ctx->stream>>>((__nv_bfloat16 *)d_h,
                                                                           d_gu, n, f);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- GEMM with BF16 activations ----------------------------------------------------------- */

extern "C" int rtc_gemm_bf16x(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w,
                              const uint16_t *d_x, int n, int rows, int cols)
{
    ARG_CHECK(n >= 0 && rows > 0 && cols > 0);
    if (n == 0) return RTC_OK;
    if (n == 1) return rtc_matvec_bf16_xbf16(ctx, d_y, d_w, d_x, rows, cols);
    /* Row-major Y[n, rows] = X W^T is column-major Y^T = W X^T: "TN" (see rtc_gemm_bf16). */
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, d_w,
                              CUDA_R_16BF, cols, d_x, CUDA_R_16BF, cols, &beta, d_y, CUDA_R_32F,
                              rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return RTC_OK;
}

/* ---- Row gather, rank sum ----------------------------------------------------------------- */

static __global__ void gather_rows_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *in,
                                          const int32_t *idx, int dim)
{
    const __nv_bfloat16 *src = in + (size_t)idx[blockIdx.x] * dim;
    __nv_bfloat16 *dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dst[i] = src[i];
}

extern "C" int rtc_gather_rows(struct rtc_ctx *ctx, uint16_t *d_out, const uint16_t *d_in,
                               const int32_t *d_idx, int n, int dim)
{
    ARG_CHECK(n >= 0 && dim > 0);
    if (n == 0) return RTC_OK;
    gather_rows_kernel<<<n, 256, 0, ctx->stream>>>((__nv_bfloat16 *)d_out,
                                                   (const __nv_bfloat16 *)d_in, d_idx, dim);
    LAUNCH_CHECK();
    return RTC_OK;
}

struct rank_ptrs {
    float *p[RTC_MAX_RANKS];
};

static __global__ void sum_ranks_kernel(struct rank_ptrs b, int nr, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = b.p[0][i];
        for (int k = 1; k < nr; k++)
            s += b.p[k][i];
        for (int k = 0; k < nr; k++)
            b.p[k][i] = s;
    }
}

extern "C" int rtc_sum_ranks(struct rtc_ctx *ctx, float *const *bufs, int nranks, size_t count)
{
    ARG_CHECK(nranks >= 1 && nranks <= RTC_MAX_RANKS);
    if (count == 0 || nranks == 1) return RTC_OK;
    struct rank_ptrs b;
    for (int k = 0; k < RTC_MAX_RANKS; k++)
        b.p[k] = k < nranks ? bufs[k] : nullptr;
    sum_ranks_kernel<<<fwd_grid(count, 256), 256, 0, ctx->stream>>>(b, nranks, count);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Sampling ----------------------------------------------------------------------------- */

enum { SAMPLE_THREADS = 1024 };

/* The order-preserving image of a float: a larger float has a larger key; NaN maps to 0 (below
 * every number), so it is never kept. */
static __device__ __forceinline__ uint32_t fkey(float f)
{
    if (isnan(f)) return 0u;
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int32_t *out, const float *logits, const struct rtc_sample_param *params,
                  int vocab)
{
    __shared__ float sh[32];
    __shared__ float seg[SAMPLE_THREADS];
    __shared__ int chosen;
    const float *x = logits + (size_t)blockIdx.x * vocab;
    const struct rtc_sample_param P = params[blockIdx.x];
    const int tid = threadIdx.x;

    /* Greedy, and the max for the softmax: the largest key, lowest id on ties. */
    uint32_t best = 0;
    int besti = 0x7fffffff;
    for (int i = tid; i < vocab; i += blockDim.x) {
        const uint32_t k = fkey(x[i]);
        if (k > best || (k == best && i < besti)) best = k, besti = i;
    }
    for (int off = 16; off > 0; off >>= 1) {
        const uint32_t ob = __shfl_xor_sync(0xffffffffu, best, off);
        const int oi = __shfl_xor_sync(0xffffffffu, besti, off);
        if (ob > best || (ob == best && oi < besti)) best = ob, besti = oi;
    }
    __shared__ uint32_t wb[32];
    __shared__ int wi[32];
    if ((tid & 31) == 0) wb[tid >> 5] = best, wi[tid >> 5] = besti;
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (wb[w] > best || (wb[w] == best && wi[w] < besti)) best = wb[w], besti = wi[w];
        chosen = besti == 0x7fffffff ? 0 : besti;
    }
    __syncthreads();
    if (!(P.temperature > 0.0f)) {
        if (tid == 0) out[blockIdx.x] = chosen;
        return;
    }
    const float mx = x[chosen];
    const float invT = 1.0f / P.temperature;
#define PROB(i) (isnan(x[i]) ? 0.0f : expf((x[i] - mx) * invT))

    /* top-k: the k-th largest key, built bit by bit: the largest K with count(key >= K) >= k. */
    uint32_t kth = 0;
    if (P.top_k > 0 && P.top_k < vocab) {
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = kth | (1u << bit);
            float c = 0.0f;
            for (int i = tid; i < vocab; i += blockDim.x)
                c += fkey(x[i]) >= cand ? 1.0f : 0.0f;
            if (block_sum_all(c, sh) >= (float)P.top_k) kth = cand;
        }
    }
    /* top-p: the largest K (>= kth) whose kept mass reaches top_p of the top-k mass. */
    uint32_t thr = kth;
    if (P.top_p < 1.0f) {
        float zk = 0.0f;
        for (int i = tid; i < vocab; i += blockDim.x)
            if (fkey(x[i]) >= kth) zk += PROB(i);
        const float target = P.top_p * block_sum_all(zk, sh);
        uint32_t res = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = res | (1u << bit);
            const uint32_t lim = cand > kth ? cand : kth;
            float z = 0.0f;
            for (int i = tid; i < vocab; i += blockDim.x)
                if (fkey(x[i]) >= lim) z += PROB(i);
            if (block_sum_all(z, sh) >= target) res = cand;
        }
        if (res > thr) thr = res;
    }
    /* The draw: thread tid owns ids [tid * chunk, (tid + 1) * chunk); prefix sums of the kept
     * mass per chunk, then the chunk holding u * total walks its ids. */
    const int chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int c0 = tid * chunk, c1 = c0 + chunk < vocab ? c0 + chunk : vocab;
    float mine = 0.0f;
    for (int i = c0; i < c1; i++)
        if (fkey(x[i]) >= thr) mine += PROB(i);
    seg[tid] = mine;
    __syncthreads();
    if (tid == 0) {
        float run = 0.0f;
        for (int t = 0; t < SAMPLE_THREADS; t++) {
            const float v = seg[t];
            seg[t] = run;
            run += v;
        }
        sh[0] = run;
    }
    __syncthreads();
    /* seg[t + 1] == seg[t] + mass of t exactly (the same float additions), so the intervals
     * [seg[t], seg[t] + mass) tile [0, total) and at most one thread claims goal; rounding can
     * leave goal at total, which the last kept id takes. */
    __shared__ int lastkept;
    if (tid == 0) chosen = -1, lastkept = -1;
    __syncthreads();
    const float goal = P.u * sh[0];
    const float before = seg[tid];
    int mylast = -1;
    for (int i = c1 - 1; i >= c0 && mine > 0.0f; i--)
        if (fkey(x[i]) >= thr) {
            mylast = i;
            break;
        }
    if (mylast >= 0) atomicMax(&lastkept, mylast);
    if (mine > 0.0f && goal >= before && goal < before + mine) {
        float run = before;
        int pick = mylast;
        for (int i = c0; i < c1; i++) {
            if (fkey(x[i]) < thr) continue;
            run += PROB(i);
            if (run > goal) {
                pick = i;
                break;
            }
        }
        chosen = pick;
    }
    __syncthreads();
    if (tid == 0 && chosen < 0) chosen = lastkept < 0 ? 0 : lastkept;
#undef PROB
    __syncthreads();
    if (tid == 0) out[blockIdx.x] = chosen;
}

extern "C" int rtc_sample(struct rtc_ctx *ctx, int32_t *d_out, const float *d_logits,
                          const struct rtc_sample_param *d_params, int rows, int vocab)
{
    ARG_CHECK(rows >= 0 && vocab > 0);
    if (rows == 0) return RTC_OK;
    sample_kernel<<<rows, SAMPLE_THREADS, 0, ctx->stream>>>(d_out, d_logits, d_params, vocab);
    LAUNCH_CHECK();
    return RTC_OK;
}

/* ---- Bandwidth, graphs -------------------------------------------------------------------- */

extern "C" int rtc_measure_d2d(struct rtc_ctx *ctx, size_t bytes, int reps, double *gbps)
{
    ARG_CHECK(bytes > 0 && reps > 0);
    void *a = nullptr, *b = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    int rc = RTC_OK;
    float best = 0.0f;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        log_error("CUDA: cannot set up a %zu-byte copy for the bandwidth measure", bytes);
        rc = RTC_ENOMEM;
    }
    /* Random-looking data, not zeros (see METHOD.md); then one untimed copy. */
    if (rc == RTC_OK &&
        (cudaMemsetAsync(a, 0x5a, bytes, ctx->stream) != cudaSuccess ||
         cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, ctx->stream) != cudaSuccess))
        rc = RTC_ECUDA;
    for (int r = 0; rc == RTC_OK && r < reps; r++) {
        float ms = 0.0f;
        if (cudaEventRecord(e0, ctx->stream) != cudaSuccess ||
            cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, ctx->stream) != cudaSuccess ||
            cudaEventRecord(e1, ctx->stream) != cudaSuccess ||
            cudaEventSynchronize(e1) != cudaSuccess ||
            cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
            rc = RTC_ECUDA;
        else if (best == 0.0f || ms < best)
            best = ms;
    }
    if (rc == RTC_ECUDA)
        log_error("CUDA: the bandwidth measure failed: %s", cudaGetErrorString(cudaGetLastError()));
    if (e0) CUDA_LOG(cudaEventDestroy(e0));
    if (e1) CUDA_LOG(cudaEventDestroy(e1));
    CUDA_LOG(cudaFree(a));
    CUDA_LOG(cudaFree(b));
    if (rc == RTC_OK) *gbps = 2.0 * (double)bytes / (best / 1e3) / 1e9;
    return rc;
}

extern "C" int rtc_mem_info(struct rtc_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    CUDA_CHECK(cudaSetDevice(ctx->device));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return RTC_OK;
}

struct rtc_graph {
    cudaGraph_t g;
    cudaGraphExec_t exec;
};

extern "C" int rtc_capture_begin(struct rtc_ctx *ctx)
{
    CUDA_CHECK(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal));
    return RTC_OK;
}

extern "C" int rtc_capture_end(struct rtc_ctx *ctx, struct rtc_graph **out)
{
    *out = nullptr;
    struct rtc_graph *g = (struct rtc_graph *)calloc(1, sizeof *g);
    if (!g) return RTC_ENOMEM;
    cudaError_t err = cudaStreamEndCapture(ctx->stream, &g->g);
    if (err == cudaSuccess) err = cudaGraphInstantiate(&g->exec, g->g, 0);
    if (err != cudaSuccess) {
        log_error("CUDA: graph capture failed: %s", cudaGetErrorString(err));
        if (g->g) cudaGraphDestroy(g->g);
        free(g);
        return RTC_ECUDA;
    }
    *out = g;
    return RTC_OK;
}

extern "C" int rtc_graph_launch(struct rtc_ctx *ctx, struct rtc_graph *g)
{
    CUDA_CHECK(cudaGraphLaunch(g->exec, ctx->stream));
    return RTC_OK;
}

extern "C" void rtc_graph_free(struct rtc_graph *g)
{
    if (!g) return;
    CUDA_LOG(cudaGraphExecDestroy(g->exec));
    CUDA_LOG(cudaGraphDestroy(g->g));
    free(g);
}
