/* gpucheck: what the GPU machine's libraries compute is right, and how fast the card can go.
 * Built and run by ops/gpu/run.sh (nvcc -arch=sm_90a ... -lcublas -lnccl); never by ops/test.
 *
 * Checks, each against a plain C result on the host:
 *  - cuBLAS BF16 GEMM (cublasGemmEx, BF16 in and out, FP32 compute): C = A B with A [M,K],
 *    B [K,N], row-major on the host (passed to column-major cuBLAS as C^T = B^T A^T). The host
 *    sums the same BF16-rounded inputs in double, so the only differences are FP32 accumulation
 *    (~K * 2^-24 relative, negligible) and rounding C to BF16 (2^-8 relative). Tolerance:
 *    |got - want| <= 2^-7 * |want| + 1e-2 * sqrt(K) * scale, the absolute part covering sums that
 *    cancel to near zero (entries of A and B are in [-1, 1), so |C| ~ sqrt(K) / 3).
 *  - NCCL all-reduce (sum, FP32) on a communicator of one rank (ncclCommInitAll over device 0):
 *    with one rank the result must equal the input exactly, which is the CPU sum.
 * Ceilings:
 *  - device-to-device copy: (bytes read + bytes written) / time of one cudaMemcpy of 1 GiB,
 *    best of 10, timed with cudaEvents.
 *  - BF16 GEMM at 8192^3 on random data: 2 * 8192^3 / time, mean of 20 after 5 warm-ups
 *    (random data: zeros run faster on Hopper, as the tensor cores draw less power).
 * Prints one JSON object on stdout; exit 0 only when both checks pass. Every CUDA, cuBLAS and
 * NCCL call goes through a check macro that prints file:line and exits 2. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_CHECK(x)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)
#define CUBLAS_CHECK(x)                                                                            \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cublasGetStatusString(s_)); \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)
#define NCCL_CHECK(x)                                                                              \
    do {                                                                                           \
        ncclResult_t r_ = (x);                                                                     \
        if (r_ != ncclSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, ncclGetErrorString(r_));    \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

/* The checked GEMM's shape: not multiples of 8 or of any tile, small enough for a host sum. */
#define CK_M 257
#define CK_N 193
#define CK_K 515
/* Ceilings: 1 GiB copied, best of 10; 8192^3 GEMM, 5 warm-ups then 20 timed. */
#define COPY_BYTES (1ull << 30)
#define COPY_REPS 10
#define PERF_N 8192
#define PERF_WARM 5
#define PERF_REPS 20

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1), xorshift64* */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2 - 1);
}

__global__ void fill_random(__nv_bfloat16 *x, size_t n, uint32_t seed)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
    x[i] = __float2bfloat16((float)(h >> 8) / 8388608.0f - 1.0f);
}

