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
