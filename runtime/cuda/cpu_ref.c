/* cpu_ref: see cpu_ref.h. Straight loops, double accumulators; speed is not a goal here. */
#include "cpu_ref.h"

#include <math.h>
#include <string.h>

float ref_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t ref_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x0040); /* keep the sign, force a quiet NaN */
    /* Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. A carry out of
     * the mantissa bumps the exponent, which is right (and gives inf past the largest finite). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void ref_rmsnorm(float *out, const float *x, const uint16_t *w, int rows, int dim, float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *outr = out + (size_t)r * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++)
            outr[i] = (float)(xr[i] * inv * ref_bf16_to_f32(w[i]));
    }
}

void ref_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim, float theta)
{
    int half = head_dim / 2;
    for (int t = 0; t < n_tok; t++) {
        for (int i = 0; i < half; i++) {
            float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / head_dim));
            float a = (float)pos[t] * inv_freq;
            double c = cos((double)a), s = sin((double)a);
            for (int h = 0; h < n_heads; h++) {
                float *xh = x + ((size_t)t * n_heads + h) * head_dim;
                double x1 = xh[i], x2 = xh[i + half];
                xh[i] = (float)(x1 * c - x2 * s);
                xh[i + half] = (float)(x2 * c + x1 * s);
            }
        }
    }
}

void ref_swiglu(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * up[i]);
    }
}

void ref_matvec_bf16(float *y, const uint16_t *w, const float *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        const uint16_t *wr = w + (size_t)r * cols;
        double acc = 0;
        for (int c = 0; c < cols; c++)
            acc += (double)ref_bf16_to_f32(wr[c]) * x[c];
        y[r] = (float)acc;
    }
}

void ref_gemm_bf16(float *y, const uint16_t *w, const float *x, int n_tok, int rows, int cols)
{
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * cols;
        for (int r = 0; r < rows; r++) {
            const uint16_t *wr = w + (size_t)r * cols;
            double acc = 0;
            for (int c = 0; c < cols; c++)
                acc += (double)ref_bf16_to_f32(wr[c]) * ref_bf16_to_f32(ref_f32_to_bf16(xt[c]));
            y[(size_t)t * rows + r] = (float)acc;
        }
    }
}

void ref_attention(float *out, const float *q, const float *k_cache, const float *v_cache, int n_q,
                   int start_pos, int n_heads, int n_kv_heads, int head_dim, float scale)
{
    int group = n_heads / n_kv_heads;
    size_t kv_stride = (size_t)n_kv_heads * head_dim;
    for (int t = 0; t < n_q; t++) {
        int n_keys = start_pos + t + 1;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
            float *oh = out + ((size_t)t * n_heads + h) * head_dim;
            int kvh = h / group;
            /* Two passes (max, then exp-sum) - the textbook softmax the kernel's online version
             * must agree with. */
            double m = -INFINITY;
            for (int k = 0; k < n_keys; k++) {
                const float *kr = k_cache + k * kv_stride + (size_t)kvh * head_dim;
                double s = 0;
                for (int d = 0; d < head_dim; d++)
                    s += (double)qh[d] * kr[d];
                s *= scale;
                if (s > m) m = s;
            }
            double l = 0, acc[REF_HEAD_DIM_MAX] = {0};
            for (int k = 0; k < n_keys; k++) {
                const float *kr = k_cache + k * kv_stride + (size_t)kvh * head_dim;
                const float *vr = v_cache + k * kv_stride + (size_t)kvh * head_dim;
                double s = 0;
                for (int d = 0; d < head_dim; d++)
                    s += (double)qh[d] * kr[d];
                double p = exp(s * scale - m);
                l += p;
                for (int d = 0; d < head_dim; d++)
                    acc[d] += p * vr[d];
            }
            for (int d = 0; d < head_dim; d++)
                oh[d] = (float)(acc[d] / l);
        }
    }
}

void ref_argmax(int32_t *out, const float *x, int rows, int n)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (isnan(xr[i])) continue;
            if (best < 0 || xr[i] > xr[best]) best = i;
        }
        out[r] = best < 0 ? 0 : best;
    }
}

/* ---- The forward pass's fused primitives ---- */

void ref_add_rmsnorm(float *x, const float *delta, const float *w, uint16_t *out, int rows, int dim,
                     float eps)
{
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) {
            if (delta) xr[i] += delta[(size_t)r * dim + i];
            ss += (double)xr[i] * xr[i];
        }
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++)
            out[(size_t)r * dim + i] = ref_f32_to_bf16((float)(xr[i] * inv * w[i]));
    }
}

/* The paged cache's index of (slot, layer, kv head h, dimension d). */
static size_t kv_index(int slot, int layers, int layer, int kv_heads, int hd, int h, int d)
{
    size_t blk = (size_t)slot / 16, off = (size_t)slot % 16;
    return ((blk * layers + layer) * 16 + off) * (size_t)kv_heads * hd + (size_t)h * hd + d;
}

