/* test_cuda_kernels: every kernel of cuda_backend.h against its C reference in cpu_ref.h, on random
 * data, over several shapes including ones that are not multiples of any block or vector size.
 *
 * Method: inputs are drawn fresh each run (the seed is printed; ORP_TEST_SEED=N repeats a run);
 * each output buffer is poisoned with 0xff bytes (a NaN) before the kernel runs, so an element the
 * kernel never wrote fails; NaN never passes a comparison. Each check states its tolerance next to
 * the shape list, with the reason. Exits 77 (ctest: skipped) when there is no CUDA device. */
#include "check.h"
#include "cpu_ref.h"
#include "cuda_backend.h"
#include "rtc_plan.h"

#include <math.h>
#include <stdint.h>
#include <time.h>

/* float32 unit roundoff. */
#define U32 (1.0 / 16777216.0)

static struct rtc_ctx *ctx;
static uint64_t rng;

static uint64_t next_u64(void)
{
    /* xorshift64*: plenty for test data. */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [-scale, scale). */
static float frand(float scale)
{
    return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale;
}

static float *rand_f32(size_t n, float scale)
{
    float *x = malloc(n * sizeof *x);
    CHECK(x);
    for (size_t i = 0; i < n; i++)
        x[i] = frand(scale);
    return x;
}

static uint16_t *rand_bf16(size_t n, float scale)
{
    uint16_t *x = malloc(n * sizeof *x);
    CHECK(x);
    for (size_t i = 0; i < n; i++)
        x[i] = ref_f32_to_bf16(frand(scale));
    return x;
}

#define RTC(call)                                                                                  \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != RTC_OK) {                                                                       \
            fprintf(stderr, "%s:%d: %s -> %d (%s)\n", __FILE__, __LINE__, #call, rc_,              \
                    rtc_strerror(rc_));                                                            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* A new device copy of a host array. */
static void *dev_copy(const void *src, size_t bytes)
{
    void *d;
    RTC(rtc_malloc(&d, bytes));
    RTC(rtc_upload(ctx, d, src, bytes));
    return d;
}

/* New device memory filled with 0xff bytes: NaN as float, -1 as int32. */
static void *dev_poisoned(size_t bytes)
{
    void *d;
    RTC(rtc_malloc(&d, bytes));
    RTC(rtc_memset(ctx, d, 0xff, bytes));
    return d;
}

/* Downloads n floats from d_got and checks |got - want| <= bound[i] for each (NaN fails). */
static void compare(const char *what, const float *d_got, const float *want, const double *bound,
                    size_t n)
{
    float *got = malloc(n * sizeof *got);
    CHECK(got);
    RTC(rtc_sync(ctx));
    RTC(rtc_download(ctx, got, d_got, n * sizeof *got));
    double worst = 0; /* largest error as a fraction of its bound */
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        if (!(err <= bound[i])) {
            fprintf(stderr, "%s: element %zu: got %.9g want %.9g (error %.3g, bound %.3g)\n", what,
                    i, got[i], want[i], err, bound[i]);
            exit(1);
        }
        if (bound[i] > 0 && err / bound[i] > worst) worst = err / bound[i];
    }
    printf("  %-44s ok  (worst error %.2f of bound)\n", what, worst);
    free(got);
}

static double *bounds_new(size_t n)
{
    double *b = malloc(n * sizeof *b);
    CHECK(b);
    return b;
}

/* ---- RMSNorm -------------------------------------------------------------------------------
 * Tolerance 1e-5 relative + 1e-6 absolute: float32 sum of squares over at most dim/256 + 13
 * sequential steps, a sqrt and two products: a few 1e-7 relative. */
static void test_rmsnorm(void)
{
    const int shapes[][2] = {{1, 64}, {3, 4096}, {5, 1000}, {2, 33}, {4, 8192}, {1, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], dim = shapes[s][1];
        size_t n = (size_t)rows * dim;
        float *x = rand_f32(n, 3.0f);
        uint16_t *w = rand_bf16((size_t)dim, 2.0f);
        float *want = malloc(n * sizeof *want);
        double *b = bounds_new(n);
        ref_rmsnorm(want, x, w, rows, dim, 1e-5f);
        for (size_t i = 0; i < n; i++)
            b[i] = 1e-5 * fabs(want[i]) + 1e-6;
        float *d_x = dev_copy(x, n * sizeof *x), *d_out = dev_poisoned(n * sizeof(float));
        uint16_t *d_w = dev_copy(w, (size_t)dim * sizeof *w);
        RTC(rtc_rmsnorm(ctx, d_out, d_x, d_w, rows, dim, 1e-5f));
        char what[64];
        snprintf(what, sizeof what, "rmsnorm rows=%d dim=%d", rows, dim);
        compare(what, d_out, want, b, n);
        /* In place (out == x) must give the same. */
        RTC(rtc_rmsnorm(ctx, d_x, d_x, d_w, rows, dim, 1e-5f));
        compare("  ... in place", d_x, want, b, n);
        rtc_free(d_x), rtc_free(d_out), rtc_free(d_w);
        free(x), free(w), free(want), free(b);
    }
}