/* cuBLAS, column-major, computing row-major C[m,n] = A[m,k] B[k,n]. */
static void gemm_bf16(cublasHandle_t h, int m, int n, int k, const __nv_bfloat16 *a,
                      const __nv_bfloat16 *b, __nv_bfloat16 *c)
{
    const float one = 1, zero = 0;
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, b, CUDA_R_16BF, n, a,
                              CUDA_R_16BF, k, &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

static int check_gemm(cublasHandle_t h, double *max_err, double *max_ratio)
{
    size_t na = (size_t)CK_M * CK_K, nb = (size_t)CK_K * CK_N, nc = (size_t)CK_M * CK_N;
    __nv_bfloat16 *ha = (__nv_bfloat16 *)malloc(na * 2), *hb = (__nv_bfloat16 *)malloc(nb * 2),
                  *hc = (__nv_bfloat16 *)malloc(nc * 2);
    if (!ha || !hb || !hc) exit(2);
    for (size_t i = 0; i < na; i++)
        ha[i] = __float2bfloat16(frand());
    for (size_t i = 0; i < nb; i++)
        hb[i] = __float2bfloat16(frand());
    __nv_bfloat16 *da, *db, *dc;
    CUDA_CHECK(cudaMalloc(&da, na * 2));
    CUDA_CHECK(cudaMalloc(&db, nb * 2));
    CUDA_CHECK(cudaMalloc(&dc, nc * 2));
    CUDA_CHECK(cudaMemcpy(da, ha, na * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(db, hb, nb * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(dc, 0xff, nc * 2)); /* NaN: an element never written fails */
    gemm_bf16(h, CK_M, CK_N, CK_K, da, db, dc);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hc, dc, nc * 2, cudaMemcpyDeviceToHost));
    int ok = 1;
    *max_err = 0, *max_ratio = 0;
    for (int i = 0; i < CK_M; i++)
        for (int j = 0; j < CK_N; j++) {
            double want = 0;
            for (int k = 0; k < CK_K; k++)
                want += (double)__bfloat162float(ha[(size_t)i * CK_K + k]) *
                        __bfloat162float(hb[(size_t)k * CK_N + j]);
            double got = __bfloat162float(hc[(size_t)i * CK_N + j]), err = fabs(got - want);
            double tol = ldexp(fabs(want), -7) + 1e-2 * sqrt((double)CK_K) / 3;
            if (!(err <= tol)) ok = 0; /* NaN fails */
            if (err > *max_err || err != err) *max_err = err;
            if (err / tol > *max_ratio || err != err) *max_ratio = err / tol;
        }
    CUDA_CHECK(cudaFree(da));
    CUDA_CHECK(cudaFree(db));
    CUDA_CHECK(cudaFree(dc));
    free(ha), free(hb), free(hc);
    return ok;
}

static int check_nccl(double *max_err, char *ver, size_t vlen)
{
    enum { N = 1 << 20 };
    int dev = 0, v = 0;
    ncclComm_t comm;
    NCCL_CHECK(ncclGetVersion(&v));
    snprintf(ver, vlen, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    NCCL_CHECK(ncclCommInitAll(&comm, 1, &dev));
    float *h = (float *)malloc(N * sizeof *h), *r = (float *)malloc(N * sizeof *r), *d;
    if (!h || !r) exit(2);
    for (int i = 0; i < N; i++)
        h[i] = frand() * 100;
    CUDA_CHECK(cudaMalloc(&d, N * sizeof *d));
    CUDA_CHECK(cudaMemcpy(d, h, N * sizeof *d, cudaMemcpyHostToDevice));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreate(&s));
    NCCL_CHECK(ncclAllReduce(d, d, N, ncclFloat, ncclSum, comm, s)); /* in place */
    CUDA_CHECK(cudaStreamSynchronize(s));
    CUDA_CHECK(cudaMemcpy(r, d, N * sizeof *r, cudaMemcpyDeviceToHost));
    int ok = 1;
    *max_err = 0;
    for (int i = 0; i < N; i++) { /* the CPU sum over one rank is the value itself: exact */
        double e = fabs((double)r[i] - h[i]);
        if (!(e == 0)) ok = 0;
        if (e > *max_err || e != e) *max_err = e;
    }
    NCCL_CHECK(ncclCommDestroy(comm));
    CUDA_CHECK(cudaStreamDestroy(s));
    CUDA_CHECK(cudaFree(d));
    free(h), free(r);
    return ok;
}

static double copy_bandwidth(double *best_ms)
{
    void *a, *b;
    CUDA_CHECK(cudaMalloc(&a, COPY_BYTES));
    CUDA_CHECK(cudaMalloc(&b, COPY_BYTES));
    CUDA_CHECK(cudaMemset(a, 1, COPY_BYTES));
    CUDA_CHECK(cudaMemcpy(b, a, COPY_BYTES, cudaMemcpyDeviceToDevice)); /* warm-up */
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    *best_ms = 1e30;
    for (int i = 0; i < COPY_REPS; i++) {
        float ms;
        CUDA_CHECK(cudaEventRecord(e0));
        CUDA_CHECK(cudaMemcpy(b, a, COPY_BYTES, cudaMemcpyDeviceToDevice));
        CUDA_CHECK(cudaEventRecord(e1));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms < *best_ms) *best_ms = ms;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    return 2.0 * COPY_BYTES / (*best_ms * 1e-3) / 1e9; /* GB/s, read + written */
}

static double gemm_tflops(cublasHandle_t h, double *mean_ms)
{
    size_t n = (size_t)PERF_N * PERF_N;
    __nv_bfloat16 *a, *b, *c;
    CUDA_CHECK(cudaMalloc(&a, n * 2));
    CUDA_CHECK(cudaMalloc(&b, n * 2));
    CUDA_CHECK(cudaMalloc(&c, n * 2));
    fill_random<<<(unsigned)((n + 255) / 256), 256>>>(a, n, 1);
    CUDA_CHECK(cudaGetLastError());
    fill_random<<<(unsigned)((n + 255) / 256), 256>>>(b, n, 2);
    CUDA_CHECK(cudaGetLastError());
    for (int i = 0; i < PERF_WARM; i++)
        gemm_bf16(h, PERF_N, PERF_N, PERF_N, a, b, c);
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < PERF_REPS; i++)
        gemm_bf16(h, PERF_N, PERF_N, PERF_N, a, b, c);
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    *mean_ms = ms / PERF_REPS;
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(c));
    return 2.0 * PERF_N * PERF_N * (double)PERF_N / (*mean_ms * 1e-3) / 1e12;
}