void ref_qkv_rope_cache(float *q_out, const float *qkv, const float *bias, const float *qnorm,
                        const float *knorm, const float *inv_freq, const int32_t *pos,
                        const int32_t *slot, uint16_t *kc, uint16_t *vc, int heads, int kv_heads,
                        int head_dim, int layers, int layer, float eps, int n)
{
    int nv = heads + 2 * kv_heads, hd = head_dim, half = hd / 2;
    double v[REF_HEAD_DIM_MAX], o[REF_HEAD_DIM_MAX];
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nv; h++) {
            const float *src = qkv + ((size_t)t * nv + h) * hd;
            for (int d = 0; d < hd; d++)
                v[d] = (double)src[d] + (bias ? bias[(size_t)h * hd + d] : 0.0);
            int kind = h < heads ? 0 : h < heads + kv_heads ? 1 : 2;
            const float *nw = kind == 0 ? qnorm : kind == 1 ? knorm : NULL;
            if (nw) {
                double ss = 0;
                for (int d = 0; d < hd; d++)
                    ss += v[d] * v[d];
                double inv = 1.0 / sqrt(ss / hd + eps);
                for (int d = 0; d < hd; d++)
                    v[d] = v[d] * inv * nw[d];
            }
            memcpy(o, v, sizeof(double) * (size_t)hd);
            if (kind < 2)
                for (int i = 0; i < half; i++) {
                    float a = (float)pos[t] * inv_freq[i];
                    double c = cos((double)a), s = sin((double)a);
                    o[i] = v[i] * c - v[i + half] * s;
                    o[i + half] = v[i + half] * c + v[i] * s;
                }
            for (int d = 0; d < hd; d++) {
                if (kind == 0)
                    q_out[((size_t)t * heads + h) * hd + d] = (float)o[d];
                else if (kind == 1)
                    kc[kv_index(slot[t], layers, layer, kv_heads, hd, h - heads, d)] =
                        ref_f32_to_bf16((float)o[d]);
                else
                    vc[kv_index(slot[t], layers, layer, kv_heads, hd, h - heads - kv_heads, d)] =
                        ref_f32_to_bf16((float)o[d]);
            }
        }
}

void ref_attention_paged(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                         const int32_t *pos, const int32_t *row_seq, const int32_t *seq_off,
                         const int32_t *blocks, int n, int heads, int kv_heads, int head_dim,
                         int layers, int layer, int window, float scale)
{
    int hd = head_dim, group = heads / kv_heads;
    for (int t = 0; t < n; t++) {
        const int32_t *bt = blocks + seq_off[row_seq[t]];
        int lo = window > 0 && pos[t] - window + 1 > 0 ? pos[t] - window + 1 : 0;
        for (int h = 0; h < heads; h++) {
            const float *qh = q + ((size_t)t * heads + h) * hd;
            int kvh = h / group;
            double m = -INFINITY, l = 0, acc[REF_HEAD_DIM_MAX] = {0};
            for (int pass = 0; pass < 2; pass++)
                for (int k = lo; k <= pos[t]; k++) {
                    int sl = bt[k / 16] * 16 + k % 16;
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += (double)qh[d] *
                             ref_bf16_to_f32(kc[kv_index(sl, layers, layer, kv_heads, hd, kvh, d)]);
                    s *= scale;
                    if (pass == 0) {
                        if (s > m) m = s;
                        continue;
                    }
                    double p = exp(s - m);
                    l += p;
                    for (int d = 0; d < hd; d++)
                        acc[d] += p * ref_bf16_to_f32(
                                          vc[kv_index(sl, layers, layer, kv_heads, hd, kvh, d)]);
                }
            for (int d = 0; d < hd; d++)
                out[((size_t)t * heads + h) * hd + d] = (float)(acc[d] / l);
        }
    }
}

void ref_silu_mul(uint16_t *h, const float *gu, int n, int f)
{
    for (int r = 0; r < n; r++)
        for (int i = 0; i < f; i++) {
            double g = gu[(size_t)r * 2 * f + i], u = gu[(size_t)r * 2 * f + f + i];
            h[(size_t)r * f + i] = ref_f32_to_bf16((float)(g / (1.0 + exp(-g)) * u));
        }
}

void ref_sample(int32_t *out, const float *logits, const struct ref_sample_param *p, int rows,
                int vocab)
{
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * vocab;
        int32_t best;
        ref_argmax(&best, x, 1, vocab);
        if (!(p[r].temperature > 0)) {
            out[r] = best;
            continue;
        }
        double mx = x[best];
        /* The k-th largest logit (ties included), by counting: the smallest value v of the row
         * with count(x >= v) >= k... found as the largest v with that count. */
        double kth = -INFINITY;
        if (p[r].top_k > 0 && p[r].top_k < vocab) {
            for (int i = 0; i < vocab; i++) {
                if (isnan(x[i]) || x[i] <= kth) continue;
                int c = 0;
                for (int j = 0; j < vocab; j++)
                    c += !isnan(x[j]) && x[j] >= x[i];
                if (c >= p[r].top_k) kth = x[i];
            }
        }
        double zk = 0;
        for (int i = 0; i < vocab; i++)
            if (!isnan(x[i]) && x[i] >= kth) zk += exp((x[i] - mx) / p[r].temperature);
        /* top-p: the largest logit v >= kth whose mass of x >= v reaches top_p * zk. */
        double thr = kth;
        if (p[r].top_p < 1) {
            double target = p[r].top_p * zk, cut = kth;
            for (int i = 0; i < vocab; i++) {
                if (isnan(x[i]) || x[i] < kth || x[i] <= cut) continue;
                double z = 0;
                for (int j = 0; j < vocab; j++)
                    if (!isnan(x[j]) && x[j] >= x[i]) z += exp((x[j] - mx) / p[r].temperature);
                if (z >= target) cut = x[i];
            }
            thr = cut;
        }
        double zf = 0;
        for (int i = 0; i < vocab; i++)
            if (!isnan(x[i]) && x[i] >= thr) zf += exp((x[i] - mx) / p[r].temperature);
        double goal = p[r].u * zf, run = 0;
        int pick = -1;
        for (int i = 0; i < vocab && pick < 0; i++) {
            if (isnan(x[i]) || x[i] < thr) continue;
            run += exp((x[i] - mx) / p[r].temperature);
            if (run > goal) pick = i;
        }
        for (int i = vocab - 1; i >= 0 && pick < 0; i--)
            if (!isnan(x[i]) && x[i] >= thr) pick = i;
        out[r] = pick < 0 ? best : pick;
    }
}
