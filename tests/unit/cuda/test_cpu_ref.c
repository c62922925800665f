/* test_cpu_ref: checks the C reference of the CUDA primitives on small cases worked out by hand,
 * so that test_cuda_kernels compares the kernels with something known to be right. Needs no GPU. */
#include "check.h"
#include "cpu_ref.h"

#include <math.h>

static void test_bf16(void)
{
    /* Values with at most 8 significant bits survive the round trip exactly. */
    const float exact[] = {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 0x1p127f, 1.0f / 1024, INFINITY};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        CHECK(ref_bf16_to_f32(ref_f32_to_bf16(exact[i])) == exact[i]);
    CHECK_INT_EQ(ref_f32_to_bf16(1.0f), 0x3f80);
    CHECK_INT_EQ(ref_f32_to_bf16(-2.0f), 0xc000);
    /* Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 (odd) -> 1; 1 + 3 * 2^-8 is
     * halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6. */
    CHECK(ref_bf16_to_f32(ref_f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
    CHECK(ref_bf16_to_f32(ref_f32_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64);
    /* Just over halfway rounds up. */
    CHECK(ref_bf16_to_f32(ref_f32_to_bf16(1.0f + 1.0f / 256 + 1.0f / 65536)) == 1.0f + 1.0f / 128);
    /* Past the largest finite BF16 (about 3.39e38) rounds to infinity; NaN stays NaN. */
    CHECK(isinf(ref_bf16_to_f32(ref_f32_to_bf16(3.4e38f))));
    CHECK(isnan(ref_bf16_to_f32(ref_f32_to_bf16(NAN))));
}

static void test_rmsnorm(void)
{
    /* mean(1, 4, 9, 16) = 7.5, so out = x / sqrt(7.5) (eps 0) times the weight. */
    const float x[4] = {1, 2, 3, 4};
    uint16_t w[4];
    const float wf[4] = {1, 1, 2, -0.5f};
    for (int i = 0; i < 4; i++)
        w[i] = ref_f32_to_bf16(wf[i]);
    float out[4];
    ref_rmsnorm(out, x, w, 1, 4, 0.0f);
    const double r = sqrt(7.5);
    CHECK_NEAR(out[0], 1 / r, 1e-6);
    CHECK_NEAR(out[1], 2 / r, 1e-6);
    CHECK_NEAR(out[2], 6 / r, 1e-6);
    CHECK_NEAR(out[3], -2 / r, 1e-6);
    /* eps enters under the root: x = (0, 0) with eps 1 gives 0, x = (3, 4) with eps 0.5:
     * mean 12.5 + 0.5 = 13. Two rows at once, in place. */
    float y[4] = {0, 0, 3, 4};
    ref_rmsnorm(y, y, w, 2, 2, 0.5f);
    CHECK(y[0] == 0 && y[1] == 0);
    CHECK_NEAR(y[2], 3 / sqrt(13.0), 1e-6);
    CHECK_NEAR(y[3], 4 / sqrt(13.0), 1e-6);
}

static void test_rope(void)
{
    /* Position 0 is the identity. */
    float x[2 * 8], x0[2 * 8];
    for (int i = 0; i < 16; i++)
        x[i] = x0[i] = (float)(i + 1) * 0.25f;
    const int32_t p0 = 0;
    ref_rope(x, &p0, 1, 2, 8, 10000.0f);
    for (int i = 0; i < 16; i++)
        CHECK(x[i] == x0[i]);

    /* head_dim 4, theta 10000: pairs (0, 2) and (1, 3), inv_freq = 1 and 10000^-0.5 = 0.01.
     * At position 1, (1, 0) in the first pair turns by 1 radian; the second by 0.01. */
    float y[4] = {1, 2, 0, 0};
    const int32_t p1 = 1;
    ref_rope(y, &p1, 1, 1, 4, 10000.0f);
    CHECK_NEAR(y[0], cos(1.0), 1e-6);
    CHECK_NEAR(y[2], sin(1.0), 1e-6);
    CHECK_NEAR(y[1], 2 * cos(0.01), 1e-6);
    CHECK_NEAR(y[3], 2 * sin(0.01), 1e-6);

    /* A rotation keeps each pair's length, and a second token uses its own position: (0, 1) at
     * position 2 turns to (-sin 2, cos 2). */
    float z[2 * 2] = {3, 4, 0, 1};
    const int32_t pz[2] = {5, 2};
    ref_rope(z, pz, 2, 1, 2, 10000.0f);
    CHECK_NEAR(hypot(z[0], z[1]), 5.0, 1e-5);
    CHECK_NEAR(z[2], -sin(2.0), 1e-6);
    CHECK_NEAR(z[3], cos(2.0), 1e-6);
}

static void test_swiglu(void)
{
    const float gate[3] = {0.0f, 1.0f, -1.0f}, up[3] = {5.0f, 2.0f, 1.0f};
    float out[3];
    ref_swiglu(out, gate, up, 3);
    CHECK(out[0] == 0.0f);                             /* silu(0) = 0 */
    CHECK_NEAR(out[1], 2.0 / (1.0 + exp(-1.0)), 1e-6); /* 1.4621... */
    CHECK_NEAR(out[2], -1.0 / (1.0 + exp(1.0)), 1e-6); /* -0.2689... */
}

static void test_matvec_gemm(void)
{
    /* W = [[1, 2, 3], [-1, 0.5, 4]], x = (1, 1, 2): y = (9, 7.5). */
    const float wf[6] = {1, 2, 3, -1, 0.5f, 4};
    uint16_t w[6];
    for (int i = 0; i < 6; i++)
        w[i] = ref_f32_to_bf16(wf[i]);
    const float x[3] = {1, 1, 2};
    float y[2];
    ref_matvec_bf16(y, w, x, 2, 3);
    CHECK(y[0] == 9.0f && y[1] == 7.5f);

    /* The GEMM takes X rounded to BF16: 1 + 2^-8 becomes 1, so both tokens give (9, 7.5), while
     * the matvec keeps the full float and sees the difference. */
    const float xx[6] = {1, 1, 2, 1.0f + 1.0f / 256, 1, 2};
    float yy[4];
    ref_gemm_bf16(yy, w, xx, 2, 2, 3);
    CHECK(yy[0] == 9.0f && yy[1] == 7.5f && yy[2] == 9.0f && yy[3] == 7.5f);
    ref_matvec_bf16(y, w, xx + 3, 2, 3);
    CHECK(y[0] == 9.0f + 1.0f / 256);
}

static void test_attention(void)
{
    /* One key: softmax over one score is 1, so the output is that key's value, whatever q is. */
    const float q1[4] = {0.3f, -2, 7, 1}, k1[4] = {1, 2, 3, 4}, v1[4] = {-1, 0.5f, 9, 2};
    float out[4];
    ref_attention(out, q1, k1, v1, 1, 0, 1, 1, 4, 0.5f);
    for (int d = 0; d < 4; d++)
        CHECK_NEAR(out[d], v1[d], 1e-7);

    /* Two keys with equal scores average their values; with q.k1 - q.k2 = ln 3 (scale 1) the
     * weights are 3/4 and 1/4. head_dim 2. */
    const float q2[2] = {1, 0};
    const float k2[4] = {0, 5, 0, 7}, v2[4] = {2, 4, 6, 8};
    float o2[2];
    ref_attention(o2, q2, k2, v2, 1, 1, 1, 1, 2, 1.0f);
    CHECK_NEAR(o2[0], 4, 1e-6);
    CHECK_NEAR(o2[1], 6, 1e-6);
    const float k3[4] = {(float)log(3.0), 0, 0, 0};
    ref_attention(o2, q2, k3, v2, 1, 1, 1, 1, 2, 1.0f);
    CHECK_NEAR(o2[0], 0.75 * 2 + 0.25 * 6, 1e-6);
    CHECK_NEAR(o2[1], 0.75 * 4 + 0.25 * 8, 1e-6);

    /* Causality and GQA: 2 query tokens at positions 0 and 1, 4 query heads over 2 KV heads
     * (heads 0, 1 read KV head 0; heads 2, 3 read KV head 1). q = 0 makes the weights uniform, so
     * token 0 sees only key 0 and token 1 averages keys 0 and 1. KV row k, head g holds value
     * 10k + g in both dims. */
    float q[2 * 4 * 2] = {0}, kc[2 * 2 * 2] = {0}, vc[2 * 2 * 2];
    for (int k = 0; k < 2; k++)
        for (int g = 0; g < 2; g++)
            for (int d = 0; d < 2; d++)
                vc[(k * 2 + g) * 2 + d] = (float)(10 * k + g);
    float o[2 * 4 * 2];
    ref_attention(o, q, kc, vc, 2, 0, 4, 2, 2, 1.0f);
    for (int h = 0; h < 4; h++) {
        CHECK_NEAR(o[(0 * 4 + h) * 2], h / 2, 1e-6);
        CHECK_NEAR(o[(1 * 4 + h) * 2 + 1], 5 + h / 2, 1e-6);
    }
}

static void test_argmax(void)
{
    const float x[2 * 5] = {-3, -1, -2, -1, -5, NAN, 2, 7, 7, NAN};
    int32_t out[2];
    ref_argmax(out, x, 2, 5);
    CHECK_INT_EQ(out[0], 1); /* first of the tied -1s */
    CHECK_INT_EQ(out[1], 2); /* NaN ignored, first of the tied 7s */
    const float nan_row[2] = {NAN, NAN}, neg_inf[3] = {-INFINITY, -INFINITY, -1e30f};
    ref_argmax(out, nan_row, 1, 2);
    CHECK_INT_EQ(out[0], 0);
    ref_argmax(out, neg_inf, 1, 3);
    CHECK_INT_EQ(out[0], 2);
}

int main(void)
{
    test_bf16();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_matvec_gemm();
    test_attention();
    test_argmax();
    printf("test_cpu_ref: ok\n");
    return 0;
}
