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
    rtc_ctx_free(ctx);
    printf("test_cuda_kernels: ok\n");
    return 0;
}