/* ---- RoPE ----------------------------------------------------------------------------------
 * Both sides use the same float inv_freq (computed in double, rounded) and the same float angle
 * pos * inv_freq, so only cos/sin (sincosf: 2 ulp, full range) and the rotation's float arithmetic
 * differ, a few 1e-7 (|x1| + |x2|): bound 1e-6 (|x1| + |x2|) + 1e-7 per output, positions up to
 * 131072. A wrong frequency or position shows as an error of order |x|. */
static void test_rope(void)
{
    const int shapes[][3] = {{1, 32, 128}, {5, 8, 64}, {3, 3, 96}, {2, 7, 256}, {17, 4, 2}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n_tok = shapes[s][0], n_heads = shapes[s][1], hd = shapes[s][2], half = hd / 2;
        size_t n = (size_t)n_tok * n_heads * hd;
        float *x = rand_f32(n, 2.0f), *want = malloc(n * sizeof *want);
        int32_t *pos = malloc((size_t)n_tok * sizeof *pos);
        for (int t = 0; t < n_tok; t++)
            pos[t] = t == 0 ? 0 : (int32_t)(next_u64() % 131073);
        memcpy(want, x, n * sizeof *x);
        ref_rope(want, pos, n_tok, n_heads, hd, 500000.0f);
        double *b = bounds_new(n);
        for (size_t row = 0; row < n / hd; row++)
            for (int i = 0; i < half; i++) {
                size_t a = row * hd + i;
                double m = 1e-6 * (fabs(x[a]) + fabs(x[a + half])) + 1e-7;
                b[a] = b[a + half] = m;
            }
        float *d_x = dev_copy(x, n * sizeof *x);
        int32_t *d_pos = dev_copy(pos, (size_t)n_tok * sizeof *pos);
        RTC(rtc_rope(ctx, d_x, d_pos, n_tok, n_heads, hd, 500000.0f));
        char what[64];
        snprintf(what, sizeof what, "rope tok=%d heads=%d head_dim=%d", n_tok, n_heads, hd);
        compare(what, d_x, want, b, n);
        rtc_free(d_x), rtc_free(d_pos);
        free(x), free(want), free(pos), free(b);
    }
}

/* ---- SwiGLU --------------------------------------------------------------------------------
 * expf (2 ulp), an add, an IEEE division and a product, about 5 ulp in all: bound 2e-6 relative +
 * 1e-7 absolute. Gates up to 20 in
 * size reach the saturated ends of the sigmoid. */
static void test_swiglu(void)
{
    const size_t sizes[] = {1, 1000, 14336 * 3 + 7};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *g = rand_f32(n, 20.0f), *u = rand_f32(n, 3.0f), *want = malloc(n * sizeof *want);
        double *b = bounds_new(n);
        ref_swiglu(want, g, u, n);
        for (size_t i = 0; i < n; i++)
            b[i] = 2e-6 * fabs(want[i]) + 1e-7;
        float *d_g = dev_copy(g, n * 4), *d_u = dev_copy(u, n * 4), *d_out = dev_poisoned(n * 4);
        RTC(rtc_swiglu(ctx, d_out, d_g, d_u, n));
        char what[64];
        snprintf(what, sizeof what, "swiglu n=%zu", n);
        compare(what, d_out, want, b, n);
        rtc_free(d_g), rtc_free(d_u), rtc_free(d_out);
        free(g), free(u), free(want), free(b);
    }
}

/* ---- BF16 conversion: exact (bit for bit; any NaN for a NaN). ----------------------------- */
static void test_f32_to_bf16(void)
{
    size_t n = 100003;
    float *x = rand_f32(n, 1000.0f);
    x[0] = NAN, x[1] = INFINITY, x[2] = -0.0f, x[3] = 3.4e38f, x[4] = 1.0f + 1.0f / 256,
    x[5] = 1.0f + 3.0f / 256, x[6] = 1e-40f; /* a subnormal */
    float *d_x = dev_copy(x, n * 4);
    uint16_t *d_out = dev_poisoned(n * 2), *got = malloc(n * 2);
    RTC(rtc_f32_to_bf16(ctx, d_out, d_x, n));
    RTC(rtc_sync(ctx));
    RTC(rtc_download(ctx, got, d_out, n * 2));
    for (size_t i = 0; i < n; i++) {
        uint16_t want = ref_f32_to_bf16(x[i]);
        if (isnan(x[i]))
            CHECK(isnan(ref_bf16_to_f32(got[i])));
        else if (got[i] != want) {
            fprintf(stderr, "f32_to_bf16: %.9g -> 0x%04x, want 0x%04x\n", x[i], got[i], want);
            exit(1);
        }
    }
    printf("  %-44s ok  (bit exact)\n", "f32_to_bf16 n=100003");
    rtc_free(d_x), rtc_free(d_out);
    free(x), free(got);
}