int main(void)
{
    int ndev = 0, drv = 0, rt = 0;
    CUDA_CHECK(cudaGetDeviceCount(&ndev));
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaDriverGetVersion(&drv));
    CUDA_CHECK(cudaRuntimeGetVersion(&rt));
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    int cublas_ver = 0;
    CUBLAS_CHECK(cublasGetVersion(h, &cublas_ver));

    double gemm_err, gemm_ratio, nccl_err, copy_ms, gemm_ms;
    char nccl_ver[32];
    int gemm_ok = check_gemm(h, &gemm_err, &gemm_ratio);
    int nccl_ok = check_nccl(&nccl_err, nccl_ver, sizeof nccl_ver);
    double gbs = copy_bandwidth(&copy_ms);
    double tflops = gemm_tflops(h, &gemm_ms);
    CUBLAS_CHECK(cublasDestroy(h));

    printf("{\"gpu\": \"%s\", \"devices\": %d, \"sm\": \"%d.%d\", \"sms\": %d, "
           "\"memory_mib\": %zu, \"cuda_driver\": %d, \"cuda_runtime\": %d, \"cublas\": %d, "
           "\"nccl\": \"%s\",\n"
           " \"gemm_check\": {\"ok\": %s, \"m\": %d, \"n\": %d, \"k\": %d, \"max_abs_err\": %.3g, "
           "\"worst_of_tolerance\": %.3f, \"tolerance\": \"2^-7*|want| + 1e-2*sqrt(K)/3\"},\n"
           " \"nccl_check\": {\"ok\": %s, \"ranks\": 1, \"count\": %d, \"max_abs_err\": %.3g},\n"
           " \"copy_d2d\": {\"bytes\": %llu, \"best_ms\": %.4f, \"reps\": %d, "
           "\"gb_per_s_read_plus_written\": %.1f},\n"
           " \"gemm_bf16_8192\": {\"mean_ms\": %.4f, \"warmup\": %d, \"reps\": %d, "
           "\"tflops\": %.1f}}\n",
           p.name, ndev, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem >> 20, drv, rt,
           cublas_ver, nccl_ver, gemm_ok ? "true" : "false", CK_M, CK_N, CK_K, gemm_err, gemm_ratio,
           nccl_ok ? "true" : "false", 1 << 20, nccl_err, COPY_BYTES, copy_ms, COPY_REPS, gbs,
           gemm_ms, PERF_WARM, PERF_REPS, tflops);
    return gemm_ok && nccl_ok ? 0 : 1;
}