/* ---- Matvec and GEMM -----------------------------------------------------------------------
 * The products are formed in float32 (BF16 x BF16 products exactly); only the sums round. The
 * bound is relative to S = sum_k |w_k x_k| for that output: matvec max(1e-5, (cols/32 + 6) 2^-24) S
 * (each lane adds cols/32 terms in order, then 5 shuffle steps: the worst case for that order,
 * 8e-6 at cols 4096; typical errors are far below), GEMM 3e-5 S (cuBLAS picks the order and may
 * split K; tensor-core accumulation is float32 but is not guaranteed to round like a scalar add).
 * One missing or doubled term costs about S / cols = 2.4e-4 S at cols 4096, well outside both. */
static void matvec_case(int rows, int cols, int misalign)
{
    size_t nw = (size_t)rows * cols;
    uint16_t *w = rand_bf16(nw, 0.5f);
    float *x = rand_f32((size_t)cols + 1, 2.0f), *want = malloc((size_t)rows * 4);
    double *b = bounds_new((size_t)rows);
    ref_matvec_bf16(want, w, x + misalign, rows, cols);
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += fabs(ref_bf16_to_f32(w[(size_t)r * cols + c]) * x[misalign + c]);
        double tol = (cols / 32 + 6) * U32;
        b[r] = (tol > 1e-5 ? tol : 1e-5) * s + 1e-7;
    }
    uint16_t *d_w = dev_copy(w, nw * 2);
    float *d_x = dev_copy(x, ((size_t)cols + 1) * 4), *d_y = dev_poisoned((size_t)rows * 4);
    RTC(rtc_matvec_bf16(ctx, d_y, d_w, d_x + misalign, rows, cols));
    char what[64];
    snprintf(what, sizeof what, "matvec_bf16 rows=%d cols=%d%s (%s)", rows, cols,
             misalign ? " x+1" : "", cols % 8 == 0 && !misalign ? "16B" : "scalar");
    compare(what, d_y, want, b, (size_t)rows);
    rtc_free(d_w), rtc_free(d_x), rtc_free(d_y);
    free(w), free(x), free(want), free(b);
}

static void test_matvec(void)
{
    const int shapes[][2] = {{1, 8},  {7, 1000},   {4096, 4096}, {4099, 2048}, {33, 4104},
                             {5, 13}, {100, 1001}, {3, 14336},   {128256, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        matvec_case(shapes[s][0], shapes[s][1], 0);
    matvec_case(64, 64, 1); /* x not 16-byte aligned: must take the scalar path */
}

static void test_gemm(void)
{
    const int shapes[][3] = {{1, 64, 64}, {7, 100, 72},     {33, 512, 256}, {5, 13, 24},
                             {3, 17, 13}, {64, 1024, 4096}, {2, 4096, 8},   {129, 96, 1000}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n_tok = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
        size_t nw = (size_t)rows * cols, nx = (size_t)n_tok * cols, ny = (size_t)n_tok * rows;
        uint16_t *w = rand_bf16(nw, 0.5f);
        float *x = rand_f32(nx, 2.0f), *want = malloc(ny * 4);
        double *b = bounds_new(ny);
        ref_gemm_bf16(want, w, x, n_tok, rows, cols);
        for (int t = 0; t < n_tok; t++)
            for (int r = 0; r < rows; r++) {
                double sum = 0;
                for (int c = 0; c < cols; c++)
                    sum += fabs(ref_bf16_to_f32(w[(size_t)r * cols + c]) *
                                ref_bf16_to_f32(ref_f32_to_bf16(x[(size_t)t * cols + c])));
                b[(size_t)t * rows + r] = 3e-5 * sum + 1e-7;
            }
        uint16_t *d_w = dev_copy(w, nw * 2);
        float *d_x = dev_copy(x, nx * 4), *d_y = dev_poisoned(ny * 4);
        RTC(rtc_gemm_bf16(ctx, d_y, d_w, d_x, n_tok, rows, cols));
        char what[64];
        snprintf(what, sizeof what, "gemm_bf16 tok=%d rows=%d cols=%d", n_tok, rows, cols);
        compare(what, d_y, want, b, ny);
        rtc_free(d_w), rtc_free(d_x), rtc_free(d_y);
        free(w), free(x), free(want), free(b);
    }
}

/* ---- Attention -----------------------------------------------------------------------------
 * The output is a convex combination of values, |v| <= 1 here, so bounds are absolute. Two parts:
 * the scores are float32 dot products, and exp turns their absolute error into the same relative
 * error on the weights: 2e-6 (1 + max |score|), where max |score| <= scale * head_dim * q_max; and
 * each warp sums its n_keys / 4 weighted values in order, then 4 more in the merge: the worst case
 * (n_keys / 4 + 8) 2^-24. Dropping or doubling one key of n moves the output by about 1/n, which
 * stays outside the bound (2.4e-4 against 8e-5 at 4096 keys). The "peaked" cases scale q up so one
 * key dominates and the online rescaling (exp(m_old - m_new)) does real work. The cache has 3 rows
 * past the last key a query may see, filled with 1e30: reading past the causal limit would swamp
 * the output. */
static void attention_case(int n_q, int start_pos, int n_heads, int n_kv, int hd, float q_scale)
{
    int cache_rows = start_pos + n_q + 3;
    size_t nq = (size_t)n_q * n_heads * hd, nkv = (size_t)cache_rows * n_kv * hd;
    float *q = rand_f32(nq, q_scale), *k = rand_f32(nkv, 1.0f), *v = rand_f32(nkv, 1.0f);
    for (size_t i = (size_t)(start_pos + n_q) * n_kv * hd; i < nkv; i++)
        k[i] = v[i] = 1e30f;
    float scale = 1.0f / sqrtf((float)hd);
    float *want = malloc(nq * 4);
    ref_attention(want, q, k, v, n_q, start_pos, n_heads, n_kv, hd, scale);
    double smax = scale * hd * q_scale;
    double tol = 2e-6 * (1 + smax) + ((start_pos + n_q) / 4 + 8) * U32;
    double *b = bounds_new(nq);
    for (size_t i = 0; i < nq; i++)
        b[i] = tol;
    float *d_q = dev_copy(q, nq * 4), *d_k = dev_copy(k, nkv * 4), *d_v = dev_copy(v, nkv * 4);
    float *d_out = dev_poisoned(nq * 4);
    RTC(rtc_attention(ctx, d_out, d_q, d_k, d_v, n_q, start_pos, n_heads, n_kv, hd, scale));
    char what[80];
    snprintf(what, sizeof what, "attention q=%d pos=%d heads=%d/%d hd=%d%s", n_q, start_pos,
             n_heads, n_kv, hd, q_scale > 1 ? " peaked" : "");
    compare(what, d_out, want, b, nq);
    rtc_free(d_q), rtc_free(d_k), rtc_free(d_v), rtc_free(d_out);
    free(q), free(k), free(v), free(want), free(b);
}

static void test_attention(void)
{
    attention_case(1, 0, 4, 4, 64, 1.0f);   /* one key: returns its value */
    attention_case(1, 2, 8, 2, 64, 1.0f);   /* 3 keys: fewer keys than warps */
    attention_case(1, 6, 32, 8, 128, 1.0f); /* Llama 3 8B head layout */
    attention_case(1, 1000, 32, 8, 128, 1.0f);
    attention_case(1, 4095, 8, 1, 64, 1.0f);  /* multi-query */
    attention_case(1, 300, 2, 2, 256, 1.0f);  /* largest head_dim */
    attention_case(1, 77, 6, 3, 96, 1.0f);    /* head_dim not a power of two */
    attention_case(5, 10, 4, 2, 96, 1.0f);    /* several queries: causal prefill */
    attention_case(1, 500, 4, 2, 128, 30.0f); /* peaked softmax */
    attention_case(3, 40, 4, 4, 32, 30.0f);
}

/* ---- Argmax: exact. Ties and NaNs planted. -------------------------------------------------- */
static void test_argmax(void)
{
    const int shapes[][2] = {{1, 128256}, {3, 1000}, {2, 1}, {4, 32000}, {5, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], n = shapes[s][1];
        size_t total = (size_t)rows * n;
        float *x = rand_f32(total, 10.0f);
        for (int r = 0; r < rows && n > 2; r++) {
            float *xr = x + (size_t)r * n;
            int a = (int)(next_u64() % (uint64_t)n), c = (int)(next_u64() % (uint64_t)n);
            if (r % 2 == 0) xr[a] = xr[c] = 50.0f; /* a tie for the max: lowest index wins */
            if (r % 3 == 1) xr[(int)(next_u64() % (uint64_t)n)] = NAN;
        }
        int32_t *want = malloc((size_t)rows * 4), *got = malloc((size_t)rows * 4);
        ref_argmax(want, x, rows, n);
        float *d_x = dev_copy(x, total * 4);
        int32_t *d_out = dev_poisoned((size_t)rows * 4);
        RTC(rtc_argmax(ctx, d_out, d_x, rows, n));
        RTC(rtc_sync(ctx));
        RTC(rtc_download(ctx, got, d_out, (size_t)rows * 4));
        for (int r = 0; r < rows; r++)
            CHECK_INT_EQ(got[r], want[r]);
        char what[64];
        snprintf(what, sizeof what, "argmax rows=%d n=%d", rows, n);
        printf("  %-44s ok  (exact)\n", what);
        rtc_free(d_x), rtc_free(d_out);
        free(x), free(want), free(got);
    }
}

/* ---- Argument checks return errors, never crash. ------------------------------------------- */
static void test_bad_args(void)
{
    CHECK_INT_EQ(rtc_attention(ctx, NULL, NULL, NULL, NULL, 1, 0, 6, 4, 64, 1.0f), RTC_EINVAL);
    CHECK_INT_EQ(rtc_attention(ctx, NULL, NULL, NULL, NULL, 1, 0, 4, 4, 72, 1.0f), RTC_EINVAL);
    CHECK_INT_EQ(rtc_rope(ctx, NULL, NULL, 1, 1, 7, 10000.0f), RTC_EINVAL);
    CHECK_INT_EQ(rtc_matvec_bf16(ctx, NULL, NULL, NULL, 1, 0), RTC_EINVAL);
    struct rtc_ctx *none;
    CHECK_INT_EQ(rtc_ctx_new(rtc_device_count(), &none), RTC_ENODEV);
    CHECK(none == NULL);
    printf("  %-44s ok\n", "bad arguments rejected");
}

/* ---- The forward pass's fused primitives ---------------------------------------------------
 * Outputs rounded to BF16 on both sides may differ by one BF16 step (2^-8 relative) where the
 * float and double values straddle a rounding boundary: bound 2^-7 relative plus a small
 * absolute term. F32 outputs: float32 rounding over the reduction length. */
#define BF16_REL (1.0 / 128)

static float *bf16_to_f32_host(const uint16_t *d, size_t n)
{
    uint16_t *h = malloc(n * sizeof *h);
    float *f = malloc(n * sizeof *f);
    CHECK(h && f);
    RTC(rtc_sync(ctx));
    RTC(rtc_download(ctx, h, d, n * sizeof *h));
    for (size_t i = 0; i < n; i++)
        f[i] = ref_bf16_to_f32(h[i]);
    free(h);
    return f;
}

/* Compares a device BF16 array with a host BF16 reference, both widened. */
static void compare_bf16(const char *what, const uint16_t *d_got, const uint16_t *want, size_t n,
                         double abs_tol)
{
    float *got = bf16_to_f32_host(d_got, n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double w = ref_bf16_to_f32(want[i]), b = BF16_REL * fabs(w) + abs_tol;
        double e = fabs(got[i] - w);
        if (!(e <= b)) {
            fprintf(stderr, "%s: element %zu: got %.7g want %.7g\n", what, i, got[i], w);
            exit(1);
        }
        if (e / b > worst) worst = e / b;
    }
    printf("  %-44s ok  (worst error %.2f of bound)\n", what, worst);
    free(got);
}

static void test_add_rmsnorm(void)
{
    const int shapes[][2] = {{1, 4096}, {7, 1000}, {3, 33}};
    for (size_t s = 0; s < 3; s++) {
        int rows = shapes[s][0], dim = shapes[s][1];
        size_t n = (size_t)rows * dim;
        float *x = rand_f32(n, 2.0f), *dl = rand_f32(n, 1.0f), *w = rand_f32((size_t)dim, 1.5f);
        float *d_x = dev_copy(x, n * 4), *d_dl = dev_copy(dl, n * 4), *d_w = dev_copy(w, dim * 4);
        uint16_t *d_out = dev_poisoned(n * 2), *want = malloc(n * 2);
        CHECK(want);
        RTC(rtc_add_rmsnorm(ctx, d_x, d_dl, d_w, d_out, rows, dim, 1e-5f));
        ref_add_rmsnorm(x, dl, w, want, rows, dim, 1e-5f);
        char what[64];
        snprintf(what, sizeof what, "add_rmsnorm %dx%d (out)", rows, dim);
        compare_bf16(what, d_out, want, n, 1e-6);
        double *b = bounds_new(n);
        for (size_t i = 0; i < n; i++)
            b[i] = 1e-6 * fabs(x[i]) + 1e-7;
        snprintf(what, sizeof what, "add_rmsnorm %dx%d (residual)", rows, dim);
        compare(what, d_x, x, b, n);
        free(b), free(x), free(dl), free(w), free(want);
        rtc_free(d_x), rtc_free(d_dl), rtc_free(d_w), rtc_free(d_out);
    }
}

static void test_qkv_rope_cache(void)
{
    /* (heads, kv, hd, bias, qk norm): GQA at 128 (Llama), bias (Qwen2), norm (Qwen3), hd 16. */
    const int cases[][5] = {
        {8, 2, 128, 0, 0}, {4, 2, 64, 1, 0}, {4, 4, 96, 0, 1}, {4, 2, 16, 1, 1}};
    for (size_t k = 0; k < 4; k++) {
        int heads = cases[k][0], kvh = cases[k][1], hd = cases[k][2], n = 5, layers = 3, layer = 1;
        int nv = heads + 2 * kvh, nblocks = 4;
        size_t w = (size_t)nv * hd, cache = (size_t)nblocks * layers * 16 * kvh * hd;
        float *qkv = rand_f32((size_t)n * w, 2.0f), *bias = cases[k][3] ? rand_f32(w, 0.3f) : NULL;
        float *qn = cases[k][4] ? rand_f32((size_t)hd, 1.5f) : NULL;
        float *kn = cases[k][4] ? rand_f32((size_t)hd, 1.5f) : NULL;
        float *invf = malloc((size_t)hd / 2 * 4), *q = malloc((size_t)n * heads * hd * 4);
        uint16_t *kc = calloc(cache, 2), *vc = calloc(cache, 2);
        CHECK(invf && q && kc && vc);
        for (int i = 0; i < hd / 2; i++)
            invf[i] = (float)pow(500000.0, -2.0 * i / hd);
        int32_t pos[5] = {0, 1, 17, 4000, 70000}, slot[5] = {0, 1, 33, 50, 63};
        float *d_qkv = dev_copy(qkv, (size_t)n * w * 4), *d_b = bias ? dev_copy(bias, w * 4) : NULL;
        float *d_qn = qn ? dev_copy(qn, hd * 4) : NULL, *d_kn = kn ? dev_copy(kn, hd * 4) : NULL;
        float *d_inv = dev_copy(invf, hd / 2 * 4), *d_q = dev_poisoned((size_t)n * heads * hd * 4);
        int32_t *d_pos = dev_copy(pos, sizeof pos), *d_slot = dev_copy(slot, sizeof slot);
        uint16_t *d_kc = dev_copy(kc, cache * 2), *d_vc = dev_copy(vc, cache * 2);
        struct rtc_qkv_shape sh = {heads, kvh, hd, layers, layer, 1e-6f};
        RTC(rtc_qkv_rope_cache(ctx, d_q, d_qkv, d_b, d_qn, d_kn, d_inv, d_pos, d_slot, d_kc, d_vc,
                               &sh, n));
        ref_qkv_rope_cache(q, qkv, bias, qn, kn, invf, pos, slot, kc, vc, heads, kvh, hd, layers,
                           layer, 1e-6f, n);
        /* Angles up to 70000 rad in float: sincosf of the same float angle on both sides; the
         * rotation itself is a few float roundings of values of size ~ 2 (x 1.5 with norms). */
        size_t nq = (size_t)n * heads * hd;
        double *b = bounds_new(nq);
        for (size_t i = 0; i < nq; i++)
            b[i] = 2e-5 * (1 + fabs(q[i]));
        char what[80];
        snprintf(what, sizeof what, "qkv_rope_cache q hd %d%s%s", hd, bias ? " bias" : "",
                 qn ? " qknorm" : "");
        compare(what, d_q, q, b, nq);
        snprintf(what, sizeof what, "qkv_rope_cache k/v cache hd %d", hd);
        compare_bf16(what, d_kc, kc, cache, 1e-5);
        compare_bf16(what, d_vc, vc, cache, 1e-5);
        free(b), free(qkv), free(bias), free(qn), free(kn), free(invf), free(q), free(kc), free(vc);
        rtc_free(d_qkv), rtc_free(d_b), rtc_free(d_qn), rtc_free(d_kn), rtc_free(d_inv);
        rtc_free(d_q), rtc_free(d_pos), rtc_free(d_slot), rtc_free(d_kc), rtc_free(d_vc);
    }
}

/* Paged attention through the backend's own plan (rtc_plan_step) against the direct reference:
 * a long decode row (split over the sequence), a prompt run of 7 rows, a second decode row;
 * GQA 4:1 and 2:1; head sizes 128, 64, 16; Mistral's window. */
static void test_attention_paged(void)
{
    const int cases[][4] = {{8, 2, 128, 0}, {4, 2, 64, 0}, {4, 2, 16, 0}, {8, 2, 64, 50}};
    for (size_t k = 0; k < 4; k++) {
        int heads = cases[k][0], kvh = cases[k][1], hd = cases[k][2], window = cases[k][3];
        int layers = 2, layer = 1, nblocks = 40, n = 9;
        size_t cache = (size_t)nblocks * layers * 16 * kvh * hd;
        uint16_t *kc = rand_bf16(cache, 2.0f), *vc = rand_bf16(cache, 1.0f);
        /* Blocks handed out in a shuffled order, as a pool does. */
        int ba[25], bb[2], bc[1];
        for (int i = 0; i < 25; i++)
            ba[i] = (i * 7) % 25 + 10;
        bb[0] = 3, bb[1] = 1, bc[0] = 6;
        char A, B, C;
        struct model_dev_row rows[9];
        rows[0] = (struct model_dev_row){1, 390, ba, 25, &A, NULL, NULL, NULL};
        for (int i = 0; i < 7; i++)
            rows[1 + i] = (struct model_dev_row){1, 10 + i, bb, 2, &B, NULL, NULL, NULL};
        rows[8] = (struct model_dev_row){1, 5, bc, 1, &C, NULL, NULL, NULL};
        int32_t buf[8192];
        struct rtc_step st;
        size_t cap = rtc_plan_step_words(n, nblocks, heads / kvh);
        CHECK(cap <= sizeof buf / sizeof buf[0]);
        CHECK(rtc_plan_step(rows, n, heads / kvh, kvh, 264, 2048, buf, cap, &st) == 0);
        CHECK(st.nsplit > 1); /* the long row is split */
        size_t nq = (size_t)n * heads * hd;
        float *q = rand_f32(nq, 1.0f), *want = malloc(nq * 4);
        CHECK(want);
        float scale = 1.0f / sqrtf((float)hd);
        ref_attention_paged(want, q, kc, vc, buf + st.off_pos, buf + st.off_row_seq,
                            buf + st.off_seq_off, buf + st.off_blocks, n, heads, kvh, hd, layers,
                            layer, window, scale);
        int32_t *d_step = dev_copy(buf, st.words * 4);
        float *d_q = dev_copy(q, nq * 4),
              *d_part = dev_poisoned((size_t)2048 * heads * (hd + 2) * 4);
        uint16_t *d_kc = dev_copy(kc, cache * 2), *d_vc = dev_copy(vc, cache * 2);
        uint16_t *d_out = dev_poisoned(nq * 2);
        struct rtc_attn_args a = {.q = d_q,
                                  .kc = d_kc,
                                  .vc = d_vc,
                                  .pos = d_step + st.off_pos,
                                  .row_seq = d_step + st.off_row_seq,
                                  .seq_off = d_step + st.off_seq_off,
                                  .blocks = d_step + st.off_blocks,
                                  .items = d_step + st.off_items,
                                  .part = d_part,
                                  .out = d_out,
                                  .n = n,
                                  .nitems = st.nitems,
                                  .heads = heads,
                                  .kv_heads = kvh,
                                  .head_dim = hd,
                                  .layers = layers,
                                  .layer = layer,
                                  .window = window,
                                  .nsplit = st.nsplit,
                                  .qpw = st.qpw,
                                  .scale = scale};
        RTC(rtc_attention_paged(ctx, &a));
        float *got = bf16_to_f32_host(d_out, nq);
        double worst = 0;
        for (size_t i = 0; i < nq; i++) {
            double b = BF16_REL * fabs(want[i]) + 2e-4, e = fabs(got[i] - want[i]);
            if (!(e <= b)) {
                fprintf(stderr, "attention_paged hd %d: element %zu: got %g want %g\n", hd, i,
                        got[i], want[i]);
                exit(1);
            }
            if (e / b > worst) worst = e / b;
        }
        printf("  attention_paged h%d kv%d hd%d window %d split %d  ok  (worst %.2f of bound)\n",
               heads, kvh, hd, window, st.nsplit, worst);
        free(got), free(q), free(want), free(kc), free(vc);
        rtc_free(d_step), rtc_free(d_q), rtc_free(d_part), rtc_free(d_kc), rtc_free(d_vc);
        rtc_free(d_out);
    }
}

static void test_silu_mul_gemm_x(void)
{
    int n = 3, f = 1000;
    float *gu = rand_f32((size_t)n * 2 * f, 4.0f);
    uint16_t *want = malloc((size_t)n * f * 2);
    CHECK(want);
    float *d_gu = dev_copy(gu, (size_t)n * 2 * f * 4);
    uint16_t *d_h = dev_poisoned((size_t)n * f * 2);
    RTC(rtc_silu_mul(ctx, d_h, d_gu, n, f));
    ref_silu_mul(want, gu, n, f);
    compare_bf16("silu_mul 3x1000", d_h, want, (size_t)n * f, 1e-6);
    free(gu), free(want), rtc_free(d_gu), rtc_free(d_h);
    /* BF16 x BF16 with F32 accumulation: products exact, sums in float: bound 1e-5 of the sum of
     * |terms| (cuBLAS's order differs, the matvec's is per lane then a tree). */
    const int shapes[][3] = {{1, 4096, 4096}, {1, 300, 1000}, {1, 7, 33}, {5, 1000, 512}};
    for (size_t s = 0; s < 4; s++) {
        int nt = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
        uint16_t *w = rand_bf16((size_t)rows * cols, 1.0f), *x = rand_bf16((size_t)nt * cols, 1.0f);
        float *y = malloc((size_t)nt * rows * 4);
        double *b = bounds_new((size_t)nt * rows);
        CHECK(y);
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < rows; r++) {
                double acc = 0, mag = 0;
                for (int c = 0; c < cols; c++) {
                    double p = (double)ref_bf16_to_f32(w[(size_t)r * cols + c]) *
                               ref_bf16_to_f32(x[(size_t)t * cols + c]);
                    acc += p, mag += fabs(p);
                }
                y[(size_t)t * rows + r] = (float)acc;
                b[(size_t)t * rows + r] = 1e-5 * mag + 1e-6;
            }
        uint16_t *d_w = dev_copy(w, (size_t)rows * cols * 2),
                 *d_x = dev_copy(x, (size_t)nt * cols * 2);
        float *d_y = dev_poisoned((size_t)nt * rows * 4);
        RTC(rtc_gemm_bf16x(ctx, d_y, d_w, d_x, nt, rows, cols));
        char what[64];
        snprintf(what, sizeof what, "gemm_bf16x %dx%dx%d", nt, rows, cols);
        compare(what, d_y, y, b, (size_t)nt * rows);
        free(w), free(x), free(y), free(b), rtc_free(d_w), rtc_free(d_x), rtc_free(d_y);
    }
}

static void test_sum_ranks_graph(void)
{
    /* Four "ranks" on one GPU: every buffer ends with the rank-order sum, bit for bit. */
    size_t n = 100003;
    float *h[4], *d[4], *want = malloc(n * 4);
    CHECK(want);
    for (int k = 0; k < 4; k++) {
        h[k] = rand_f32(n, 3.0f);
        d[k] = dev_copy(h[k], n * 4);
    }
    for (size_t i = 0; i < n; i++)
        want[i] = ((h[0][i] + h[1][i]) + h[2][i]) + h[3][i];
    RTC(rtc_sum_ranks(ctx, d, 4, n));
    double *zero = bounds_new(n);
    for (size_t i = 0; i < n; i++)
        zero[i] = 0;
    for (int k = 0; k < 4; k++)
        compare("sum_ranks (rank-order sum, exact)", d[k], want, zero, n);
    /* A captured graph (thread-local capture mode) replays the same work. */
    size_t m = 4096;
    float *w = rand_f32(m, 1.0f), *x = rand_f32(m, 1.0f), *x2 = malloc(m * 4);
    uint16_t *ref = malloc(m * 2);
    CHECK(x2 && ref);
    memcpy(x2, x, m * 4);
    float *d_x = dev_copy(x, m * 4), *d_w = dev_copy(w, m * 4);
    uint16_t *d_o = dev_poisoned(m * 2);
    struct rtc_graph *g = NULL;
    RTC(rtc_capture_begin(ctx));
    RTC(rtc_add_rmsnorm(ctx, d_x, NULL, d_w, d_o, 1, (int)m, 1e-5f));
    RTC(rtc_capture_end(ctx, &g));
    RTC(rtc_graph_launch(ctx, g));
    ref_add_rmsnorm(x2, NULL, w, ref, 1, (int)m, 1e-5f);
    compare_bf16("graph replay (thread-local capture)", d_o, ref, m, 1e-6);
    rtc_graph_free(g);
    for (int k = 0; k < 4; k++)
        free(h[k]), rtc_free(d[k]);
    free(want), free(zero), free(w), free(x), free(x2), free(ref);
    rtc_free(d_x), rtc_free(d_w), rtc_free(d_o);
}

/* The sampler against ref_sample with the same uniform draws: the same token, except where the
 * draw falls within float rounding of a boundary between two tokens' cumulative mass (allowed
 * once in 200 rows, and counted). */
static void test_sample(void)
{
    int rows = 200, vocab = 1500;
    float *lg = rand_f32((size_t)rows * vocab, 6.0f);
    struct ref_sample_param *p = malloc((size_t)rows * sizeof *p);
    CHECK(p);
    for (int r = 0; r < rows; r++) {
        p[r].temperature = r % 5 == 0 ? 0.0f : 0.3f + (float)(r % 7) * 0.2f;
        p[r].top_k = r % 3 == 0 ? 0 : 1 + r % 50;
        p[r].top_p = r % 4 == 0 ? 1.0f : 0.5f + (float)(r % 5) * 0.1f;
        p[r].u = (float)((double)(next_u64() >> 11) / 9007199254740992.0);
    }
    lg[7 * vocab + 3] = NAN; /* a NaN logit is never picked */
    int32_t *want = malloc((size_t)rows * 4), *got = malloc((size_t)rows * 4);
    CHECK(want && got);
    ref_sample(want, lg, p, rows, vocab);
    float *d_lg = dev_copy(lg, (size_t)rows * vocab * 4);
    struct rtc_sample_param *d_p = dev_copy(p, (size_t)rows * sizeof *p);
    int32_t *d_out = dev_poisoned((size_t)rows * 4);
    RTC(rtc_sample(ctx, d_out, d_lg, d_p, rows, vocab));
    RTC(rtc_sync(ctx));
    RTC(rtc_download(ctx, got, d_out, (size_t)rows * 4));
    int differ = 0;
    for (int r = 0; r < rows; r++) {
        CHECK(got[r] >= 0 && got[r] < vocab && got[r] != (r == 7 ? 3 : -1));
        if (got[r] != want[r]) {
            differ++;
            fprintf(stderr, "sample row %d (T %.2f k %d p %.2f u %.6f): got %d want %d\n", r,
                    p[r].temperature, p[r].top_k, p[r].top_p, p[r].u, got[r], want[r]);
            CHECK(p[r].temperature > 0); /* greedy rows must agree exactly */
        }
    }
    CHECK(differ <= 1);
    printf("  %-44s ok  (%d of %d rows at a rounding boundary)\n", "sample (T, top-k, top-p)",
           differ, rows);
    free(lg), free(p), free(want), free(got), rtc_free(d_lg), rtc_free(d_p), rtc_free(d_out);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep the progress lines in order with errors on stderr */
    int n = rtc_device_count();
    if (n == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *seed_env = getenv("ORP_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL);
    rng = seed ? seed : 1;
    printf("test_cuda_kernels: %d device(s), seed %llu (ORP_TEST_SEED repeats it)\n", n,
           (unsigned long long)seed);
    RTC(rtc_ctx_new(0, &ctx));
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_f32_to_bf16();
    test_matvec();
    test_gemm();
    test_attention();
    test_argmax();
    test_bad_args();
    test_add_rmsnorm();
    test_qkv_rope_cache();
    test_attention_paged();
    test_silu_mul_gemm_x();
    test_sum_ranks_graph();
    test_sample();
    rtc_ctx_free(ctx);
    printf("test_cuda_kernels: ok\n");
    return 0;
}
